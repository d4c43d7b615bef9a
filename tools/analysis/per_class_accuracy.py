# Copyright (c) galddc_mm contributors. All rights reserved.
r"""Per-class accuracy against training frequency, for one or more runs.

Left: top-1 accuracy of every class against its number of training images
(log scale), one line per run, with the many / medium / few-shot bands
shaded (many: :math:`n > \text{many\_thr}`, few: :math:`n <
\text{few\_thr}`, medium otherwise). Right: the class-averaged accuracy of
each band and of all classes, per run, computed from the same per-class
values with the same thresholds:

.. math:: \text{acc}(G) = \frac{1}{|G|} \sum_{c \in G} a_c

(the ``LongTailAccuracy`` definition with ``average='class'``).

Each run is ``[LABEL=]PATH``, PATH being a work dir (its newest
``<split>_per_class_accuracy.json``) or a ``*_per_class_accuracy.json`` /
``.csv`` file written by ``LongTailAccuracy``.

Example::

    python tools/analysis/per_class_accuracy.py \\
        CE=work_dirs/ce_digits_lt GALD-DC=work_dirs/r20_digitslt \\
        --out docs/figures/per_class_accuracy.png
"""
import argparse
import os.path as osp
import re
from typing import Dict, List, Sequence, Tuple

import numpy as np
from analysis_utils import add_output_args, save_figure

from galddc_mm.datasets.long_tail import class_bands
from galddc_mm.utils import WorkDir, load_per_class_accuracy

BAND_COLOURS = dict(many='#d9f0d3', medium='#fff2cc', few='#f8d7d7')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Plot per-class accuracy against training frequency '
        'for one or several runs, with many/medium/few bands.')
    parser.add_argument(
        'runs',
        nargs='+',
        metavar='[LABEL=]PATH',
        help='work dir or *_per_class_accuracy.{json,csv}; LABEL defaults '
        'to the work dir name')
    parser.add_argument(
        '--split',
        choices=['test', 'val'],
        default='test',
        help='which per-class file of a work dir (default: test)')
    parser.add_argument(
        '--many-thr',
        type=int,
        default=100,
        help='many-shot: more training images than this (default: 100)')
    parser.add_argument(
        '--few-thr',
        type=int,
        default=20,
        help='few-shot: fewer training images than this (default: 20)')
    add_output_args(parser, 'per_class_accuracy.png')
    return parser.parse_args(argv)


def parse_run(spec: str, split: str = 'test') -> Tuple[str, str]:
    """``'[LABEL=]PATH'`` -> ``(label, per-class file)``.

    The default label is the work dir's name, or ``<name>/seedN`` for the
    ``seedN`` folders of ``tools/run_experiments.py``; for a file, its
    folder's name.
    """
    label, sep, path = spec.partition('=')
    if not sep:
        label, path = '', spec
    path = path.rstrip('/')
    if osp.isdir(path):
        file = WorkDir(path).per_class_accuracy_file(split)
        folder = path
    elif osp.isfile(path):
        file = path
        folder = osp.dirname(osp.abspath(path))
        # <work_dir>/<timestamp>/file: name the run after the work dir.
        if re.match(r'^\d{8}_\d{6}$', osp.basename(folder)):
            folder = osp.dirname(folder)
    else:
        raise FileNotFoundError(
            f'{path!r} (from {spec!r}) is neither a work dir nor a per-class '
            'accuracy file.')
    if not label:
        name = osp.basename(osp.abspath(folder))
        if re.match(r'^seed\d+$', name):
            name = f'{osp.basename(osp.dirname(osp.abspath(folder)))}/{name}'
        label = name
    return label, file


def band_accuracy(rows: Sequence[Dict], many_thr: int = 100,
                  few_thr: int = 20) -> Dict[str, float]:
    """Class-averaged accuracy of each band and of all classes.

    Args:
        rows (Sequence[dict]): Per-class rows with ``train_count`` and
            ``accuracy`` (percent, None for an unevaluated class).
        many_thr (int): Many-shot: ``n > many_thr``. Defaults to 100.
        few_thr (int): Few-shot: ``n < few_thr``. Defaults to 20.

    Returns:
        dict[str, float]: ``many``, ``medium``, ``few`` (a band without
        evaluated classes is left out) and ``all``.
    """
    if few_thr > many_thr:
        raise ValueError(f'--few-thr ({few_thr}) must not exceed --many-thr '
                         f'({many_thr}).')
    rows = [r for r in rows if r['accuracy'] is not None]
    if not rows:
        raise ValueError('No class has an accuracy (no evaluation samples).')
    counts = np.array([r['train_count'] for r in rows])
    acc = np.array([r['accuracy'] for r in rows], dtype=float)
    bands = class_bands(counts, many_thr, few_thr)
    out = {
        band: float(acc[bands == band].mean())
        for band in ('many', 'medium', 'few') if (bands == band).any()
    }
    out['all'] = float(acc.mean())
    return out


def plot_per_class(runs: List[Tuple[str, List[Dict]]], many_thr: int = 100,
                   few_thr: int = 20, title: str = ''):
    """Draw per-class accuracy vs count and band means; returns the figure.

    Args:
        runs (list[tuple[str, list[dict]]]): ``(label, per-class rows)``.
        many_thr (int): Many-shot threshold. Defaults to 100.
        few_thr (int): Few-shot threshold. Defaults to 20.
        title (str): Figure title.
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter, NullFormatter

    fig, (ax, bx) = plt.subplots(
        1, 2, figsize=(10, 4.2), gridspec_kw=dict(width_ratios=[1.6, 1]))
    all_counts = np.concatenate(
        [[r['train_count'] for r in rows] for _, rows in runs])
    positive = all_counts[all_counts > 0]
    lo, hi = positive.min() / 1.35, positive.max() * 1.35
    # Counts are integers: put the band edges half-way between them.
    edges = [('few', lo, few_thr - 0.5),
             ('medium', few_thr - 0.5, many_thr + 0.5),
             ('many', many_thr + 0.5, hi)]
    for band, left, right in edges:
        left, right = max(left, lo), min(right, hi)
        if right <= left:
            continue
        ax.axvspan(left, right, color=BAND_COLOURS[band], zorder=0)
        ax.text(np.sqrt(left * right), 1.01, band, ha='center', va='bottom',
                fontsize=8, transform=ax.get_xaxis_transform())

    num_runs = len(runs)
    cmap = plt.get_cmap('tab10')
    markers = 'osD^vP*X'
    for i, (label, rows) in enumerate(runs):
        rows = sorted((r for r in rows if r['accuracy'] is not None
                       and r['train_count'] > 0),
                      key=lambda r: (r['train_count'], r['class_idx']))
        counts = np.array([r['train_count'] for r in rows], dtype=float)
        # Runs share the same counts: nudge them apart (in log space) so
        # the markers do not sit on each other.
        shift = 10**(0.012 * (i - (num_runs - 1) / 2))
        ax.plot(counts * shift, [r['accuracy'] for r in rows],
                marker=markers[i % len(markers)], color=cmap(i % 10),
                linewidth=1.2, markersize=5, alpha=0.9, label=label,
                zorder=3)
    ax.set_xscale('log')
    ax.set_xlim(lo, hi)
    # Readable counts (1, 2, 5, 10, 20, ...) instead of 10^k labels.
    ticks = [m * 10**p for p in range(0, 7) for m in (1, 2, 5)]
    ax.set_xticks([t for t in ticks if lo <= t <= hi])
    ax.xaxis.set_major_formatter(FormatStrFormatter('%g'))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_ylim(-3, 103)
    ax.set_xlabel('training images of the class (log scale)')
    ax.set_ylabel('per-class top-1 accuracy (%)')
    ax.grid(alpha=0.3, which='both')
    ax.legend(fontsize=8, loc='lower right')

    groups = ['many', 'medium', 'few', 'all']
    means = [band_accuracy(rows, many_thr, few_thr) for _, rows in runs]
    groups = [g for g in groups if any(g in m for m in means)]
    width = 0.8 / num_runs
    x = np.arange(len(groups))
    for i, ((label, _), m) in enumerate(zip(runs, means)):
        values = [m.get(g, np.nan) for g in groups]
        pos = x - 0.4 + width * (i + 0.5)
        bx.bar(pos, values, width, color=cmap(i % 10), label=label)
        for p, v in zip(pos, values):
            if np.isfinite(v):
                bx.text(p, v + 1, f'{v:.1f}', ha='center', va='bottom',
                        fontsize=7, rotation=90 if num_runs > 3 else 0)
    bx.set_xticks(x)
    bx.set_xticklabels([
        f'{g}\n(n>{many_thr})' if g == 'many' else
        f'{g}\n(n<{few_thr})' if g == 'few' else
        f'{g}\n({few_thr}-{many_thr})' if g == 'medium' else 'all classes'
        for g in groups
    ], fontsize=8)
    bx.set_ylim(0, 112)
    bx.set_ylabel('class-averaged accuracy (%)')
    bx.grid(alpha=0.3, axis='y')
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def main(argv=None):
    args = parse_args(argv)
    if args.few_thr > args.many_thr:
        raise ValueError(f'--few-thr ({args.few_thr}) must not exceed '
                         f'--many-thr ({args.many_thr}).')
    runs = []
    for spec in args.runs:
        label, file = parse_run(spec, args.split)
        runs.append((label, load_per_class_accuracy(file)))
        print(f'{label}: {file}')
    fig = plot_per_class(
        runs, args.many_thr, args.few_thr,
        title=f'Per-class {args.split} accuracy vs training frequency')
    paths = save_figure(fig, args.out, args.format, args.dpi,
                        args.tensorboard, tag='per_class_accuracy')
    for path in paths:
        print(f'saved {path}')
    return paths


if __name__ == '__main__':
    main()
