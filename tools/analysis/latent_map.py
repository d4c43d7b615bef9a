# Copyright (c) galddc_mm contributors. All rights reserved.
"""Real vs generated latents of a GALD-DC model in 2-D.

Real latents are the training images through the frozen encoder E^(0)
(test pipeline; the latents stage 2 was trained on); generated latents are
DDIM samples of the diffusion head, ``num_per_class`` per class. Both are
projected to 2-D:

- PCA (default): fitted on the real latents only, the generated ones are
  projected onto the same axes, so the plot shows where theta puts its
  samples in the real data's coordinates.
- t-SNE (``--method tsne``): fitted on real and generated latents together
  (t-SNE cannot project new points); slower, and distances between
  clusters are not meaningful.

Each class has its colour; head classes (``n >= tau``) are circles, tail
classes triangles; real latents are filled, generated ones hollow, and the
real class prototypes mu_y are stars.

Example::

    python tools/analysis/latent_map.py work_dirs/r20_digitslt \\
        --out docs/figures/latent_map.png
"""
import argparse
from typing import Optional, Sequence

import numpy as np
import torch
from analysis_utils import (
    ENCODERS,
    add_output_args,
    extract_real_latents,
    load_model,
    resolve_run,
    sample_generated_latents,
    save_figure,
)

METHODS = ('pca', 'tsne')
METHOD_NAMES = dict(pca='PCA', tsne='t-SNE')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Plot real vs generated latents of a GALD-DC model '
        '(PCA or t-SNE).')
    parser.add_argument(
        'source', help='work dir of a run, or a config (then --checkpoint)')
    parser.add_argument('--checkpoint', help='checkpoint to load')
    parser.add_argument(
        '--checkpoint-kind',
        choices=['last', 'best'],
        default='last',
        help='with a work dir and no --checkpoint: which checkpoint. '
        'Default last: the best one (on val) may date from stage 1, before '
        'the diffusion head was trained')
    parser.add_argument(
        '--method', choices=METHODS, default='pca',
        help='projection (default: pca)')
    parser.add_argument(
        '--classes',
        type=int,
        nargs='+',
        help='classes to show (default: all if K <= 20, else '
        '--max-classes spread over head and tail)')
    parser.add_argument(
        '--max-classes',
        type=int,
        default=10,
        help='classes shown by default when K > 20 (default: 10)')
    parser.add_argument(
        '--num-per-class',
        type=int,
        default=100,
        help='generated latents per class, and the most real latents '
        'shown per class (default: 100)')
    parser.add_argument(
        '--encoder',
        choices=ENCODERS,
        default='frozen',
        help="real latents from the frozen encoder E^(0) ('frozen', what "
        "theta learned) or the current encoder E ('current', moved by the "
        'hybrid stage 3). Default: frozen')
    parser.add_argument(
        '--seed', type=int, default=0,
        help='seed of sampling, subsampling and t-SNE (default: 0)')
    parser.add_argument(
        '--device', default='cpu', help='device of the model (default: cpu)')
    add_output_args(parser, 'latent_map.png')
    return parser.parse_args(argv)


def select_classes(counts: Sequence[int],
                   tau: float,
                   max_classes: int = 10,
                   classes: Optional[Sequence[int]] = None) -> np.ndarray:
    """Classes to plot.

    Given ``classes``, those (checked); else all classes with training
    images if there are at most 20, else ``max_classes`` of them: half
    spread evenly over the head classes (``n >= tau``) sorted by count, the
    rest over the tail classes, so both ends of the distribution show.

    Args:
        counts (Sequence[int]): Training images per class, ``(K,)``.
        tau (float): Head/tail threshold.
        max_classes (int): How many classes when K > 20. Defaults to 10.
        classes (Sequence[int], optional): Explicit choice. Defaults to
            None.

    Returns:
        np.ndarray: Class indices, most frequent first.
    """
    counts = np.asarray(counts)
    num_classes = len(counts)
    if classes is not None:
        classes = np.asarray(classes, dtype=np.int64)
        bad = classes[(classes < 0) | (classes >= num_classes)]
        if len(bad):
            raise ValueError(
                f'--classes {bad.tolist()} out of range: the model has '
                f'{num_classes} classes (0..{num_classes - 1}).')
        empty = classes[counts[classes] == 0]
        if len(empty):
            raise ValueError(
                f'--classes {empty.tolist()} have no training images; '
                'nothing to compare the generated latents with.')
        return classes[np.argsort(-counts[classes], kind='stable')]
    if max_classes < 1:
        raise ValueError(f'--max-classes must be >= 1, got {max_classes}.')
    valid = np.flatnonzero(counts > 0)
    order = valid[np.argsort(-counts[valid], kind='stable')]
    if len(order) <= 20:
        return order
    head = order[counts[order] >= tau]
    tail = order[counts[order] < tau]
    num_tail = min(len(tail), max_classes // 2)
    num_head = min(len(head), max_classes - num_tail)
    num_tail = min(len(tail), max_classes - num_head)

    def spread(group, k):
        if k == 0:
            return group[:0]
        return group[np.unique(np.linspace(0, len(group) - 1, k).round()
                               .astype(np.int64))]

    return np.concatenate([spread(head, num_head), spread(tail, num_tail)])


def project(real: np.ndarray,
            generated: np.ndarray,
            method: str = 'pca',
            seed: int = 0,
            extra: Optional[np.ndarray] = None):
    """Project latents to 2-D.

    Args:
        real (np.ndarray): Real latents ``(N, D)``.
        generated (np.ndarray): Generated latents ``(M, D)``.
        method (str): ``'pca'``: fitted on ``real``, applied to all;
            ``'tsne'``: fitted on everything at once. Defaults to ``'pca'``.
        seed (int): Random state of t-SNE. Defaults to 0.
        extra (np.ndarray, optional): More points ``(P, D)`` to place
            (e.g. prototypes); with t-SNE they join the fit. Defaults to
            None.

    Returns:
        tuple: ``(real_2d, generated_2d, extra_2d, info)``; ``extra_2d`` is
        None without ``extra`` and ``info`` a short description of the
        projection for the axis labels.
    """
    extra = np.zeros((0, real.shape[1])) if extra is None else extra
    if method == 'pca':
        from sklearn.decomposition import PCA
        pca = PCA(n_components=2, random_state=seed).fit(real)
        ratio = pca.explained_variance_ratio_ * 100
        parts = [
            pca.transform(x) if len(x) else np.zeros((0, 2))
            for x in (real, generated, extra)
        ]
        info = (f'PC1 ({ratio[0]:.0f}% of real variance)',
                f'PC2 ({ratio[1]:.0f}%)')
    elif method == 'tsne':
        from sklearn.manifold import TSNE
        data = np.concatenate([real, generated, extra])
        perplexity = float(min(30.0, max(2.0, (len(data) - 1) / 3)))
        emb = TSNE(
            n_components=2, perplexity=perplexity, init='pca',
            random_state=seed).fit_transform(data)
        cuts = np.cumsum([len(real), len(generated)])
        parts = np.split(emb, cuts)
        info = ('t-SNE 1', 't-SNE 2')
    else:
        raise ValueError(f'method must be one of {METHODS}, got {method!r}.')
    return parts[0], parts[1], (parts[2] if len(extra) else None), info


def plot_latent_map(real_2d, real_labels, gen_2d, gen_labels, classes,
                    counts, head_mask, proto_2d=None, axis_labels=('', ''),
                    title=''):
    """Draw the map; returns the matplotlib figure.

    Args:
        real_2d (np.ndarray): ``(N, 2)`` projected real latents.
        real_labels (np.ndarray): ``(N,)`` their classes.
        gen_2d (np.ndarray): ``(M, 2)`` projected generated latents.
        gen_labels (np.ndarray): ``(M,)`` their classes.
        classes (Sequence[int]): Classes to draw, in legend order.
        counts (np.ndarray): Training images per class, ``(K,)``.
        head_mask (np.ndarray): Bool ``(K,)``, head classes.
        proto_2d (np.ndarray, optional): ``(len(classes), 2)`` projected
            prototypes, in the order of ``classes``. Defaults to None.
        axis_labels (tuple[str, str]): x and y labels.
        title (str): Figure title.
    """
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    cmap = plt.get_cmap('tab10' if len(classes) <= 10 else 'tab20')
    fig, ax = plt.subplots(figsize=(8.2, 5.6))
    handles = []
    for i, c in enumerate(classes):
        colour = cmap(i % cmap.N)
        marker = 'o' if head_mask[c] else '^'
        pts = real_2d[real_labels == c]
        ax.scatter(pts[:, 0], pts[:, 1], s=16, c=[colour], marker=marker,
                   alpha=0.75, linewidths=0)
        pts = gen_2d[gen_labels == c]
        # Hollow, thin and transparent: the generated cloud must not hide
        # the real points it is compared with.
        ax.scatter(pts[:, 0], pts[:, 1], s=22, facecolors='none',
                   edgecolors=[colour], marker=marker, alpha=0.45,
                   linewidths=0.8)
        if proto_2d is not None:
            ax.scatter(proto_2d[i, 0], proto_2d[i, 1], s=170, c=[colour],
                       marker='*', edgecolors='black', linewidths=0.9,
                       zorder=5)
        handles.append(
            Line2D([], [], color=colour, marker=marker, linestyle='',
                   markersize=6, label=f'{c} (n={counts[c]})'))
    style = [
        Line2D([], [], color='grey', marker='o', linestyle='',
               label='real (filled)'),
        Line2D([], [], color='grey', marker='o', linestyle='',
               markerfacecolor='none', label='generated (hollow)'),
    ]
    if proto_2d is not None:
        style.append(
            Line2D([], [], color='grey', marker='*', linestyle='',
                   markeredgecolor='black', markersize=11,
                   label='real prototype'))
    first = ax.legend(handles=handles, loc='upper left',
                      bbox_to_anchor=(1.01, 1.0), fontsize=8,
                      title='class (train images)\ncircle: head\ntriangle: '
                      'tail', title_fontsize=8)
    ax.add_artist(first)
    ax.legend(handles=style, loc='lower left', bbox_to_anchor=(1.01, 0.0),
              fontsize=8)
    ax.set_xlabel(axis_labels[0])
    ax.set_ylabel(axis_labels[1])
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.2)
    fig.tight_layout()
    return fig


def main(argv=None):
    args = parse_args(argv)
    if args.num_per_class < 1:
        raise ValueError(
            f'--num-per-class must be >= 1, got {args.num_per_class}.')
    config, checkpoint, _ = resolve_run(args.source, args.checkpoint,
                                        args.checkpoint_kind)
    model, cfg = load_model(config, checkpoint, args.device)
    geometry = model.geometry
    counts = geometry.counts.cpu().numpy()
    head_mask = geometry.head_mask.cpu().numpy()
    classes = select_classes(counts, float(geometry.tau), args.max_classes,
                             args.classes)

    real, real_labels = extract_real_latents(model, cfg, args.encoder)
    real, real_labels = real.numpy(), real_labels.numpy()
    # At most num_per_class real points per class, so head classes do not
    # bury the tail ones (a fixed random subset).
    rng = np.random.default_rng(args.seed)
    keep = np.concatenate([
        rng.permutation(np.flatnonzero(real_labels == c))[:args.num_per_class]
        for c in classes
    ])
    real, real_labels = real[keep], real_labels[keep]

    gen_labels = torch.as_tensor(classes).repeat_interleave(
        args.num_per_class)
    generated = sample_generated_latents(model, gen_labels, args.seed).numpy()
    protos = getattr(geometry, 'real_prototypes',
                     geometry.prototypes)[torch.as_tensor(classes)]
    real_2d, gen_2d, proto_2d, axis_labels = project(
        real, generated, args.method, args.seed,
        extra=protos.float().cpu().numpy())

    source = 'E^(0)(x)' if args.encoder == 'frozen' else 'E(x)'
    method = METHOD_NAMES[args.method]
    fig = plot_latent_map(
        real_2d, real_labels, gen_2d, gen_labels.numpy(), classes, counts,
        head_mask, proto_2d, axis_labels,
        title=f'Real {source} vs generated latents ({method}, '
        f'{args.num_per_class} generated per class, tau={geometry.tau:g})')
    paths = save_figure(fig, args.out, args.format, args.dpi,
                        args.tensorboard, tag='latent_map')
    for path in paths:
        print(f'saved {path}')
    return paths


if __name__ == '__main__':
    main()
