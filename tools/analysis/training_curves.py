# Copyright (c) galddc_mm contributors. All rights reserved.
"""Training curves of a run across its stages, from mmengine's scalar log.

Top row: one panel per stage of ``train_cfg.stages`` with the losses logged
in it (log scale): ``loss`` in stage 1 (representation); ``loss_ldm``,
``loss_proto``, ``loss_rad``, ``loss_margin`` in stage 2 (diffusion);
``loss_cls``, ``loss_pseudo``, ``loss_cons`` in stage 3 (finetune); ``loss``
is always the total. Bottom: the validation accuracies (top-1,
many/medium/few, head/tail) over the whole run, with the stage boundaries
marked. A config without stages (e.g. the CE baseline) is one stage.

The x axis is the (global) epoch. The stages run very different numbers of
iterations per epoch (stage 2 makes ``repeat`` passes over the latent
cache), so an iteration axis would squeeze some stages to nothing. A
training record logged at iteration ``i`` of epoch ``e`` sits at

    x = (e - 1) + (i - i_start(e)) / (i_end(e) - i_start(e)),

where ``i_end(e)`` is the last iteration logged in epoch ``e`` and
``i_start(e) = i_end(e - 1)``; validation records sit at ``x = e``.

Example::

    python tools/analysis/training_curves.py work_dirs/r20_digitslt \\
        --out docs/figures/training_curves.png
"""
import argparse
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from analysis_utils import add_output_args, save_figure

from galddc_mm.utils import WorkDir

VAL_KEYS = ('top1', 'many', 'medium', 'few', 'head', 'tail')
STAGE_COLOURS = ('#e8eef7', '#f7efe3', '#e8f4ea', '#f2e8f4')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Plot the losses of each training stage and the '
        'validation accuracy of a run (from vis_data/scalars.json).')
    parser.add_argument('work_dir', help='work dir of the run')
    parser.add_argument(
        '--config',
        help='config giving the stages (default: the one dumped in the '
        'work dir)')
    parser.add_argument(
        '--prefix',
        default='accuracy',
        help="prefix of the validation metrics (default: 'accuracy')")
    add_output_args(parser, 'training_curves.png')
    return parser.parse_args(argv)


def stage_spans(train_cfg: dict,
                num_epochs: Optional[int] = None
                ) -> List[Tuple[str, int, int]]:
    """The stages as ``(name, begin, end)`` epoch intervals ``(begin, end]``.

    Args:
        train_cfg (dict): The config's ``train_cfg``; its ``stages`` (a list
            of dicts with ``name`` and ``epochs``, in order) are laid end to
            end, 0-epoch stages skipped. Without ``stages``, the run is one
            stage named ``'training'`` of ``max_epochs`` epochs.
        num_epochs (int, optional): Epoch count to use when ``train_cfg``
            has neither ``stages`` nor ``max_epochs``. Defaults to None.

    Returns:
        list[tuple[str, int, int]]: e.g. ``[('representation', 0, 60),
        ('diffusion', 60, 70), ('finetune', 70, 90)]``.
    """
    stages = train_cfg.get('stages') if train_cfg else None
    if not stages:
        end = (train_cfg or {}).get('max_epochs', num_epochs)
        if end is None:
            raise ValueError('train_cfg has neither stages nor max_epochs; '
                             'cannot place the stage boundaries.')
        return [('training', 0, int(end))]
    spans, begin = [], 0
    for stage in stages:
        epochs = int(stage['epochs'])
        if epochs > 0:
            spans.append((stage['name'], begin, begin + epochs))
        begin += epochs
    return spans


def epoch_positions(records: Sequence[Dict]) -> np.ndarray:
    """Fractional-epoch x of each training record (see the module doc).

    Args:
        records (Sequence[dict]): Training records with ``epoch`` (1-based)
            and ``iter`` (global), sorted by ``iter``.

    Returns:
        np.ndarray: ``x`` in ``(epoch - 1, epoch]`` for each record.
    """
    ends: Dict[int, int] = {}
    for r in records:
        ends[r['epoch']] = max(ends.get(r['epoch'], 0), r['iter'])
    logged = sorted(ends)
    starts = {}
    for k, e in enumerate(logged):
        if e - 1 in ends:
            starts[e] = ends[e - 1]
        elif k > 0:
            # Epochs without a log line in between: assume equal lengths.
            p = logged[k - 1]
            starts[e] = ends[e] - (ends[e] - ends[p]) / (e - p)
        else:
            starts[e] = ends[e] - ends[e] / e
    x = []
    for r in records:
        e = r['epoch']
        length = ends[e] - starts[e]
        frac = (r['iter'] - starts[e]) / length if length > 0 else 1.0
        x.append(e - 1 + min(max(frac, 0.0), 1.0))
    return np.asarray(x, dtype=float)


def split_by_stage(records: Sequence[Dict],
                   spans: Sequence[Tuple[str, int, int]]
                   ) -> List[List[Dict]]:
    """Training records of each stage (epoch ``e`` is in ``(begin, end]``).
    """
    out = [[] for _ in spans]
    for r in records:
        for k, (_, begin, end) in enumerate(spans):
            if begin < r['epoch'] <= end:
                out[k].append(r)
                break
    return out


def loss_keys(records: Sequence[Dict],
              earlier: Sequence[Dict] = ()) -> List[str]:
    """The losses a stage trains, total ``loss`` first.

    mmengine's log processor keeps printing every loss it has ever seen:
    in stage 3 the records still carry ``loss_ldm`` etc. with the last
    value of stage 2. A key is dropped when it was logged before the stage
    (in ``earlier``) and keeps exactly its last earlier value throughout
    the stage.

    Args:
        records (Sequence[dict]): The stage's training records.
        earlier (Sequence[dict]): All training records before the stage.
            Defaults to ().

    Returns:
        list[str]: Keys starting with ``loss``.
    """
    last = {}
    for r in earlier:
        last.update({k: v for k, v in r.items() if k.startswith('loss')})
    keys = []
    for key in sorted({k for r in records for k in r
                       if k.startswith('loss')}):
        values = [r[key] for r in records if key in r]
        if key in last and all(v == last[key] for v in values):
            continue
        keys.append(key)
    return sorted(keys, key=lambda k: k != 'loss')


def plot_curves(train: Sequence[Dict], val: Sequence[Dict],
                spans: Sequence[Tuple[str, int, int]],
                prefix: str = 'accuracy', title: str = ''):
    """Draw the loss panels and the validation panel; returns the figure.

    Args:
        train (Sequence[dict]): Training records, sorted by ``iter``.
        val (Sequence[dict]): Validation records (``step`` = epoch).
        spans (Sequence[tuple]): Stages, see :func:`stage_spans`.
        prefix (str): Metric prefix. Defaults to ``'accuracy'``.
        title (str): Figure title.
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter, NullFormatter

    fig = plt.figure(figsize=(11, 6.6))
    grid = fig.add_gridspec(2, len(spans), height_ratios=[1, 1.05])
    x_all = epoch_positions(train) if train else np.zeros(0)
    pos = {r['iter']: x for r, x in zip(train, x_all)}
    cmap = plt.get_cmap('tab10')
    done = []
    for k, ((name, begin, end), records) in enumerate(
            zip(spans, split_by_stage(train, spans))):
        earlier, done = done, done + records
        ax = fig.add_subplot(grid[0, k])
        ax.set_title(f'stage {k + 1}: {name} (epochs {begin + 1}-{end})',
                     fontsize=9)
        ax.set_xlim(begin, end)
        ax.set_xlabel('epoch', fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3, which='both')
        if not records:
            ax.text(0.5, 0.5, 'no logged iterations', ha='center',
                    transform=ax.transAxes)
            continue
        x = np.array([pos[r['iter']] for r in records])
        for j, key in enumerate(loss_keys(records, earlier)):
            y = np.array([r.get(key, np.nan) for r in records], dtype=float)
            # A log axis cannot show 0 (e.g. a margin loss with every
            # margin satisfied): leave those points out.
            y[~(y > 0)] = np.nan
            if np.isnan(y).all():
                ax.plot([], [], label=f'{key} (= 0)', color=cmap(j % 10))
                continue
            ax.plot(x, y, label=key, color='black' if key == 'loss' else
                    cmap(j % 10), linewidth=1.6 if key == 'loss' else 1.1)
        ax.set_yscale('log')
        # Plain numbers on the major ticks only: matplotlib's default
        # labels every minor tick of a short log range as 6x10^-1 etc.
        ax.yaxis.set_major_formatter(FormatStrFormatter('%g'))
        ax.yaxis.set_minor_formatter(NullFormatter())
        if k == 0:
            ax.set_ylabel('training loss (log)', fontsize=8)
        ax.legend(fontsize=7, loc='best')

    ax = fig.add_subplot(grid[1, :])
    for k, (name, begin, end) in enumerate(spans):
        ax.axvspan(begin, end, color=STAGE_COLOURS[k % len(STAGE_COLOURS)],
                   zorder=0)
        ax.text((begin + end) / 2, 1.01, f'stage {k + 1}: {name}',
                ha='center', va='bottom', fontsize=8,
                transform=ax.get_xaxis_transform())
        if k > 0:
            ax.axvline(begin, color='0.3', linewidth=1, linestyle='--')
    # head/tail dashed: on small sets they may coincide with many/few.
    styles = dict(
        top1=dict(color='black', linewidth=2.0, marker='o'),
        head=dict(color=cmap(4), linewidth=1.3, linestyle='--', marker='^'),
        tail=dict(color=cmap(5), linewidth=1.3, linestyle='--', marker='v'))
    found = False
    for j, key in enumerate(VAL_KEYS):
        full = f'{prefix}/{key}'
        rows = [r for r in val if full in r]
        if not rows:
            continue
        found = True
        style = styles.get(key, dict(color=cmap(j % 10), linewidth=1.1,
                                     marker='.'))
        ax.plot([r['step'] for r in rows], [r[full] for r in rows],
                label=key, markersize=4, **style)
    if not found:
        ax.text(0.5, 0.5, f'no validation records with {prefix}/*',
                ha='center', transform=ax.transAxes)
    ax.set_xlim(spans[0][1], spans[-1][2])
    ax.set_ylim(0, 102)
    ax.set_xlabel('epoch')
    ax.set_ylabel('val accuracy (%)')
    ax.grid(alpha=0.3)
    if found:
        ax.legend(fontsize=8, loc='lower right', ncol=3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def main(argv=None):
    args = parse_args(argv)
    from mmengine.config import Config

    work_dir = WorkDir(args.work_dir)
    train, val = work_dir.scalars()
    if not train:
        raise ValueError(f'{args.work_dir!r} logged no training iteration.')
    cfg = Config.fromfile(args.config or work_dir.config())
    spans = stage_spans(
        cfg.get('train_cfg'), num_epochs=max(r['epoch'] for r in train))
    fig = plot_curves(train, val, spans, args.prefix,
                      title=f'Training curves of {args.work_dir}')
    paths = save_figure(fig, args.out, args.format, args.dpi,
                        args.tensorboard, tag='training_curves')
    for path in paths:
        print(f'saved {path}')
    return paths


if __name__ == '__main__':
    main()
