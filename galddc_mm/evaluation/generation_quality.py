# Copyright (c) galddc_mm contributors. All rights reserved.
"""How good are generated latents? Per class and per band, vectorised.

Everything here works on tensors on any device (the GPU when the model is
there): no Python loop over samples or classes, distance matrices in row
chunks so memory stays bounded. :func:`generation_report` assembles the
per-class rows and band summaries that :class:`GenerationReportHook` logs,
gates stage 3 on and saves, and that ``tools/analysis/generation_quality.py``
writes for any checkpoint.

Metrics, for class ``c`` with real latents ``R_c`` and generated ``G_c``:

- **radius reached**: ``r(G_c) / r_cal_c`` (does the calibration reach its
  own target?) and ``r(G_c) / r_real_c``, with ``r`` the mean distance to
  the set's own mean. Undefined (``None``) where the denominator is 0, as
  for one-image classes, whose real radius is 0.
- **Fréchet distance** ``||m_R - m_G||^2 + sum_d (s_R,d - s_G,d)^2``, the
  Fréchet distance of two Gaussians with *diagonal* covariances. Tail
  classes have far fewer samples than dimensions (5 images, D = 2048), so
  their sample covariance is singular and its matrix square root
  meaningless; shrinking it towards a diagonal would make the number depend
  on a shrinkage constant. The diagonal form is defined from 2 samples on,
  uses one estimator for every class (head and tail stay comparable) and
  costs O(K D) instead of K matrix square roots. It ignores correlations
  between dimensions. ``None`` below 2 real samples.
- **precision / recall** on k-NN manifolds (Kynkäänniemi et al., NeurIPS
  2019), pooled over a band: precision is the share of generated latents
  inside the union of balls around the real latents, each ball reaching
  its centre's k-th nearest real neighbour; recall the share of real
  latents inside the generated manifold built the same way.
- **memorisation** (tail classes): the distance from each generated latent
  to the nearest real training latent of its class, over the class's real
  radius; and the share closer than ``0.1 r``. Collapse onto the few real
  samples is the failure calibration exists to prevent.
- **G's accuracy** on the generated latents.
"""
import math
from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor

from galddc_mm.datasets.long_tail import BANDS, class_bands, head_tail_masks

#: Groups of the summary, in this order.
GROUPS = ('all', ) + BANDS + ('head', 'tail')


def class_moments(latents: Tensor, labels: Tensor, num_classes: int):
    """Per-class counts, means, unbiased variances and mean radii.

    Args:
        latents (Tensor): ``(N, D)``.
        labels (Tensor): ``(N,)`` class indices.
        num_classes (int): ``K``.

    Returns:
        tuple: ``counts (K,)``, ``means (K, D)``, ``variances (K, D)``
        (``correction=1``; 0 below 2 samples) and ``radii (K,)`` (mean
        distance to the class mean; 0 for an empty class), in float64.
    """
    z = latents.double()
    y = labels.long()
    counts = torch.zeros(num_classes, dtype=torch.float64, device=z.device)
    counts.index_add_(0, y, torch.ones_like(y, dtype=torch.float64))
    sums = torch.zeros(num_classes, z.size(1), dtype=torch.float64,
                       device=z.device).index_add_(0, y, z)
    means = sums / counts.clamp_min(1)[:, None]
    centred = z - means[y]
    sq = torch.zeros_like(sums).index_add_(0, y, centred * centred)
    variances = sq / (counts - 1).clamp_min(1)[:, None]
    variances[counts < 2] = 0
    radii = torch.zeros_like(counts).index_add_(0, y, centred.norm(dim=1))
    radii = radii / counts.clamp_min(1)
    return counts, means, variances, radii


def frechet_distance_diag(mean_a: Tensor, var_a: Tensor, mean_b: Tensor,
                          var_b: Tensor) -> Tensor:
    """Fréchet distance of Gaussians with diagonal covariances, row-wise.

    ``||m_a - m_b||^2 + Tr(C_a + C_b - 2 (C_a C_b)^{1/2})``, which for
    diagonal ``C`` is ``||m_a - m_b||^2 + sum_d (s_a,d - s_b,d)^2``.

    Args:
        mean_a, var_a, mean_b, var_b (Tensor): ``(..., D)``.

    Returns:
        Tensor: ``(...)``.
    """
    std_a, std_b = var_a.clamp_min(0).sqrt(), var_b.clamp_min(0).sqrt()
    return ((mean_a - mean_b)**2).sum(-1) + ((std_a - std_b)**2).sum(-1)


def _distance_rows(queries: Tensor, support: Tensor, chunk: int):
    """Yield ``(start, rows)`` of the query-to-support distance matrix."""
    for start in range(0, queries.size(0), chunk):
        yield start, torch.cdist(queries[start:start + chunk], support)


def knn_radii(points: Tensor, k: int, chunk: int = 4096) -> Tensor:
    """Distance of each point to its k-th nearest other point.

    Args:
        points (Tensor): ``(N, D)``, ``N > k``.
        k (int): The neighbour rank (3 in Kynkäänniemi et al.).
        chunk (int): Rows of the distance matrix at once.

    Returns:
        Tensor: ``(N,)``.
    """
    radii = torch.empty(points.size(0), dtype=points.dtype,
                        device=points.device)
    for start, dist in _distance_rows(points, points, chunk):
        # The k+1 smallest include the point itself (distance 0).
        radii[start:start + dist.size(0)] = dist.topk(
            k + 1, dim=1, largest=False).values[:, -1]
    return radii


def manifold_coverage(queries: Tensor, support: Tensor, radii: Tensor,
                      chunk: int = 4096) -> float:
    """Share of ``queries`` inside the union of balls ``B(support_j, r_j)``.

    Args:
        queries (Tensor): ``(M, D)``.
        support (Tensor): ``(N, D)`` ball centres.
        radii (Tensor): ``(N,)`` ball radii.
        chunk (int): Rows of the distance matrix at once.

    Returns:
        float: In [0, 1].
    """
    inside = 0
    for _, dist in _distance_rows(queries, support, chunk):
        inside += int((dist <= radii[None]).any(dim=1).sum())
    return inside / max(queries.size(0), 1)


def precision_recall(real: Tensor,
                     generated: Tensor,
                     k: int = 3,
                     chunk: int = 4096) -> Dict[str, Optional[float]]:
    """Improved precision and recall (Kynkäänniemi et al., 2019).

    Args:
        real (Tensor): ``(N, D)`` real latents.
        generated (Tensor): ``(M, D)`` generated latents.
        k (int): Neighbour rank of the manifold radii. Defaults to 3.
        chunk (int): Rows of the distance matrices at once.

    Returns:
        dict: ``precision`` and ``recall``, ``None`` when a set has no more
        than ``k`` points (no k-th neighbour).
    """
    out = dict(precision=None, recall=None)
    if real.size(0) > k and generated.size(0) > 0:
        out['precision'] = manifold_coverage(
            generated, real, knn_radii(real, k, chunk), chunk)
    if generated.size(0) > k and real.size(0) > 0:
        out['recall'] = manifold_coverage(
            real, generated, knn_radii(generated, k, chunk), chunk)
    return out


def nearest_same_class(generated: Tensor,
                       gen_labels: Tensor,
                       real: Tensor,
                       real_labels: Tensor,
                       chunk: int = 4096) -> Tensor:
    """Distance of each generated latent to the nearest real one of its class.

    Args:
        generated (Tensor): ``(M, D)``.
        gen_labels (Tensor): ``(M,)``.
        real (Tensor): ``(N, D)``.
        real_labels (Tensor): ``(N,)``.
        chunk (int): Rows of the distance matrix at once.

    Returns:
        Tensor: ``(M,)``; ``inf`` where the class has no real latent.
    """
    out = torch.full((generated.size(0), ), math.inf,
                     dtype=generated.dtype, device=generated.device)
    if real.size(0) == 0:
        return out
    for start, dist in _distance_rows(generated, real, chunk):
        rows = slice(start, start + dist.size(0))
        same = gen_labels[rows, None] == real_labels[None]
        out[rows] = dist.masked_fill(~same, math.inf).amin(dim=1)
    return out


def _number(value) -> Optional[float]:
    """A JSON-safe float: ``None`` for undefined or non-finite values."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _ratio(num: Tensor, den: Tensor) -> List[Optional[float]]:
    return [
        _number(n / d) if d > 0 else None
        for n, d in zip(num.tolist(), den.tolist())
    ]


def _mean(values: Sequence[Optional[float]]) -> Optional[float]:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def generation_report(generated: Tensor,
                      gen_labels: Tensor,
                      gen_logits: Tensor,
                      counts: Tensor,
                      r_real: Tensor,
                      r_cal: Tensor,
                      real_prototypes: Tensor,
                      tau: float,
                      r_obs: Optional[Tensor] = None,
                      real: Optional[Tensor] = None,
                      real_labels: Optional[Tensor] = None,
                      many_thr: int = 100,
                      few_thr: int = 20,
                      k: int = 3,
                      max_real_per_band: int = 20000,
                      memorised_below: float = 0.1,
                      chunk: int = 4096) -> dict:
    """Per-class rows and band summaries of generated latents.

    Args:
        generated (Tensor): ``(M, D)`` generated latents (encoder space).
        gen_labels (Tensor): ``(M,)`` their classes.
        gen_logits (Tensor): ``(M, K)`` G's logits on them.
        counts (Tensor): ``(K,)`` training samples per class.
        r_real (Tensor): ``(K,)`` real radii (mean distance to the
            prototype).
        r_cal (Tensor): ``(K,)`` calibrated target radii.
        real_prototypes (Tensor): ``(K, D)`` real class means.
        tau (float): Head/tail threshold.
        r_obs (Tensor, optional): ``(K,)`` the stage-2 EMA radii (logged).
        real (Tensor, optional): ``(N, D)`` real training latents; without
            them the Fréchet distance, precision/recall and memorisation
            are left out (``None``).
        real_labels (Tensor, optional): ``(N,)``.
        many_thr, few_thr (int): Band thresholds on training counts.
        k (int): Neighbour rank of precision/recall. Defaults to 3.
        max_real_per_band (int): Real latents of a band used for
            precision/recall at most (a fixed, evenly spaced subset above
            it), which bounds the cost on ImageNet-scale sets.
        memorised_below (float): The memorisation threshold, in class
            radii. Defaults to 0.1.
        chunk (int): Rows of distance matrices at once.

    Returns:
        dict: ``per_class`` (list of rows), ``summary`` (``{group: dict}``
        for :data:`GROUPS` with classes) and ``nonfinite`` (the number of
        generated latents with a NaN/Inf entry).
    """
    device = generated.device
    num_classes = counts.numel()
    finite = torch.isfinite(generated).all(dim=1)
    nonfinite = int((~finite).sum())
    classes = torch.unique(gen_labels).sort().values
    k_cls = classes.numel()
    g_counts, g_means, g_vars, g_radii = class_moments(
        generated[finite], gen_labels[finite], num_classes)
    correct = (gen_logits.argmax(dim=1) == gen_labels).double()
    acc = torch.zeros(num_classes, dtype=torch.float64, device=device)
    acc.index_add_(0, gen_labels.long(), correct)
    acc = acc / torch.bincount(gen_labels.long(),
                               minlength=num_classes).clamp_min(1) * 100
    proto_dist = (g_means - real_prototypes.double()).norm(dim=1)

    cnt = counts.to(device)
    r_real, r_cal = r_real.double().to(device), r_cal.double().to(device)
    radius_real = _ratio(g_radii[classes], r_real[classes])
    radius_cal = _ratio(g_radii[classes], r_cal[classes])
    proto_rel = _ratio(proto_dist[classes], r_real[classes])
    fd = [None] * k_cls
    nn_rel: Dict[int, Tensor] = {}
    head, tail = head_tail_masks(cnt.cpu(), tau)
    if real is not None:
        real = real.to(device)
        real_labels = real_labels.to(device)
        r_counts, r_means, r_vars, _ = class_moments(real, real_labels,
                                                     num_classes)
        fds = frechet_distance_diag(r_means, r_vars, g_means, g_vars)
        fd = [
            _number(fds[c]) if r_counts[c] >= 2 and g_counts[c] >= 2
            else None for c in classes.tolist()
        ]
        tail_gen = tail.to(device)[gen_labels] & finite
        tail_real = tail.to(device)[real_labels]
        if tail_gen.any() and tail_real.any():
            dist = nearest_same_class(generated[tail_gen],
                                      gen_labels[tail_gen], real[tail_real],
                                      real_labels[tail_real], chunk)
            rel = dist / r_real[gen_labels[tail_gen]]
            labels_t = gen_labels[tail_gen]
            for c in torch.unique(labels_t).tolist():
                if r_real[c] > 0:
                    nn_rel[c] = rel[labels_t == c]

    bands = class_bands(cnt.cpu().numpy(), many_thr, few_thr)
    rows = []
    for i, c in enumerate(classes.tolist()):
        mem = nn_rel.get(c)
        rows.append(
            dict(
                cls=c,
                train_count=int(cnt[c]),
                band=str(bands[c]),
                split='head' if bool(head[c]) else
                ('tail' if bool(tail[c]) else 'none'),
                num_generated=int(g_counts[c]),
                gen_radius=_number(g_radii[c]),
                r_real=_number(r_real[c]),
                r_obs=None if r_obs is None else _number(r_obs[c]),
                r_cal=_number(r_cal[c]),
                radius_to_real=radius_real[i],
                radius_to_cal=radius_cal[i],
                proto_dist=_number(proto_dist[c]),
                proto_dist_rel=proto_rel[i],
                fd=fd[i],
                nn_real_rel=None if mem is None else _number(mem.mean()),
                memorised=None if mem is None else _number(
                    (mem < memorised_below).double().mean()),
                gen_acc=_number(acc[c])))

    def in_group(row: dict, name: str) -> bool:
        if name == 'all':
            return True
        return row['split' if name in ('head', 'tail') else 'band'] == name

    summary = {}
    for name in GROUPS:
        members = [r for r in rows if in_group(r, name)]
        if not members:
            continue
        keys = ('gen_acc', 'gen_radius', 'r_real', 'r_obs', 'r_cal',
                'radius_to_real', 'radius_to_cal', 'proto_dist',
                'proto_dist_rel', 'fd', 'nn_real_rel', 'memorised')
        s = {key: _mean([r[key] for r in members]) for key in keys}
        s['num_classes'] = len(members)
        if real is not None:
            member = torch.zeros(num_classes, dtype=torch.bool,
                                 device=device)
            member[[r['cls'] for r in members]] = True
            gen_g = generated[member[gen_labels] & finite]
            real_g = real[member[real_labels]]
            if real_g.size(0) > max_real_per_band:
                step = real_g.size(0) / max_real_per_band
                idx = (torch.arange(max_real_per_band, device=device) *
                       step).long()
                real_g = real_g[idx]
            s.update(precision_recall(real_g.float(), gen_g.float(), k,
                                      chunk))
        summary[name] = s
    return dict(
        num_classes=num_classes,
        num_generated=int(generated.size(0)),
        nonfinite=nonfinite,
        fd_covariance='diagonal',
        pr_k=k,
        memorised_below=memorised_below,
        summary=summary,
        per_class=rows)


__all__ = [
    'GROUPS', 'class_moments', 'frechet_distance_diag', 'generation_report',
    'knn_radii', 'manifold_coverage', 'nearest_same_class',
    'precision_recall'
]
