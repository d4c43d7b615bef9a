# Copyright (c) galddc_mm contributors. All rights reserved.
"""Run configs x seeds (x variants) and tabulate mean ± std over seeds.

Each run is one ``tools/train.py`` subprocess, run one after the other::

    python tools/train.py CONFIG \\
        --work-dir ROOT/<config-stem>[-<variant>]/seed<S> \\
        --cfg-options randomness.seed=S [variant options] [common options]

with its output in ``<work dir>/run_experiments_train.log``. When the
table is on the test split (the default) and a run reports no test metrics
(a config whose loop does not test after training, e.g. the CE baseline),
its last checkpoint -- the final model, as ``GALDDCTrainLoop(
test_after_train=True)`` tests -- is tested with ``tools/test.py`` (output
in ``run_experiments_test.log``).

Then the final metrics of every run (``<timestamp>/final_metrics.json``)
are collected and one Markdown table is printed and saved (``--out``, plus
the same numbers as JSON next to it): one row per config (and variant),
columns top-1, many, medium, few (and head, tail when reported), each the
mean ± sample standard deviation (ddof=1) over the seeds.

With ``--paired-against LABEL`` a second table compares every row with the
row ``LABEL`` seed by seed: for top-1, few and tail, the mean ± std of the
per-seed differences (row minus ``LABEL``) and in how many seeds the row
is ahead. Means of two rows with stds of a few points can mislead; their
differences on the same seeds are what a comparison rests on. The JSON
keeps every per-seed value and difference.

``--seed-keys`` sets more config keys to the run's seed (for instance the
data set's own seed, so that every seed also draws its own data).

``--share-stage1`` makes the rows truly paired: stage 1 (the CE
representation learning) is trained once per seed, in
``ROOT/stage1/seed<S>``, by the first config that runs the GALD-DC loop,
with its other stages at 0 epochs; that run is also a row of the table
(``--stage1-label``, default ``CE (stage 1)``). Every GALD-DC-loop row then
starts from it (``load_from=<its last checkpoint>`` and
``train_cfg.stages.<i>.epochs=0``), which the loop makes equal to running
the row whole (random streams keyed by stage, optimisers started afresh
per stage; ``tests/test_tools/test_run_experiments.py`` checks it bit for
bit on the CPU). Rows must share the stage-1 recipe (the model's encoder
and head, the data preprocessor, the training data, the encoder and head
optimisers, the representation stage and its schedulers); the tool refuses
otherwise and names the first key that differs. Other configs (a plain
MMPretrain config) run as usual.

``--logit-adjust LABEL ...`` adds a row ``LABEL + LA`` for each named row:
post-hoc logit adjustment of the final model of each of its runs, tau
chosen on val and reported on test by ``tools/analysis/logit_adjust.py``
(output in ``<work dir>/logit_adjust.json``).

``--jobs N`` runs N subprocesses at a time (the stage-1 runs first, then
the rows, then the logit-adjustment sweeps); give each a thread count that
fits, e.g. ``OMP_NUM_THREADS=1``.

Examples::

    # the Digits-LT table of the README (about 25 CPU-minutes)
    python tools/run_experiments.py configs/baselines/ce_digits_lt.py \\
        configs/galddc/ablations/r20_digitslt_ldmlr.py \\
        configs/galddc/ablations/r20_digitslt_stable.py \\
        configs/galddc/r20_digitslt.py \\
        --seeds 0 1 2 --work-root work_dirs/digits_lt_table \\
        --out work_dirs/digits_lt_table/table.md --skip-existing
    # a sweep of lam on top of a config
    python tools/run_experiments.py configs/galddc/r20_digitslt.py \\
        --seeds 0 1 --variant lam0:model.geometry.lam=0.0 \\
        --variant lam1:model.geometry.lam=1.0 --dry-run
"""
import argparse
import json
import os
import os.path as osp
import re
import shlex
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
# (metric key without the 'accuracy/' prefix, column title)
COLUMNS = (('top1', 'top-1'), ('many', 'many'), ('medium', 'medium'),
           ('few', 'few'), ('head', 'head'), ('tail', 'tail'))
# Shown only when at least one run reports them.
OPTIONAL_COLUMNS = ('head', 'tail')
# Compared seed by seed with --paired-against.
PAIRED_COLUMNS = (('top1', 'top-1'), ('few', 'few'), ('tail', 'tail'))
TRAIN_LOG = 'run_experiments_train.log'
TEST_LOG = 'run_experiments_test.log'
LA_LOG = 'run_experiments_logit_adjust.log'
LA_FILE = 'logit_adjust.json'
LA_SUFFIX = ' + LA'
STAGE1_FOLDER = 'stage1'
_NAME = re.compile(r'^[A-Za-z0-9_.+-]+$')


@dataclass
class Run:
    """One training run of the plan."""
    config: str
    seed: int
    work_dir: str
    variant: Optional[str] = None
    options: List[str] = field(default_factory=list)
    label: Optional[str] = None
    seed_keys: List[str] = field(default_factory=list)
    #: The shared stage-1 run this run starts from (``--share-stage1``).
    after: Optional['Run'] = None
    #: Options after the common ``--cfg-options`` (which cannot undo them):
    #: the stage lengths and ``load_from`` of ``--share-stage1``.
    pinned_options: List[str] = field(default_factory=list)

    @property
    def seed_options(self) -> List[str]:
        """``randomness.seed=S`` and ``KEY=S`` for each seed key."""
        return [f'randomness.seed={self.seed}'] + [
            f'{key}={self.seed}' for key in self.seed_keys
        ]

    @property
    def row(self) -> str:
        """The table row the run belongs to."""
        base = self.label or config_stem(self.config)
        return f'{base}-{self.variant}' if self.variant else base


def config_stem(config: str) -> str:
    """``configs/galddc/r20_digitslt.py`` -> ``r20_digitslt``."""
    return osp.splitext(osp.basename(config))[0]


def split_options(text: str) -> List[str]:
    """Split ``key=value,key=value`` on the commas between options.

    Commas inside brackets or quotes belong to a value, e.g.
    ``'a=[1,2],b=x'`` -> ``['a=[1,2]', 'b=x']``; a comma not followed by a
    new ``key=`` also belongs to the value before it (mmengine's list
    syntax ``key=a,b``).

    Args:
        text (str): The options.

    Returns:
        list[str]: One ``key=value`` per option.
    """
    parts, depth, quote, current = [], 0, None, ''
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in '\'"':
            quote = ch
        elif ch in '([{':
            depth += 1
        elif ch in ')]}':
            depth -= 1
        elif ch == ',' and depth == 0:
            parts.append(current)
            current = ''
            continue
        current += ch
    parts.append(current)
    options = []
    for part in parts:
        if re.match(r'^\s*[\w.]+\s*=', part) or not options:
            options.append(part.strip())
        else:
            options[-1] += ',' + part
    return [o for o in options if o]


def parse_variant(spec: str) -> Tuple[str, List[str]]:
    """``'name:key=value,key=value'`` -> ``(name, ['key=value', ...])``.

    Args:
        spec (str): The ``--variant`` argument.

    Returns:
        tuple[str, list[str]]: The name (used in the work dir and the
        table) and the ``--cfg-options`` of the variant.
    """
    name, sep, text = spec.partition(':')
    if not sep or not _NAME.match(name):
        raise ValueError(
            f'--variant {spec!r}: expected NAME:key=value[,key=value...] '
            'with NAME made of letters, digits, and ._+- (it becomes part '
            'of the work dir), e.g. lam0:model.geometry.lam=0.0.')
    options = split_options(text)
    bad = [o for o in options if '=' not in o]
    if not options or bad:
        raise ValueError(
            f'--variant {spec!r}: every option must be key=value, got '
            f'{options}.')
    return name, options


def plan_runs(configs: Sequence[str],
              seeds: Sequence[int],
              work_root: str,
              variants: Sequence[Tuple[str, List[str]]] = (),
              variants_only: bool = False,
              labels: Optional[Sequence[str]] = None,
              seed_keys: Sequence[str] = ()) -> List[Run]:
    """All runs, config by config (plain, then each variant), seed by seed.

    Args:
        configs (Sequence[str]): Config files.
        seeds (Sequence[int]): Seeds.
        work_root (str): Root of the work dirs.
        variants (Sequence[tuple]): ``(name, options)`` pairs. Defaults to
            ().
        variants_only (bool): Leave out the plain configs. Defaults to
            False.
        labels (Sequence[str], optional): Row name of each config (default:
            its file stem). Defaults to None.
        seed_keys (Sequence[str]): Config keys also set to the seed.
            Defaults to ().

    Returns:
        list[Run]: The plan.
    """
    if labels is not None and len(labels) != len(configs):
        raise ValueError(f'--labels gives {len(labels)} names for '
                         f'{len(configs)} configs; give one per config.')
    if len(set(seeds)) != len(seeds):
        raise ValueError(f'--seeds has duplicates: {list(seeds)}.')
    names = [v[0] for v in variants]
    if len(set(names)) != len(names):
        raise ValueError(f'Variant names must be unique, got {names}.')
    if variants_only and not variants:
        raise ValueError('--variants-only needs at least one --variant.')
    stems = [config_stem(c) for c in configs]
    dupes = {s for s in stems if stems.count(s) > 1}
    if dupes:
        raise ValueError(
            f'Configs {sorted(dupes)} have the same file name; their work '
            'dirs would collide. Copy one under another name.')
    todo = ([] if variants_only else [(None, [])]) + list(variants)
    runs = []
    for i, config in enumerate(configs):
        for name, options in todo:
            folder = stems[i] + (f'-{name}' if name else '')
            for seed in seeds:
                runs.append(
                    Run(config=config, seed=int(seed), variant=name,
                        options=list(options),
                        label=labels[i] if labels else None,
                        seed_keys=list(seed_keys),
                        work_dir=osp.join(work_root, folder,
                                          f'seed{seed}')))
    return runs


# ----------------------------------------------------------------------
# shared stage 1 and logit adjustment
# ----------------------------------------------------------------------
def load_config(config: str, options: Sequence[str] = ()):
    """The config with ``--cfg-options``-style ``key=value`` merged."""
    from mmengine.config import Config, DictAction
    cfg = Config.fromfile(config)
    if options:
        namespace = argparse.Namespace()
        DictAction(option_strings=[], dest='options')(None, namespace,
                                                      list(options))
        cfg.merge_from_dict(namespace.options)
    return cfg


def stage_indices(cfg) -> Optional[Dict[str, int]]:
    """``{stage name: index in train_cfg.stages}``; None for another loop.
    """
    train_cfg = cfg.get('train_cfg') or {}
    if train_cfg.get('type') != 'GALDDCTrainLoop':
        return None
    return {stage['name']: i for i, stage in enumerate(train_cfg['stages'])}


def _plain(value):
    """Config values as plain dicts and lists, comparable with ``==``."""
    if hasattr(value, 'to_dict'):
        value = value.to_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def stage1_recipe(cfg) -> Dict:
    """What stage 1 of a GALD-DC-loop config depends on, as plain data.

    Two configs with equal recipes train the same stage 1 for a seed.

    Args:
        cfg (Config): A config whose loop is ``GALDDCTrainLoop``.

    Returns:
        dict: ``{key: value}`` of the model's encoder and head, the data
        preprocessor, the training data, the encoder and head optimisers,
        the representation stage and its schedulers.
    """
    model = cfg.get('model', {})
    representation = [
        s for s in cfg['train_cfg']['stages'] if s['name'] == 'representation'
    ]
    optim = cfg.get('optim_wrapper', {})
    schedulers = cfg.get('param_scheduler') or {}
    if isinstance(schedulers, dict) and 'type' not in schedulers:
        schedulers = {
            part: [
                s for s in (group if isinstance(group, (list, tuple)) else
                            [group]) if s.get('stage') == 'representation'
            ]
            for part, group in schedulers.items()
        }
    recipe = {
        f'model.{key}': model.get(key)
        for key in ('backbone', 'neck', 'head', 'data_preprocessor')
    }
    recipe.update({
        'data_preprocessor': cfg.get('data_preprocessor'),
        'train_dataloader': cfg.get('train_dataloader'),
        'optim_wrapper.encoder': optim.get('encoder'),
        'optim_wrapper.head': optim.get('head'),
        'train_cfg.stages (representation)': representation,
        'param_scheduler (representation)': schedulers,
    })
    return _plain(recipe)


def share_stage1(runs: Sequence[Run],
                 work_root: str,
                 label: str,
                 common_options: Sequence[str] = ()) -> List[Run]:
    """Make the GALD-DC-loop runs start from one stage-1 run per seed.

    Changes ``runs`` in place (pinned options: ``load_from`` the stage-1
    run's last checkpoint, the representation stage at 0 epochs; ``after``)
    and
    returns the stage-1 runs, one per seed, made by the first GALD-DC-loop
    config with its other stages at 0 epochs.

    Args:
        runs (Sequence[Run]): The plan.
        work_root (str): Root of the work dirs.
        label (str): Row name of the stage-1 runs.
        common_options (Sequence[str]): ``--cfg-options`` of every run.

    Returns:
        list[Run]: The stage-1 runs, in seed order of the plan.
    """
    reference, stage1_runs = None, {}
    for run in runs:
        cfg = load_config(
            run.config,
            run.seed_options + run.options + list(common_options))
        indices = stage_indices(cfg)
        if indices is None or 'representation' not in indices:
            continue
        recipe = stage1_recipe(cfg)
        if reference is None:
            # Its options before they gain load_from below.
            reference = (run, recipe, indices, list(run.options))
        elif recipe != reference[1]:
            key = next(k for k in recipe if recipe[k] != reference[1][k])
            raise ValueError(
                f'--share-stage1: {run.config} (row {run.row!r}) trains '
                f'another stage 1 than {reference[0].config}: {key} '
                'differs. Rows share stage 1 only when it is the same '
                'recipe; drop --share-stage1 or align the configs.')
        if run.seed not in stage1_runs:
            ref_run, _, ref_indices, ref_options = reference
            others = [
                f'train_cfg.stages.{i}.epochs=0'
                for name, i in ref_indices.items() if name != 'representation'
            ]
            stage1_runs[run.seed] = Run(
                config=ref_run.config, seed=run.seed, label=label,
                options=ref_options, pinned_options=others,
                seed_keys=list(run.seed_keys),
                work_dir=osp.join(work_root, STAGE1_FOLDER,
                                  f'seed{run.seed}'))
        stage1 = stage1_runs[run.seed]
        index = indices['representation']
        epochs = cfg['train_cfg']['stages'][index]['epochs']
        checkpoint = osp.join(stage1.work_dir, f'epoch_{epochs}.pth')
        run.pinned_options = [
            f'load_from={checkpoint}', f'train_cfg.stages.{index}.epochs=0'
        ]
        run.after = stage1
    if reference is None:
        raise ValueError('--share-stage1: no config runs the GALD-DC loop '
                         "(train_cfg.type='GALDDCTrainLoop') with a "
                         'representation stage; nothing to share.')
    return list(stage1_runs.values())


def logit_adjust_command(run: Run,
                         python: str = sys.executable,
                         script: Optional[str] = None) -> List[str]:
    """The ``tools/analysis/logit_adjust.py`` command of a run."""
    script = script or _tool(osp.join('analysis', 'logit_adjust.py'))
    return [python, script, run.work_dir]


def read_logit_adjusted(work_dir: str) -> Optional[Dict]:
    """Test metrics at the tau chosen on val; None before the sweep."""
    path = osp.join(work_dir, LA_FILE)
    if not osp.isfile(path):
        return None
    with open(path, encoding='utf-8') as f:
        return json.load(f).get('test')


def _tool(name: str) -> str:
    """``tools/<name>``, relative when run from the repository root."""
    path = osp.join(REPO_ROOT, 'tools', name)
    rel = osp.relpath(path)
    return path if rel.startswith('..') else rel


def train_command(run: Run,
                  extra_options: Sequence[str] = (),
                  python: str = sys.executable,
                  script: Optional[str] = None) -> List[str]:
    """The ``tools/train.py`` command of a run.

    The seed comes first among the options, so a variant or a common
    option may still override ``randomness``; the run's pinned options
    (``--share-stage1``) come last.
    """
    script = script or _tool('train.py')
    return [
        python, script, run.config, '--work-dir', run.work_dir,
        '--cfg-options', *run.seed_options, *run.options, *extra_options,
        *run.pinned_options
    ]


def test_command(run: Run,
                 checkpoint: str,
                 extra_options: Sequence[str] = (),
                 python: str = sys.executable,
                 script: Optional[str] = None) -> List[str]:
    """The ``tools/test.py`` command testing ``checkpoint`` of a run.

    The options are the training run's (seed included), so the config that
    ``tools/test.py`` dumps describes the tested model.
    """
    script = script or _tool('test.py')
    return [
        python, script, run.config, checkpoint, '--work-dir', run.work_dir,
        '--cfg-options', *run.seed_options, *run.options, *extra_options,
        *run.pinned_options
    ]


def read_final_metrics(work_dir: str, split: str) -> Optional[Dict]:
    """Final metrics of ``split`` in a work dir, None if there are none."""
    from galddc_mm.utils import WorkDir
    if not osp.isdir(work_dir):
        return None
    return WorkDir(work_dir).final_metrics(split)


def is_finished(work_dir: str) -> bool:
    """Whether a training run in ``work_dir`` wrote its final metrics."""
    return any(
        read_final_metrics(work_dir, split) for split in ('val', 'test'))


def _tail(path: str, lines: int = 25) -> str:
    with open(path, encoding='utf-8', errors='replace') as f:
        return ''.join(f.readlines()[-lines:])


def _execute(cmd: List[str], log_path: str) -> int:
    """Run ``cmd`` with its output in ``log_path``; returns the exit code.
    """
    os.makedirs(osp.dirname(osp.abspath(log_path)), exist_ok=True)
    with open(log_path, 'w', encoding='utf-8') as log:
        log.write(f'$ {shlex.join(cmd)}\n')
        log.flush()
        return subprocess.run(
            cmd, stdout=log, stderr=subprocess.STDOUT).returncode


# ----------------------------------------------------------------------
# the table
# ----------------------------------------------------------------------
def mean_std(values: Sequence[float]) -> Tuple[float, Optional[float]]:
    r"""Mean and sample standard deviation (ddof=1) of ``values``.

    .. math:: \bar x = \frac{1}{n}\sum_i x_i, \qquad
        s = \sqrt{\frac{1}{n - 1}\sum_i (x_i - \bar x)^2}

    Args:
        values (Sequence[float]): At least one value.

    Returns:
        tuple: ``(mean, std)``; ``std`` is None for a single value (the
        sample std is undefined).
    """
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        raise ValueError('mean_std needs at least one value.')
    std = float(values.std(ddof=1)) if values.size > 1 else None
    return float(values.mean()), std


def aggregate(results: Dict[str, List[Optional[Dict]]]) -> List[Dict]:
    """Mean ± std over seeds of every metric of every row.

    Args:
        results (dict): ``{row: [metrics of each seed]}`` in table order;
            metrics are ``{'accuracy/top1': ...}`` (or ``{'top1': ...}``)
            dicts, None for a seed without results.

    Returns:
        list[dict]: One ``{'name', 'num_seeds', 'metrics': {key: {'mean',
        'std', 'n', 'values'}}}`` per row (``num_seeds``: seeds with
        results; a metric some seeds did not report has a smaller ``n``).
    """
    rows = []
    for name, per_seed in results.items():
        done = [m for m in per_seed if m]
        metrics = {}
        for key, _ in COLUMNS:
            values = [
                m[k] for m in done for k in (f'accuracy/{key}', key)
                if k in m
            ]
            if values:
                mean, std = mean_std(values)
                metrics[key] = dict(
                    mean=mean, std=std, n=len(values), values=values)
        rows.append(dict(name=name, num_seeds=len(done), metrics=metrics))
    return rows


def format_cell(stat: Optional[Dict], num_seeds: int,
                digits: int = 2) -> str:
    """``'mean ± std'``; ``'-'`` if missing, ``(k/n)`` if partial."""
    if not stat:
        return '-'
    text = f'{stat["mean"]:.{digits}f}'
    if stat['std'] is not None:
        text += f' ± {stat["std"]:.{digits}f}'
    if stat['n'] < num_seeds:
        text += f' ({stat["n"]}/{num_seeds})'
    return text


def format_table(rows: Sequence[Dict], split: str = 'test',
                 digits: int = 2) -> str:
    """The Markdown table (caption line first) of :func:`aggregate` rows.

    Args:
        rows (Sequence[dict]): Output of :func:`aggregate`.
        split (str): Split name for the caption. Defaults to ``'test'``.
        digits (int): Decimals. Defaults to 2.

    Returns:
        str: Caption, blank line, table.
    """
    columns = [(k, t) for k, t in COLUMNS
               if k not in OPTIONAL_COLUMNS
               or any(k in r['metrics'] for r in rows)]
    header = ['method', 'seeds'] + [t for _, t in columns]
    body = [[r['name'], str(r['num_seeds'])] + [
        format_cell(r['metrics'].get(k), r['num_seeds'], digits)
        for k, _ in columns
    ] for r in rows]
    caption = (
        f'{split.capitalize()} accuracy (%): mean ± sample standard '
        'deviation (ddof=1) over the seeds of each row (no ± with one '
        'seed). many / medium / few: classes by training images (default '
        '>100 / 20-100 / <20); '
        'head/tail by tau. "-": not reported; (k/n): reported by k of n '
        'seeds.')
    lines = ['| ' + ' | '.join(header) + ' |',
             '|' + '|'.join(['---'] * len(header)) + '|']
    lines += ['| ' + ' | '.join(cells) + ' |' for cells in body]
    return caption + '\n\n' + '\n'.join(lines) + '\n'


def paired_stats(values: Sequence[Optional[float]],
                 reference: Sequence[Optional[float]]) -> Optional[Dict]:
    r"""Per-seed differences ``values - reference`` and their summary.

    Only seeds where both are known count. With :math:`d_s = x_s - r_s`:
    the mean and sample std (ddof=1) of :math:`d`, and ``wins``, the
    number of seeds with :math:`d_s > 0`.

    Args:
        values (Sequence[float | None]): The row's value per seed.
        reference (Sequence[float | None]): The reference row's, same seeds
            in the same order.

    Returns:
        dict | None: ``{'mean', 'std', 'wins', 'n', 'diffs'}``, None when
        no seed has both.
    """
    diffs = [
        v - r for v, r in zip(values, reference)
        if v is not None and r is not None
    ]
    if not diffs:
        return None
    mean, std = mean_std(diffs)
    return dict(mean=mean, std=std, wins=sum(d > 0 for d in diffs),
                n=len(diffs), diffs=diffs)


def _metric(metrics: Optional[Dict], key: str) -> Optional[float]:
    if not metrics:
        return None
    for k in (f'accuracy/{key}', key):
        if k in metrics:
            return float(metrics[k])
    return None


def paired_rows(results: Dict[str, List[Optional[Dict]]],
                against: str) -> List[Dict]:
    """Every row against ``against``, seed by seed (see paired_stats)."""
    if against not in results:
        raise ValueError(f'--paired-against {against!r} is no row of the '
                         f'table; rows are {list(results)}.')
    ref = results[against]
    rows = []
    for name, per_seed in results.items():
        if name == against:
            continue
        rows.append(
            dict(
                name=name,
                against=against,
                metrics={
                    key: paired_stats([_metric(m, key) for m in per_seed],
                                      [_metric(m, key) for m in ref])
                    for key, _ in PAIRED_COLUMNS
                }))
    return rows


def format_paired_table(rows: Sequence[Dict], digits: int = 2) -> str:
    """The Markdown table (caption first) of :func:`paired_rows`."""
    if not rows:
        return ''
    against = rows[0]['against']
    header = ['method'] + [f'{t} diff' for _, t in PAIRED_COLUMNS]

    def cell(stat):
        if not stat:
            return '-'
        text = f'{stat["mean"]:+.{digits}f}'
        if stat['std'] is not None:
            text += f' ± {stat["std"]:.{digits}f}'
        return text + f' ({stat["wins"]}/{stat["n"]})'

    lines = ['| ' + ' | '.join(header) + ' |',
             '|' + '|'.join(['---'] * len(header)) + '|']
    lines += [
        '| ' + ' | '.join([r['name']] +
                          [cell(r['metrics'][k]) for k, _ in PAIRED_COLUMNS])
        + ' |' for r in rows
    ]
    caption = (
        f'Paired differences against {against} (points), seed by seed: '
        'mean ± sample std (ddof=1) of the per-seed differences; (k/n): '
        f'the row is ahead of {against} in k of the n seeds both ran.')
    return caption + '\n\n' + '\n'.join(lines) + '\n'


# ----------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------
def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Train configs x seeds (x variants) with tools/train.py '
        'and tabulate the final metrics as mean ± std over seeds.')
    parser.add_argument('configs', nargs='+', help='config files')
    parser.add_argument(
        '--seeds', type=int, nargs='+', default=[0],
        help='seeds (randomness.seed) of every config (default: 0)')
    parser.add_argument(
        '--variant',
        action='append',
        default=[],
        metavar='NAME:KEY=VALUE[,KEY=VALUE...]',
        help='a variant of every config with these --cfg-options (work dir '
        'ROOT/<config-stem>-NAME/seed<S>); repeat for more')
    parser.add_argument(
        '--variants-only',
        action='store_true',
        help='run only the variants, not the plain configs')
    parser.add_argument(
        '--labels', nargs='+',
        help='row names of the configs, one per config (default: the '
        'config file stems)')
    parser.add_argument(
        '--cfg-options', nargs='+', default=[], metavar='KEY=VALUE',
        help='--cfg-options of every run (after the seed and variant ones)')
    parser.add_argument(
        '--work-root', default='work_dirs/experiments',
        help='root of the work dirs (default: work_dirs/experiments)')
    parser.add_argument(
        '--split', choices=['test', 'val'], default='test',
        help='metrics of the table (default: test)')
    parser.add_argument(
        '--skip-existing', action='store_true',
        help='reuse runs whose work dir already has final metrics')
    parser.add_argument(
        '--collect-only', action='store_true',
        help='run nothing; tabulate the runs already in the work dirs')
    parser.add_argument(
        '--dry-run', action='store_true',
        help='print the commands and exit')
    parser.add_argument(
        '--fail-fast', action='store_true',
        help='stop at the first failed run (default: go on and report the '
        'failures at the end)')
    parser.add_argument(
        '--out', help='save the Markdown table here (and the numbers as '
        'JSON next to it, same name with .json)')
    parser.add_argument(
        '--python', default=sys.executable,
        help='Python of the subprocesses (default: this one)')
    parser.add_argument(
        '--paired-against', metavar='LABEL',
        help='also compare every row with row LABEL seed by seed (per-seed '
        'differences of top-1, few and tail: mean ± std, wins k/n)')
    parser.add_argument(
        '--seed-keys', nargs='+', default=[], metavar='KEY',
        help='config keys also set to the seed, e.g. the data set\'s seed')
    parser.add_argument(
        '--share-stage1', action='store_true',
        help='train stage 1 once per seed (ROOT/stage1/seed<S>) and start '
        'every GALD-DC-loop row from it (load_from, stage 1 at 0 epochs)')
    parser.add_argument(
        '--stage1-label', default='CE (stage 1)',
        help='row name of the shared stage-1 runs (default: "CE (stage 1)")')
    parser.add_argument(
        '--logit-adjust', nargs='+', default=[], metavar='LABEL',
        help='add a row "LABEL + LA" for these rows: post-hoc logit '
        'adjustment, tau chosen on val, reported on test')
    parser.add_argument(
        '--jobs', type=int, default=1,
        help='subprocesses at a time (default: 1)')
    return parser.parse_args(argv)


def _ensure_test(run: Run, args, failures: list, say) -> bool:
    """Test the last checkpoint of a run that reported no test metrics.

    Returns:
        bool: False if the test was needed and failed.
    """
    from galddc_mm.utils import WorkDir
    if args.split != 'test' or read_final_metrics(run.work_dir, 'test'):
        return True
    try:
        checkpoint = WorkDir(run.work_dir).checkpoint('last')
    except FileNotFoundError as e:
        failures.append((run, 'test', str(e), None))
        say(f'  FAILED to find a checkpoint to test: {e}')
        return False
    cmd = test_command(run, checkpoint, args.cfg_options, args.python)
    log = osp.join(run.work_dir, TEST_LOG)
    say(f'  no test metrics: testing {checkpoint}')
    code = _execute(cmd, log)
    if code != 0 or not read_final_metrics(run.work_dir, 'test'):
        why = f'exit code {code}' + ('' if code else ', no test metrics')
        failures.append((run, 'test', why, log))
        say(f'  FAILED test ({why}); log: {log}\n{_tail(log)}')
        return False
    return True


def _train_and_test(run: Run, args, failures: list, say) -> bool:
    """Train a run (unless reused) and make sure it has test metrics."""
    if args.skip_existing and is_finished(run.work_dir):
        say('  finished before, skipped')
    else:
        cmd = train_command(run, args.cfg_options, args.python)
        log = osp.join(run.work_dir, TRAIN_LOG)
        say(f'  {shlex.join(cmd)}')
        code = _execute(cmd, log)
        if code != 0:
            failures.append((run, 'train', f'exit code {code}', log))
            say(f'  FAILED (exit code {code}); log: {log}\n{_tail(log)}')
            return False
    return _ensure_test(run, args, failures, say)


def _logit_adjust(run: Run, args, failures: list, say) -> bool:
    """Sweep tau for a run's final model (unless swept before)."""
    if args.skip_existing and read_logit_adjusted(run.work_dir):
        say('  logit adjustment: swept before, skipped')
        return True
    cmd = logit_adjust_command(run, args.python)
    log = osp.join(run.work_dir, LA_LOG)
    say(f'  {shlex.join(cmd)}')
    code = _execute(cmd, log)
    if code != 0 or not read_logit_adjusted(run.work_dir):
        why = f'exit code {code}' + ('' if code else ', no test metrics')
        failures.append((run, 'logit adjustment', why, log))
        say(f'  FAILED logit adjustment ({why}); log: {log}\n{_tail(log)}')
        return False
    return True


def _run_phase(tasks, args, failures: list, failed: set,
               stop: threading.Event) -> None:
    """Run ``(run, what, work)`` tasks, ``args.jobs`` at a time.

    A task whose ``run.after`` failed is not run. Each task's messages are
    printed together when it ends.
    """
    lock = threading.Lock()
    total = len(tasks)

    def one(k, run, what, work):
        lines = [f'[{k}/{total}] {what}: {run.row} seed {run.seed} -> '
                 f'{run.work_dir}']
        if stop.is_set():
            return
        if run.after is not None and run.after.work_dir in failed:
            ok = False
            lines.append('  not run: its stage-1 run failed')
            failures.append((run, what, 'stage 1 failed', None))
        else:
            ok = work(run, args, failures, lines.append)
        with lock:
            print('\n'.join(lines), flush=True)
            if not ok:
                failed.add(run.work_dir)
                if args.fail_fast:
                    stop.set()

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [
            pool.submit(one, k, *task) for k, task in enumerate(tasks, 1)
        ]
        for future in futures:
            future.result()


def main(argv=None) -> int:
    args = parse_args(argv)
    missing = [c for c in args.configs if not osp.isfile(c)]
    if missing:
        raise FileNotFoundError(f'Config(s) not found: {missing}.')
    if args.jobs < 1:
        raise ValueError(f'--jobs must be >= 1, got {args.jobs}.')
    if args.logit_adjust and args.split != 'test':
        raise ValueError('--logit-adjust rows are test metrics (tau is '
                         'chosen on val); use it with --split test.')
    variants = [parse_variant(v) for v in args.variant]
    runs = plan_runs(args.configs, args.seeds, args.work_root, variants,
                     args.variants_only, args.labels, args.seed_keys)
    stage1_runs = []
    if args.share_stage1:
        stage1_runs = share_stage1(runs, args.work_root, args.stage1_label,
                                   args.cfg_options)
        runs = stage1_runs + runs
    rows_of_runs = {run.row for run in runs}
    unknown = [r for r in args.logit_adjust if r not in rows_of_runs]
    if unknown:
        raise ValueError(f'--logit-adjust names rows {unknown} that the plan '
                         f'does not have; rows: {sorted(rows_of_runs)}.')
    la_runs = [run for run in runs if run.row in args.logit_adjust]

    if args.dry_run:
        for run in runs:
            done = args.skip_existing and is_finished(run.work_dir)
            print(('# finished, skipped: ' if done else '') +
                  shlex.join(train_command(run, args.cfg_options,
                                           args.python)))
            if args.split == 'test':
                print('#   if it reports no test metrics: ' + shlex.join(
                    test_command(run, '<last checkpoint>', args.cfg_options,
                                 args.python)))
        for run in la_runs:
            print('# logit adjustment: ' +
                  shlex.join(logit_adjust_command(run, args.python)))
        return 0

    failures = []
    failed_runs = set()
    if not args.collect_only:
        stop = threading.Event()
        first = set(id(run) for run in stage1_runs)
        for phase in (stage1_runs, [r for r in runs if id(r) not in first]):
            _run_phase([(run, 'train', _train_and_test) for run in phase],
                       args, failures, failed_runs, stop)
        _run_phase([(run, 'logit adjustment', _logit_adjust)
                    for run in la_runs if run.work_dir not in failed_runs],
                   args, failures, failed_runs, stop)

    results: Dict[str, List[Optional[Dict]]] = {}
    sources: Dict[str, List[str]] = {}

    def add(row, work_dir, metrics):
        results.setdefault(row, []).append(metrics)
        if metrics:
            sources.setdefault(row, []).append(work_dir)
        elif work_dir not in failed_runs:
            print(f'no {args.split} metrics in {work_dir}'
                  + (' (logit adjustment)' if row.endswith(LA_SUFFIX)
                     else ''))

    for run in runs:
        # A run that failed now may have an older final_metrics.json in the
        # same work dir: never count it.
        add(run.row, run.work_dir,
            None if run.work_dir in failed_runs else read_final_metrics(
                run.work_dir, args.split))
    for run in la_runs:
        add(run.row + LA_SUFFIX, run.work_dir,
            None if run.work_dir in failed_runs else
            read_logit_adjusted(run.work_dir))
    rows = aggregate(results)
    table = format_table(rows, args.split)
    paired = []
    if args.paired_against:
        paired = paired_rows(results, args.paired_against)
        table += '\n' + format_paired_table(paired)
    print('\n' + table)
    if args.out:
        os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
        with open(args.out, 'w', encoding='utf-8') as f:
            f.write(table)
        json_path = osp.splitext(args.out)[0] + '.json'
        for row in rows:
            row['work_dirs'] = sources.get(row['name'], [])
        with open(json_path, 'w', encoding='utf-8') as f:
            json.dump(
                dict(split=args.split, std='sample (ddof=1)',
                     seeds=list(args.seeds), rows=rows, paired=paired),
                f, indent=1)
        print(f'saved {args.out} and {json_path}')
    if failures:
        print(f'\n{len(failures)} run(s) failed:')
        for run, what, why, log in failures:
            print(f'  {run.row} seed {run.seed} ({what}): {why}'
                  + (f'; log: {log}' if log else ''))
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
