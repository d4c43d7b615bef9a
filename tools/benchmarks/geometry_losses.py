# Copyright (c) galddc_mm contributors. All rights reserved.
"""Micro-benchmark: vectorised GALD-DC geometry losses vs per-sample loops.

Times one stage-2 geometry step,

* losses: ``PrototypeLoss + CalibratedRadiusLoss + PrototypeMarginLoss``
  forward and backward w.r.t. the denoised latents, and
* ``ClassGeometry.ema_update`` on the same batch,

for the vectorised implementation of ``galddc_mm`` and for a per-sample
(per-class for the EMA) Python-loop reference written the way the seed code
does it (one ``cdist`` for the margin, then a loop over samples). Prints the
median over ``--repeats`` timed runs after ``--warmup`` runs, with
``torch.cuda.synchronize()`` around each run on GPU.

Example::

    python tools/benchmarks/geometry_losses.py --device cuda --out bench.json
"""
import argparse
import json
import platform
import statistics
import time

import torch
import torch.nn.functional as F
from mmpretrain.registry import MODELS

import galddc_mm  # noqa: F401  (registers the modules)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--device', choices=['cpu', 'cuda'], default='cpu')
    parser.add_argument('--batch-size', type=int, default=256)
    parser.add_argument('--num-classes', type=int, default=1000)
    parser.add_argument('--dim', type=int, default=2048)
    parser.add_argument('--repeats', type=int, default=20)
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument(
        '--skip-loop',
        action='store_true',
        help='time only the vectorised implementation')
    parser.add_argument(
        '--compile',
        action='store_true',
        help='also time the vectorised step under torch.compile (fewer '
        'kernel launches; eager time on a GPU is bound by launches)')
    parser.add_argument(
        '--compile-mode',
        default='default',
        help="torch.compile mode with --compile, e.g. 'reduce-overhead' "
        '(CUDA graphs)')
    parser.add_argument('--out', help='write the results as JSON here')
    return parser.parse_args()


def machine_name(device):
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ----------------------------------------------------------------------
# Loop reference (the seed's structure)
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


def timeit(fn, device, repeats, warmup):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main():
    args = parse_args()
    device = torch.device(args.device)
    B, K, D = args.batch_size, args.num_classes, args.dim
    gen = torch.Generator().manual_seed(0)
    margin = 1.0

    geom = MODELS.build(
        dict(type='ClassGeometry', num_classes=K, latent_dim=D, tau=20))
    # Synthetic long-tailed geometry, filled in directly (initialisation
    # is not what is timed here).
    counts = (500 * torch.rand(K, generator=gen)**4).long() + 1
    geom.counts.copy_(counts)
    geom.prototypes.copy_(torch.randn(K, D, generator=gen))
    geom.r_obs.copy_(torch.rand(K, generator=gen) * 10 + 20)
    geom.r_real.copy_(geom.r_obs)
    geom.r_prior.copy_(geom.r_obs[geom.head_mask].mean())
    geom.initialized.fill_(1)
    geom.to(device)

    losses = [
        MODELS.build(dict(type='PrototypeLoss')).to(device),
        MODELS.build(dict(type='CalibratedRadiusLoss')).to(device),
        MODELS.build(dict(type='PrototypeMarginLoss',
                          margin=margin)).to(device),
    ]
    labels = torch.randint(0, K, (B, ), generator=gen).to(device)
    # Latents on the segment from their prototype towards another class's
    # (alpha up to 0.6) plus a little noise, so that part of the margin
    # hinges are active and the agreement check covers their gradient.
    protos_cpu = geom.prototypes.cpu()
    others = torch.randint(0, K, (B, ), generator=gen)
    alpha = 0.6 * torch.rand(B, 1, generator=gen)
    z_base = (protos_cpu[labels.cpu()] + alpha *
              (protos_cpu[others] - protos_cpu[labels.cpu()]) +
              0.1 * torch.randn(B, D, generator=gen)).to(device)
    z = z_base.clone().requires_grad_(True)
    z_loop = z_base.clone().requires_grad_(True)

    def loss_forward(z):
        protos, r_cal = geom.prototypes, geom.r_cal
        return (losses[0](z, labels, protos) +
                losses[1](z, labels, protos, r_cal) +
                losses[2](z, labels, protos, geom.valid_mask))

    def make_vec_losses(forward):

        def vec_losses():
            z.grad = None
            total = forward(z)
            total.backward()
            return total

        return vec_losses

    vec_losses = make_vec_losses(loss_forward)

    def ref_losses():
        z_loop.grad = None
        total = loop_losses(z_loop, labels, geom.prototypes, geom.r_cal,
                            geom.valid_mask, margin)
        total.backward()
        return total

    ema_z = z_base.detach()
    state = {k: v.clone() for k, v in geom.state_dict().items()}
    ref_protos, ref_r = geom.prototypes.clone(), geom.r_obs.clone()

    def vec_ema():
        geom.ema_update(ema_z, labels)

    def ref_ema():
        loop_ema(ref_protos, ref_r, ema_z, labels, geom.proto_momentum,
                 geom.radius_momentum)

    # Agreement check before timing.
    check = {}
    if not args.skip_loop:
        v, r = vec_losses(), ref_losses()
        with torch.no_grad():
            hinges = loop_margin_terms(z_base, labels, geom.prototypes,
                                       geom.valid_mask, margin)
            check['margin_active_fraction'] = float(
                (hinges > 0).float().mean())
        check['loss_abs_diff'] = float((v - r).detach().abs())
        check['grad_max_abs_diff'] = float((z.grad - z_loop.grad).abs().max())
        vec_ema()
        ref_ema()
        check['ema_proto_max_abs_diff'] = float(
            (geom.prototypes - ref_protos).abs().max())
        check['ema_radius_max_abs_diff'] = float(
            (geom.r_obs - ref_r).abs().max())
        geom.load_state_dict(state)

    # (group, name, vectorised step, loop reference)
    cases = [('eager', 'losses fwd+bwd', vec_losses, ref_losses),
             ('eager', 'ema_update', vec_ema, ref_ema)]
    if args.compile:
        compiled_ema = torch.compile(geom.ema_update, mode=args.compile_mode)
        compiled_forward = torch.compile(loss_forward, mode=args.compile_mode)
        cases += [
            ('compiled', 'compiled losses', make_vec_losses(compiled_forward),
             ref_losses),
            ('compiled', 'compiled ema', lambda: compiled_ema(ema_z, labels),
             ref_ema),
        ]
    rows, ref_times = [], {}
    for group, name, vec_fn, ref_fn in cases:
        vec_ms = timeit(vec_fn, device, args.repeats, args.warmup)
        if not args.skip_loop and ref_fn not in ref_times:
            ref_times[ref_fn] = timeit(ref_fn, device, args.repeats,
                                       args.warmup)
        ref_ms = ref_times.get(ref_fn)
        rows.append(
            dict(group=group, name=name, vectorised_ms=vec_ms,
                 loop_ms=ref_ms))
    for group in dict.fromkeys(case[0] for case in cases):
        parts = [r for r in rows if r['group'] == group]
        rows.append(
            dict(
                group=group,
                name='total' if group == 'eager' else f'{group} total',
                vectorised_ms=sum(r['vectorised_ms'] for r in parts),
                loop_ms=None if args.skip_loop else sum(r['loop_ms']
                                                        for r in parts)))

    result = dict(
        machine=machine_name(device),
        device=args.device,
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        batch_size=B,
        num_classes=K,
        dim=D,
        repeats=args.repeats,
        warmup=args.warmup,
        compile_mode=args.compile_mode if args.compile else None,
        check=check,
        rows=rows)

    print(f"machine: {result['machine']} ({args.device}, "
          f'{result["threads"]} threads), torch {torch.__version__}')
    print(f'B={B} K={K} D={D}, median of {args.repeats} runs after '
          f'{args.warmup} warm-up')
    header = f"{'':16s} {'vectorised ms':>14s} {'loop ms':>10s} " \
             f"{'speed-up':>9s}"
    print(header)
    print('-' * len(header))
    for row in rows:
        loop_ms = row['loop_ms']
        loop_s = f'{loop_ms:10.3f}' if loop_ms is not None else f"{'-':>10s}"
        speed = f"{loop_ms / row['vectorised_ms']:8.1f}x" \
            if loop_ms is not None else f"{'-':>9s}"
        print(f"{row['name']:16s} {row['vectorised_ms']:14.3f} "
              f'{loop_s} {speed}')
    if check:
        print('agreement: ' + ', '.join(f'{k}={v:.2e}'
                                        for k, v in check.items()))
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(result, f, indent=2)
        print(f'written to {args.out}')


if __name__ == '__main__':
    main()
