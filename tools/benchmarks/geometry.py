# Copyright (c) galddc_mm contributors. All rights reserved.
"""The stage-2 geometry step: vectorised losses + EMA vs per-sample loops.

One geometry step is ``PrototypeLoss + CalibratedRadiusLoss +
PrototypeMarginLoss`` forward and backward w.r.t. the denoised latents,
then ``ClassGeometry.ema_update`` on the same batch. This module holds
what both of its benchmarks share, the synthetic long-tailed geometry,
the losses and the per-sample (per-class for the EMA) loop references
written the way the seed code does it (one ``cdist`` for the margin, then
a loop over samples), and :func:`bench_geometry`, the benchmark of
``tools/benchmark.py``. The stand-alone micro-benchmark with its
agreement check is ``tools/benchmarks/geometry_losses.py``.
"""
import time

import torch
import torch.nn.functional as F
from mmpretrain.registry import MODELS

from . import internals
from .common import error_message
from .timing import timeit

#: Margin of PrototypeMarginLoss in both benchmarks.
MARGIN = 1.0


def synthetic_geometry(num_classes, latent_dim, gen, device):
    """A ClassGeometry with long-tailed counts, filled in directly.

    Initialisation is not what is timed, so prototypes and radii are
    random draws of ``gen`` (counts, prototypes, radii, in this order).
    """
    geom = MODELS.build(
        dict(
            type='ClassGeometry',
            num_classes=num_classes,
            latent_dim=latent_dim,
            tau=20,
            # The seed's EMA also moves r_obs: time the full update.
            radius_scale='seed'))
    counts = (500 * torch.rand(num_classes, generator=gen)**4).long() + 1
    prototypes = torch.randn(num_classes, latent_dim, generator=gen)
    r_obs = torch.rand(num_classes, generator=gen) * 10 + 20
    internals.fill_geometry(geom, counts, prototypes, r_obs)
    return geom.to(device)


def geometry_losses(device, margin=MARGIN):
    """The three stage-2 geometry losses, in :func:`geometry_loss` order."""
    return [
        MODELS.build(dict(type='PrototypeLoss')).to(device),
        MODELS.build(dict(type='CalibratedRadiusLoss')).to(device),
        MODELS.build(dict(type='PrototypeMarginLoss',
                          margin=margin)).to(device),
    ]


# ----------------------------------------------------------------------
# Loop references (the seed's structure)
# ----------------------------------------------------------------------
def loop_losses(z, labels, protos, r_cal, valid, margin):
    protos = protos.detach()
    proto_terms, rad_terms, margin_terms = [], [], []
    dists = torch.cdist(z, protos, p=2)**2
    for i in range(z.shape[0]):
        y = int(labels[i])
        proto_terms.append(F.mse_loss(z[i], protos[y]))
        dist = torch.norm(z[i] - protos[y], p=2)
        rad_terms.append((dist - r_cal[y])**2)
        neg_mask = valid.clone()
        neg_mask[y] = False
        if neg_mask.any():
            min_neg = dists[i, neg_mask].min()
            margin_terms.append(F.relu(margin + dists[i, y] - min_neg))
    loss_margin = (torch.stack(margin_terms).sum() /
                   z.shape[0]) if margin_terms else z.sum() * 0
    return (torch.stack(proto_terms).mean() + torch.stack(rad_terms).mean() +
            loss_margin)


def loop_margin_terms(z, labels, protos, valid, margin):
    """Per-sample margin hinges (for reporting how many are active)."""
    terms = []
    for i in range(z.shape[0]):
        y = int(labels[i])
        dists = ((z[i] - protos)**2).sum(dim=1)
        neg_mask = valid.clone()
        neg_mask[y] = False
        terms.append(F.relu(margin + dists[y] - dists[neg_mask].min()))
    return torch.stack(terms)


@torch.no_grad()
def loop_ema(protos, r_obs, z, labels, bp, br):
    for c in labels.unique().tolist():
        cls_z = z[labels == c]
        protos[c] = (1 - bp) * protos[c] + bp * cls_z.mean(dim=0)
        radius = torch.norm(cls_z - protos[c], p=2, dim=1).mean()
        r_obs[c] = (1 - br) * r_obs[c] + br * radius


# ----------------------------------------------------------------------
# The benchmark of tools/benchmark.py
# ----------------------------------------------------------------------
def bench_geometry(ctx, compiled=False):
    """Geometry losses fwd+bwd + EMA: vectorised vs loop, eager/graph.

    Rows ``geometry@eager``, ``geometry@loop`` and (on CUDA)
    ``geometry@cuda_graph``; with ``compiled``, ``geometry@compiled``.
    """
    if ctx.args.tiny:
        b, k, d = 16, 10, 64
    else:
        b, k, d = 256, 1000, 2048
    device = ctx.device
    gen = torch.Generator().manual_seed(0)
    geom = synthetic_geometry(k, d, gen, device)
    losses = geometry_losses(device)
    labels = torch.randint(0, k, (b, ), generator=gen).to(device)
    prototypes, _ = internals.ema_state(geom)
    z_base = torch.randn(b, d, generator=gen).to(device) + \
        prototypes[labels]
    state = {n: v.clone() for n, v in geom.state_dict().items()}
    ema_update = internals.ema_update_fn(geom)

    def loss_forward(z):
        return internals.geometry_loss(losses, geom, z, labels)

    def make_step(forward, ema):
        z = z_base.clone().requires_grad_(True)

        def step():
            z.grad = None
            forward(z).backward()
            ema(z.detach(), labels)

        return step, z

    ref_protos, ref_r = (t.clone() for t in internals.ema_state(geom))
    proto_momentum, radius_momentum = internals.ema_momenta(geom)
    z_loop = z_base.clone().requires_grad_(True)

    def loop_step():
        z_loop.grad = None
        protos, r_cal, valid = internals.geometry_tensors(geom)
        loop_losses(z_loop, labels, protos, r_cal, valid,
                    MARGIN).backward()
        loop_ema(ref_protos, ref_r, z_loop.detach(), labels, proto_momentum,
                 radius_momentum)

    cases = []
    if compiled:
        mode = 'reduce-overhead' if ctx.cuda else 'default'
        cases.append(('geometry@compiled',
                      make_step(
                          torch.compile(loss_forward, mode=mode),
                          torch.compile(ema_update, mode=mode))[0]))
    else:
        cases.append(('geometry@eager',
                      make_step(loss_forward, ema_update)[0]))
        cases.append(('geometry@loop', loop_step))
        if ctx.cuda:
            cases.append(('geometry@cuda_graph',
                          graph_of(ctx,
                                   make_step(loss_forward, ema_update)[0])))
    for name, fn in cases:
        geom.load_state_dict(state)
        try:
            warmup = max(3, ctx.args.warmup // 2)
            repeats = max(3, ctx.args.iters)
            start = time.perf_counter()
            fn()
            ctx.sync()
            first_s = time.perf_counter() - start
            ms = timeit(fn, device, repeats, warmup)
        except Exception as exc:
            ctx.record(name, error=error_message(exc))
            continue
        row = dict(ms=ms, per_s=b / ms * 1e3, unit='latents/s', batch=b,
                   num_classes=k, latent_dim=d)
        if compiled:
            row['first_call_s'] = first_s
        ctx.record(name, **row)
    geom.load_state_dict(state)


def graph_of(ctx, step):
    """Capture ``step`` (losses fwd+bwd + EMA) as one CUDA graph."""
    side = torch.cuda.Stream(ctx.device)
    side.wait_stream(torch.cuda.current_stream(ctx.device))
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream(ctx.device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay
