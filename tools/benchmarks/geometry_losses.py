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

The set-up and the loop references are shared with the ``geometry``
benchmark of ``tools/benchmark.py`` (``tools/benchmarks/geometry.py``).

Example::

    python tools/benchmarks/geometry_losses.py --device cuda --out bench.json
"""
import argparse
import json
import os.path as osp
import sys

import torch

# Run as a script, this file sees its own folder on sys.path; the
# package it belongs to is imported from the folder above (tools/).
sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
from benchmarks import internals  # noqa: E402
from benchmarks.common import machine_info  # noqa: E402
from benchmarks.geometry import (  # noqa: E402
    MARGIN,
    geometry_losses,
    loop_ema,
    loop_losses,
    loop_margin_terms,
    synthetic_geometry,
)
from benchmarks.timing import timeit  # noqa: E402


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


def main():
    args = parse_args()
    device = torch.device(args.device)
    B, K, D = args.batch_size, args.num_classes, args.dim
    gen = torch.Generator().manual_seed(0)
    margin = MARGIN

    geom = synthetic_geometry(K, D, gen, device)
    losses = geometry_losses(device, margin)
    labels = torch.randint(0, K, (B, ), generator=gen).to(device)
    # Latents on the segment from their prototype towards another class's
    # (alpha up to 0.6) plus a little noise, so that part of the margin
    # hinges are active and the agreement check covers their gradient.
    protos_cpu = internals.ema_state(geom)[0].cpu()
    others = torch.randint(0, K, (B, ), generator=gen)
    alpha = 0.6 * torch.rand(B, 1, generator=gen)
    z_base = (protos_cpu[labels.cpu()] + alpha *
              (protos_cpu[others] - protos_cpu[labels.cpu()]) +
              0.1 * torch.randn(B, D, generator=gen)).to(device)
    z = z_base.clone().requires_grad_(True)
    z_loop = z_base.clone().requires_grad_(True)

    def loss_forward(z):
        return internals.geometry_loss(losses, geom, z, labels)

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
        protos, r_cal, valid = internals.geometry_tensors(geom)
        total = loop_losses(z_loop, labels, protos, r_cal, valid, margin)
        total.backward()
        return total

    ema_z = z_base.detach()
    state = {k: v.clone() for k, v in geom.state_dict().items()}
    ref_protos, ref_r = (t.clone() for t in internals.ema_state(geom))
    ema_update = internals.ema_update_fn(geom)
    proto_momentum, radius_momentum = internals.ema_momenta(geom)

    def vec_ema():
        ema_update(ema_z, labels)

    def ref_ema():
        loop_ema(ref_protos, ref_r, ema_z, labels, proto_momentum,
                 radius_momentum)

    # Agreement check before timing.
    check = {}
    if not args.skip_loop:
        v, r = vec_losses(), ref_losses()
        with torch.no_grad():
            protos, _, valid = internals.geometry_tensors(geom)
            hinges = loop_margin_terms(z_base, labels, protos, valid,
                                       margin)
            check['margin_active_fraction'] = float(
                (hinges > 0).float().mean())
        check['loss_abs_diff'] = float((v - r).detach().abs())
        check['grad_max_abs_diff'] = float((z.grad - z_loop.grad).abs().max())
        vec_ema()
        ref_ema()
        protos, r_obs = internals.ema_state(geom)
        check['ema_proto_max_abs_diff'] = float(
            (protos - ref_protos).abs().max())
        check['ema_radius_max_abs_diff'] = float(
            (r_obs - ref_r).abs().max())
        geom.load_state_dict(state)

    # (group, name, vectorised step, loop reference)
    cases = [('eager', 'losses fwd+bwd', vec_losses, ref_losses),
             ('eager', 'ema_update', vec_ema, ref_ema)]
    if args.compile:
        compiled_ema = torch.compile(ema_update, mode=args.compile_mode)
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
        machine=machine_info(device),
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
