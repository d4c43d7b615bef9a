# Copyright (c) galddc_mm contributors. All rights reserved.
r"""Per-class radii of a GALD-DC model: real, observed, calibrated, generated.

For every class, sorted by its number of training images (largest first):

- ``r_real``: mean distance of the real latents to their prototype,
  :math:`\frac{1}{n_y}\sum_i \|z_i - \mu_y\|_2` at initialisation;
- ``r_obs``: the EMA of the same radius over the denoised estimates of
  stage 2;
- ``r_cal``: the calibrated target, :math:`r_{obs}` for head classes and
  :math:`\lambda r_{obs} + (1 - \lambda) r_{prior}` for tail classes;
- generated radius: mean distance of DDIM samples to their own mean,
  :math:`\frac{1}{m}\sum_j \|\hat z_j - \bar{\hat z}\|_2`, sampled now
  (``--num-per-class`` per class) or read from ``generation_report.json``.

The head prior :math:`r_{prior}` is a dotted horizontal line, the head/tail
threshold tau a vertical line, and the training counts grey bars on a log
axis on the right.

Examples::

    # from a work dir (last checkpoint), sampling the generated radius now
    python tools/analysis/radius_calibration.py work_dirs/r20_digitslt \\
        --out docs/figures/radius_calibration.png
    # from the report of stage 2 alone (no model needed)
    python tools/analysis/radius_calibration.py \\
        work_dirs/r20_digitslt/generation_report.json
"""
import argparse
import json
import os.path as osp
from typing import Dict, List, Optional

import numpy as np
import torch
from analysis_utils import (
    add_output_args,
    class_order_by_count,
    load_model,
    resolve_run,
    sample_generated_latents,
    save_figure,
)

RADIUS_KEYS = ('r_real', 'r_obs', 'r_cal', 'gen_radius')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Plot per-class real, observed, calibrated and '
        'generated radii of a GALD-DC model against the training counts.')
    parser.add_argument(
        'source',
        help='work dir of a run, a config (then --checkpoint), or a '
        'generation_report.json (then no model is loaded)')
    parser.add_argument('--checkpoint', help='checkpoint to load')
    parser.add_argument(
        '--checkpoint-kind',
        choices=['last', 'best'],
        default='last',
        help='with a work dir and no --checkpoint: which checkpoint '
        '(default: last)')
    parser.add_argument(
        '--report',
        help='take the generated radius from this generation_report.json '
        'instead of sampling')
    parser.add_argument(
        '--num-per-class',
        type=int,
        default=50,
        help='latents sampled per class for the generated radius '
        '(default: 50, as GenerationReportHook)')
    parser.add_argument(
        '--tau',
        type=float,
        help='head/tail threshold to draw (default: the model\'s; with a '
        'report alone, the boundary between its head and tail classes)')
    parser.add_argument(
        '--seed', type=int, default=0, help='sampling seed (default: 0)')
    parser.add_argument(
        '--device', default='cpu', help='device of the model (default: cpu)')
    add_output_args(parser, 'radius_calibration.png')
    return parser.parse_args(argv)


def generated_radius(latents: torch.Tensor, labels: torch.Tensor,
                     num_classes: int) -> torch.Tensor:
    r"""Mean distance of each class's latents to their own mean.

    .. math:: r^{gen}_y = \frac{1}{m_y} \sum_{j: y_j = y}
        \| \hat z_j - \bar{\hat z}_y \|_2,
        \quad \bar{\hat z}_y = \frac{1}{m_y} \sum_{j: y_j = y} \hat z_j

    Args:
        latents (Tensor): ``(M, D)``.
        labels (Tensor): ``(M,)`` class of each latent.
        num_classes (int): K.

    Returns:
        Tensor: ``(K,)``, NaN for classes without latents.
    """
    latents = latents.double()
    num = torch.bincount(labels, minlength=num_classes).double()
    sums = torch.zeros(num_classes, latents.size(1), dtype=latents.dtype)
    sums.index_add_(0, labels, latents)
    means = sums / num.clamp(min=1)[:, None]
    dist = (latents - means[labels]).norm(dim=1)
    radius = torch.zeros(num_classes, dtype=latents.dtype).index_add_(
        0, labels, dist) / num.clamp(min=1)
    return torch.where(num > 0, radius,
                       torch.full_like(radius, float('nan'))).float()


def rows_from_report(report: dict) -> List[Dict]:
    """Per-class rows of a ``generation_report.json`` (as written)."""
    rows = report.get('per_class')
    if not rows:
        raise ValueError(
            'The generation report has no per_class rows; it must be a '
            'generation_report.json written by GenerationReportHook.')
    return [dict(row) for row in rows]


@torch.no_grad()
def rows_from_model(model, num_per_class: int = 50, seed: int = 0,
                    report: Optional[dict] = None) -> List[Dict]:
    """Per-class rows from the model's geometry (+ sampling or a report).

    Args:
        model (GALDDCClassifier): A model after stage 2.
        num_per_class (int): Latents sampled per class. Defaults to 50.
        seed (int): Sampling seed. Defaults to 0.
        report (dict, optional): A generation report whose ``gen_radius``
            is used instead of sampling. Defaults to None.

    Returns:
        list[dict]: One row per class with training images: ``cls``,
        ``train_count``, ``split``, ``r_real``, ``r_obs``, ``r_cal``,
        ``gen_radius``.
    """
    geometry = model.geometry
    counts = geometry.counts.cpu()
    classes = torch.nonzero(counts > 0).flatten()
    num_classes = counts.numel()
    if report is not None:
        by_cls = {r['cls']: r for r in rows_from_report(report)}
        missing = [c for c in classes.tolist() if c not in by_cls]
        if missing:
            raise ValueError(
                f'The generation report has no row for classes {missing}; '
                'was it written by this run?')
        gen = torch.full((num_classes, ), float('nan'))
        for c in classes.tolist():
            gen[c] = by_cls[c]['gen_radius']
    else:
        if num_per_class < 2:
            raise ValueError('--num-per-class must be >= 2 to measure a '
                             f'radius, got {num_per_class}.')
        labels = classes.repeat_interleave(num_per_class)
        latents = sample_generated_latents(model, labels, seed)
        gen = generated_radius(latents, labels, num_classes)
    head = geometry.head_mask.cpu()
    r_cal = geometry.r_cal.cpu()
    return [
        dict(
            cls=c,
            train_count=int(counts[c]),
            split='head' if bool(head[c]) else 'tail',
            r_real=float(geometry.r_real[c]),
            r_obs=float(geometry.r_obs[c]),
            r_cal=float(r_cal[c]),
            gen_radius=float(gen[c])) for c in classes.tolist()
    ]


def plot_radii(rows: List[Dict], tau: Optional[float] = None,
               r_prior: Optional[float] = None, title: str = ''):
    """Draw the radii per class (sorted by count); returns the figure.

    Args:
        rows (list[dict]): Per-class rows (see :func:`rows_from_model`).
        tau (float, optional): Head/tail threshold, for the label of the
            vertical line. Defaults to None.
        r_prior (float, optional): Head prior radius. Defaults to None.
        title (str): Figure title.
    """
    import matplotlib.pyplot as plt

    counts = np.array([r['train_count'] for r in rows])
    order = class_order_by_count(counts)
    rows = [rows[i] for i in order]
    counts = counts[order]
    x = np.arange(len(rows))
    dense = len(rows) > 40

    fig, ax = plt.subplots(figsize=(8.2, 4.8))
    bars = ax.twinx()
    bars.bar(x, counts, width=1.0 if dense else 0.7, color='0.88',
             edgecolor='0.75' if not dense else 'none', zorder=0)
    bars.set_yscale('log')
    bars.set_ylabel('training images (log scale)', color='0.4')
    bars.tick_params(axis='y', colors='0.4')
    # Radii in front of the count bars of the twin axis.
    ax.set_zorder(bars.get_zorder() + 1)
    ax.patch.set_visible(False)

    styles = dict(
        r_real=dict(color='0.35', linestyle='--', marker='s',
                    label='r_real (real latents)'),
        r_obs=dict(color='tab:blue', linestyle='-', marker='o',
                   label='r_obs (EMA, stage 2)'),
        r_cal=dict(color='tab:green', linestyle='-', marker='D',
                   linewidth=2.2, label='r_cal (calibrated target)'),
        gen_radius=dict(color='tab:red', linestyle=':', marker='x',
                        markersize=7, label='generated (DDIM)'))
    for key in RADIUS_KEYS:
        style = dict(styles[key])
        if dense:
            style.pop('marker')
        ax.plot(x, [r[key] for r in rows], **style)
    if r_prior is not None:
        ax.axhline(r_prior, color='tab:purple', linestyle='-.',
                   linewidth=1.0, label=f'r_prior = {r_prior:.3g}')

    is_head = np.array([r['split'] == 'head' for r in rows])
    if is_head.any() and (~is_head).any():
        # Sorted by count, head classes (n >= tau) come first.
        boundary = np.flatnonzero(~is_head)[0] - 0.5
        label = f'tau = {tau:g}' if tau is not None else 'head | tail'
        ax.axvline(boundary, color='black', linewidth=1.2)
        ax.text(boundary, 1.0, f' {label}\n head  |  tail', ha='center',
                va='bottom', fontsize=8, transform=ax.get_xaxis_transform())

    if dense:
        ax.set_xlabel('classes, sorted by training count')
    else:
        ax.set_xticks(x)
        ax.set_xticklabels(
            [f'{r["cls"]}\n({r["train_count"]})' for r in rows], fontsize=8)
        ax.set_xlabel('class (training images), sorted by training count')
    ax.set_xlim(-0.6, len(rows) - 0.4)
    ax.set_ylabel('radius: mean ||z - mu_y||')
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.25, axis='y')
    # Below the axes: inside, it would hide the bars or the radii.
    ax.legend(loc='upper center', bbox_to_anchor=(0.5, -0.2), ncol=3,
              fontsize=8, frameon=False)
    ax.set_title(title, fontsize=10, pad=26)
    fig.tight_layout()
    return fig


def main(argv=None):
    args = parse_args(argv)
    if args.source.endswith('.json'):
        if not osp.isfile(args.source):
            raise FileNotFoundError(f'No such report: {args.source!r}.')
        with open(args.source, encoding='utf-8') as f:
            report = json.load(f)
        rows = rows_from_report(report)
        tau, r_prior, lam = args.tau, report.get('r_prior'), None
        gen_from = f'report, {report.get("num_per_class", "?")} per class'
    else:
        config, checkpoint, _ = resolve_run(
            args.source, args.checkpoint, args.checkpoint_kind)
        model, _ = load_model(config, checkpoint, args.device)
        report = None
        if args.report is not None:
            with open(args.report, encoding='utf-8') as f:
                report = json.load(f)
        rows = rows_from_model(model, args.num_per_class, args.seed, report)
        geometry = model.geometry
        tau = args.tau if args.tau is not None else float(geometry.tau)
        r_prior, lam = float(geometry.r_prior), geometry.lam
        gen_from = ('report' if report is not None else
                    f'{args.num_per_class} DDIM samples per class')
    lam_text = f'{lam:g}' if lam is not None else 'lam'
    title = (f'r_cal = r_obs (head), {lam_text} r_obs + (1 - {lam_text}) '
             f'r_prior (tail); generated radius: {gen_from}')
    fig = plot_radii(rows, tau, r_prior, title)
    paths = save_figure(fig, args.out, args.format, args.dpi,
                        args.tensorboard, tag='radius_calibration')
    for path in paths:
        print(f'saved {path}')
    return paths


if __name__ == '__main__':
    main()
