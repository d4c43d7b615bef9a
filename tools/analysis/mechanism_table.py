# Copyright (c) galddc_mm contributors. All rights reserved.
r"""Tabulate known-answer testbed runs: generation against the truth.

Reads the runs of ``tools/run_experiments.py`` on the known-answer testbed
(``configs/galddc/mechanism/``): for every row folder ``ROOT/<row>/seed<S>``
the ``known_answer.json`` of :class:`KnownAnswerHook` and the test metrics
in ``final_metrics.json``. Prints (and with ``--out`` writes as Markdown and
JSON):

- per row, mean ± sample std (ddof=1) over seeds of the tail (and head)
  radius error ``|generated radius / true radius - 1|``, the tail recall
  and precision of the true distribution, and test top-1 / tail accuracy;
- with ``--against ROW``, each row's per-seed differences to that row
  (mean ± std) and the seeds where the row is better (``k/n``: lower error,
  higher recall or accuracy).

``--plot`` draws, for the rows of ``--plot-rows`` and one seed, the
generated radius over the true radius of every class, classes sorted by
training count (head left).

Examples::

    python tools/run_experiments.py configs/galddc/mechanism/gaussian_lt_*.py \
        --seeds 0 1 2 3 4 --seed-keys train_dataloader.dataset.seed \
        --work-root work_dirs/mechanism
    python tools/analysis/mechanism_table.py work_dirs/mechanism \
        --against gaussian_lt_ldmlr --out mechanism.md \
        --plot docs/figures/mechanism_radius.png \
        --plot-rows gaussian_lt_ldmlr gaussian_lt_galddc
"""
import argparse
import json
import os
import os.path as osp
import re
import sys
from typing import Dict, List, Optional, Sequence

sys.path.insert(0, osp.join(osp.dirname(osp.abspath(__file__)), '..'))
from run_experiments import mean_std  # noqa: E402

# (key, title, better): from known_answer.json (band/metric) or the test
# metrics; ``better`` is the sign of an improvement.
METRICS = (
    ('tail/radius_error', 'tail radius err', -1),
    ('head/radius_error', 'head radius err', -1),
    ('tail/recall', 'tail recall', 1),
    ('tail/precision', 'tail precision', 1),
    ('test/top1', 'test top-1', 1),
    ('test/tail', 'test tail', 1),
)
_SEED = re.compile(r'^seed(\d+)$')


def read_run(run_dir: str) -> Optional[Dict[str, float]]:
    """The metrics of one run folder, None without ``known_answer.json``.

    Args:
        run_dir (str): A ``seed<S>`` folder.

    Returns:
        dict | None: ``{key: value}`` for the keys of :data:`METRICS` the
        run reports.
    """
    path = osp.join(run_dir, 'known_answer.json')
    if not osp.isfile(path):
        return None
    with open(path) as f:
        summary = json.load(f)['summary']
    out = {}
    for band in ('head', 'tail', 'all'):
        for name, value in summary.get(band, {}).items():
            if value is not None:
                out[f'{band}/{name}'] = float(value)
    from galddc_mm.utils import WorkDir
    test = WorkDir(run_dir).final_metrics('test') or {}
    for key in ('top1', 'tail', 'few', 'head'):
        for k in (f'accuracy/{key}', key):
            if k in test:
                out[f'test/{key}'] = float(test[k])
                break
    return out


def collect(root: str,
            rows: Optional[Sequence[str]] = None
            ) -> Dict[str, Dict[int, Dict[str, float]]]:
    """``{row: {seed: metrics}}`` of the row folders under ``root``.

    Args:
        root (str): The work root of ``tools/run_experiments.py``.
        rows (Sequence[str], optional): Row folder names, in table order.
            Defaults to every folder with at least one finished seed,
            sorted.

    Returns:
        dict: Rows in order; seeds without results are left out.
    """
    names = rows if rows else sorted(
        d for d in os.listdir(root) if osp.isdir(osp.join(root, d)))
    table = {}
    for name in names:
        folder = osp.join(root, name)
        if not osp.isdir(folder):
            raise FileNotFoundError(f'No row folder {folder}.')
        seeds = {}
        for sub in sorted(os.listdir(folder)):
            match = _SEED.match(sub)
            metrics = match and read_run(osp.join(folder, sub))
            if metrics:
                seeds[int(match.group(1))] = metrics
        if seeds or rows:
            table[name] = seeds
    return table


def summarise(table: Dict[str, Dict[int, Dict[str, float]]]) -> List[Dict]:
    """Mean ± std per row and metric (:func:`run_experiments.mean_std`)."""
    out = []
    for name, seeds in table.items():
        stats = {}
        for key, _, _ in METRICS:
            values = [m[key] for m in seeds.values() if key in m]
            if values:
                mean, std = mean_std(values)
                stats[key] = dict(mean=mean, std=std, values=values)
        out.append(dict(name=name, seeds=sorted(seeds), metrics=stats))
    return out


def paired(table: Dict[str, Dict[int, Dict[str, float]]],
           against: str) -> List[Dict]:
    """Per-seed differences of every row to ``against``.

    For each metric, over the seeds both rows report: the differences
    ``row - against``, their mean and sample std, and ``better``, the
    number of seeds where the row improves on ``against`` (lower error,
    higher recall / accuracy; ties are no improvement).

    Args:
        table (dict): Output of :func:`collect`.
        against (str): The reference row.

    Returns:
        list[dict]: ``{'name', 'metrics': {key: {'mean', 'std', 'better',
        'n', 'diffs'}}}`` for every other row.
    """
    if against not in table:
        raise ValueError(f'--against {against!r} is no row; rows are '
                         f'{list(table)}.')
    ref = table[against]
    out = []
    for name, seeds in table.items():
        if name == against:
            continue
        stats = {}
        for key, _, sign in METRICS:
            common = [s for s in seeds if s in ref and key in seeds[s]
                      and key in ref[s]]
            if not common:
                continue
            diffs = [seeds[s][key] - ref[s][key] for s in common]
            mean, std = mean_std(diffs)
            stats[key] = dict(mean=mean, std=std, n=len(diffs),
                              better=sum(sign * d > 0 for d in diffs),
                              diffs=diffs, seeds=common)
        out.append(dict(name=name, against=against, metrics=stats))
    return out


def _cell(stat: Optional[Dict], digits: int, wins: bool = False) -> str:
    if not stat:
        return '-'
    text = f'{stat["mean"]:+.{digits}f}' if wins else \
        f'{stat["mean"]:.{digits}f}'
    if stat['std'] is not None:
        text += f' ± {stat["std"]:.{digits}f}'
    if wins:
        text += f' ({stat["better"]}/{stat["n"]})'
    return text


def _digits(key: str) -> int:
    return 1 if key.startswith('test/') else 3


def format_tables(summary: List[Dict], pairs: Optional[List[Dict]]) -> str:
    """Markdown: the mean ± std table, then the paired one if any."""
    header = ['row', 'seeds'] + [t for _, t, _ in METRICS]
    lines = [
        'Known-answer testbed: mean ± sample std (ddof=1) over seeds. '
        'Radius error: |generated radius / true radius - 1|; recall and '
        'precision of the true distribution (k-NN manifolds); test '
        'accuracy (%) on 500 true draws per class.', '',
        '| ' + ' | '.join(header) + ' |',
        '|' + '|'.join(['---'] * len(header)) + '|'
    ]
    for row in summary:
        cells = [row['name'], str(len(row['seeds']))] + [
            _cell(row['metrics'].get(k), _digits(k)) for k, _, _ in METRICS
        ]
        lines.append('| ' + ' | '.join(cells) + ' |')
    if pairs:
        lines += [
            '', f'Per-seed differences to {pairs[0]["against"]} (row minus '
            'reference): mean ± std (seeds where the row is better / seeds '
            'compared; better = lower error, higher recall or accuracy).',
            '', '| row | ' + ' | '.join(t for _, t, _ in METRICS) + ' |',
            '|' + '|'.join(['---'] * (len(METRICS) + 1)) + '|'
        ]
        for row in pairs:
            cells = [row['name']] + [
                _cell(row['metrics'].get(k), _digits(k), wins=True)
                for k, _, _ in METRICS
            ]
            lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


def plot_radius(root: str, rows: Sequence[str], seed: int, out: str) -> str:
    """Generated / true radius per class, sorted by count, one line a row.

    Returns:
        str: The written PNG.
    """
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for name in rows:
        path = osp.join(root, name, f'seed{seed}', 'known_answer.json')
        with open(path) as f:
            per_class = json.load(f)['per_class']
        per_class = sorted(per_class, key=lambda c: -c['train_count'])
        ratio = [c['radius_to_true'] for c in per_class]
        ax.plot(range(len(ratio)), ratio, marker='o', ms=3, label=name)
    counts = [c['train_count'] for c in per_class]
    ax.axhline(1.0, color='k', lw=0.8, ls='--')
    ax.set_xticks(range(len(counts)))
    ax.set_xticklabels([str(c) for c in counts], fontsize=7, rotation=90)
    ax.set_xlabel('classes by training count')
    ax.set_ylabel('generated / true radius')
    ax.set_title(f'{osp.basename(osp.normpath(root))}, seed {seed}')
    ax.legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=100, metadata={'Software': None})
    plt.close(fig)
    return out


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('root', help='work root of tools/run_experiments.py')
    parser.add_argument('--rows', nargs='+', help='row folders, in order')
    parser.add_argument('--against', help='reference row of the paired table')
    parser.add_argument('--out', help='write the Markdown here (and .json)')
    parser.add_argument('--plot', help='PNG of generated / true radius')
    parser.add_argument('--plot-rows', nargs='+', help='rows of --plot')
    parser.add_argument('--plot-seed', type=int, default=0)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    table = collect(args.root, args.rows)
    if not any(table.values()):
        print(f'No finished testbed runs (known_answer.json) under '
              f'{args.root}.', file=sys.stderr)
        return 1
    summary = summarise(table)
    pairs = paired(table, args.against) if args.against else None
    text = format_tables(summary, pairs)
    print(text)
    if args.out:
        with open(args.out, 'w') as f:
            f.write(text)
        with open(osp.splitext(args.out)[0] + '.json', 'w') as f:
            json.dump(dict(rows=summary, paired=pairs, runs=table), f,
                      indent=1)
    if args.plot:
        print('wrote', plot_radius(args.root, args.plot_rows or list(table),
                                   args.plot_seed, args.plot))
    return 0


if __name__ == '__main__':
    sys.exit(main())
