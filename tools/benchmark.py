# Copyright (c) galddc_mm contributors. All rights reserved.
"""GPU benchmark of GALD-DC training against plain MMPretrain training.

Times, in one process and on one device (or under ``torchrun`` with DDP):

* training iterations (forward, backward, optimiser step), as the median of
  ``--iters`` timed iterations after ``--warmup`` ones, each closed by
  ``torch.cuda.synchronize()``, with images/s and the peak GPU memory:

  - ``baseline``: plain mmpretrain ``ImageClassifier`` built from
    ``configs/baselines/ce_r50_imagenetlt.py``, a plain
    ``OptimWrapper``/``AmpOptimWrapper`` and ``model.train_step``;
  - GALD-DC (``configs/galddc/r50_imagenetlt.py``) through
    ``GALDDCClassifier.train_step`` and the ``OptimWrapperDict`` its
    constructor builds: ``stage1``, ``stage2_cached`` (cached latents),
    ``stage2_images`` (latents extracted on the fly), ``stage3_stable_cached``,
    ``stage3_stable_images``, ``stage3_hybrid``, and the ``*_graph``
    variants of stage 3 (pseudo-latent sampling as one CUDA graph,
    ``pseudo_sampling=dict(cuda_graph=True)``);
  - variants: ``baseline_ls`` (the baseline with the recipe's head loss,
    mmpretrain's ``LabelSmoothLoss``), ``*_sf`` (the sync-free
    ``LabelSmoothCELoss`` instead), ``stage2_cached_fused`` (fused AdamW),
    ``*_e0compiled`` / ``*_compiled`` (E^(0) folded and compiled, and
    for stage 3 the bank's denoiser compiled: ``fold_frozen_bn``,
    ``compile_frozen_encoder``, ``pseudo_sampling.compile_denoiser``);

* ``layout``: the baseline in fp32/NCHW, AMP/NCHW and AMP/channels-last;
* ``preprocess``: the data preprocessor on pageable vs pinned batches;
* ``frozen_encoder``: the frozen E^(0) forward under ``no_grad`` vs
  ``inference_mode``, folded, compiled, and both (the recipe's way);
* ``sampler``: DDIM with 10/25/50 steps vs the 1000-step ancestral (DDPM)
  sampler LDMLR runs, for 64- and 2048-d latents;
* ``geometry``: the stage-2 geometry losses + EMA (B=256, K=1000, D=2048)
  vectorised vs the per-sample loop of ``tools/benchmarks/geometry.py``
  (also timed alone by ``tools/benchmarks/geometry_losses.py``), eager and
  captured as a CUDA graph.

With ``--compile``, ``stage2_cached_compiled`` and ``geometry_compiled``
add ``torch.compile`` variants. Every training benchmark also counts the
host-device synchronisations of one step (``torch.cuda.set_sync_debug_mode``)
and where they come from. ``--profile`` prints torch.profiler's top ops.

The data are synthetic in-memory tensors shaped like ImageNet-LT (224 px,
1000 classes, long-tailed labels), or batches of a real data set read
through its dataset class and a DataLoader (``--dataset ImageNetLT
--data-root data/imagenet``; ``--dataset SyntheticLT`` needs no root).

The benchmarks themselves live in ``tools/benchmarks/``, one subject a
module (see its ``__init__.py``); this script parses the command line,
runs them and writes the report.

Examples::

    # one GPU, ResNet-50, batch 256, bf16, channels-last
    python tools/benchmark.py --amp bf16 --channels-last --out bench.json
    # 2 GPUs, DDP, scaling against the 1-GPU run above
    torchrun --nproc_per_node 2 tools/benchmark.py --launcher pytorch \\
        --amp bf16 --channels-last --scaling-ref bench.json --out dist.json
    # CPU smoke test
    python tools/benchmark.py --tiny --device cpu --iters 2 --warmup 1
"""
import argparse
import json
import os
import os.path as osp
import platform
import shlex
import sys

import torch
import torch.distributed as torch_dist
from mmengine.logging import MMLogger
from mmengine.registry import init_default_scope

import galddc_mm  # noqa: F401  (registers the modules)
from galddc_mm.engine.runner import init_process_group, shutdown_process_group

TOOLS = osp.dirname(osp.abspath(__file__))
ROOT = osp.dirname(TOOLS)
# The benchmarks are the package tools/benchmarks: import it from tools/,
# which is on the path when this file runs as a script but not when it is
# loaded as a module (tests/test_tools/test_benchmark.py).
if TOOLS not in sys.path:
    sys.path.insert(0, TOOLS)
from benchmarks import (  # noqa: E402
    COMPILE_BENCHES,
    DIST_DEFAULT,
    KNOWN,
    BenchmarkContext,
    ancestral_coefficients,
    ancestral_sample,
    compute_targets,
    machine_info,
    print_table,
    run,
    scaling_from,
)

# The names this script has always offered to its importers.
__all__ = [
    'parse_args', 'main', 'compute_targets', 'ancestral_sample',
    'ancestral_coefficients'
]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Benchmark GALD-DC training against plain MMPretrain.')
    parser.add_argument(
        '--device',
        choices=['cuda', 'cpu'],
        default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument(
        '--batch-size',
        type=int,
        help='images (or latents) per GPU and iteration; default 256, 8 '
        'with --tiny')
    parser.add_argument(
        '--amp',
        choices=['none', 'bf16', 'fp16'],
        help='mixed precision of every training step; default bf16 on CUDA, '
        'none on CPU')
    parser.add_argument(
        '--loss-scale',
        choices=['dynamic', 'none'],
        help="AmpOptimWrapper loss scaling; default 'none' for bf16 (not "
        "needed), 'dynamic' for fp16")
    parser.add_argument(
        '--channels-last',
        action='store_true',
        help='models and images in channels-last memory format')
    parser.add_argument(
        '--cudnn-benchmark',
        action='store_true',
        help='torch.backends.cudnn.benchmark = True')
    parser.add_argument('--iters', type=int, default=30)
    parser.add_argument('--warmup', type=int, default=10)
    parser.add_argument(
        '--only',
        help='comma-separated benchmarks to run; default all (under '
        f'--launcher pytorch: {",".join(DIST_DEFAULT)}). Known: ' +
        ', '.join(KNOWN))
    parser.add_argument(
        '--tiny',
        action='store_true',
        help='tiny sizes (CifarResNet-20, 32 px, 10 classes) for a smoke '
        'test')
    parser.add_argument(
        '--dataset',
        help='read batches through this dataset class and a DataLoader '
        '(e.g. ImageNetLT with --data-root, or SyntheticLT) instead of '
        'in-memory tensors')
    parser.add_argument('--data-root', help='data root of --dataset')
    parser.add_argument('--num-workers', type=int, default=8)
    parser.add_argument(
        '--sampler-batch',
        type=int,
        help='latents per sampler call; default 256, 16 with --tiny')
    parser.add_argument(
        '--compile',
        action='store_true',
        help='also run the torch.compile variants (' +
        ', '.join(COMPILE_BENCHES) + ')')
    parser.add_argument(
        '--compile-mode',
        default='default',
        help='torch.compile mode of the stage-2 variant (the geometry '
        "variant uses 'reduce-overhead'); 'max-autotune*' modes spend "
        'minutes autotuning every GEMM shape')
    parser.add_argument(
        '--profile',
        help='comma-separated training benchmarks to profile '
        '(torch.profiler top ops, kernel launches per step)')
    parser.add_argument(
        '--no-sync-check',
        action='store_true',
        help='skip counting host-device syncs of one step')
    parser.add_argument(
        '--launcher',
        choices=['none', 'pytorch'],
        default='none',
        help="'pytorch' under torchrun: DDP over the started processes")
    parser.add_argument(
        '--scaling-ref',
        help='JSON of a 1-process run; with --launcher pytorch, report the '
        'throughput scaling of the common benchmarks')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--out', help='write the results as JSON here')
    return parser.parse_args(argv)


def init_distributed(args):
    if args.launcher != 'pytorch':
        return
    backend = 'nccl' if args.device == 'cuda' else 'gloo'
    if args.device == 'cuda':
        torch.cuda.set_device(int(os.environ.get('LOCAL_RANK', 0)))
    # galddc_mm's start: the group is ended at exit with its worker threads
    # joined (galddc_mm/engine/runner/process_group.py).
    init_process_group('pytorch', backend=backend)


def command_line(argv, world_size):
    args = ' '.join(shlex.quote(a) for a in argv)
    script = osp.relpath(osp.abspath(__file__), ROOT)
    if world_size > 1:
        return (f'torchrun --nproc_per_node {world_size} {script} {args}')
    return f'python {script} {args}'


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    init_distributed(args)
    init_default_scope('mmpretrain')
    # Quiet mmengine's per-parameter init reports of every model built.
    if not MMLogger.check_instance_created('galddc_benchmark'):
        MMLogger.get_instance('galddc_benchmark', log_level='WARNING')
    torch.manual_seed(args.seed)
    if args.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    ctx = BenchmarkContext(args)
    if ctx.rank == 0:
        print(f'machine: {machine_info(ctx.device)}, torch '
              f'{torch.__version__}, world size {ctx.world_size}')
        print('command: ' + command_line(argv, ctx.world_size), flush=True)
    results = run(ctx)
    scaling = None
    if args.scaling_ref and ctx.distributed:
        scaling = scaling_from(args.scaling_ref, results, ctx.world_size)
    import mmengine
    import mmpretrain
    result = dict(
        meta=dict(
            machine=machine_info(ctx.device),
            device=ctx.device.type,
            world_size=ctx.world_size,
            torch=torch.__version__,
            cuda=torch.version.cuda,
            mmpretrain=mmpretrain.__version__,
            mmengine=mmengine.__version__,
            python=platform.python_version(),
            command=command_line(argv, ctx.world_size),
            batch_size=ctx.batch_size,
            sampler_batch=ctx.sampler_batch,
            img_size=ctx.img_size,
            num_classes=ctx.num_classes,
            latent_dim=ctx.latent_dim,
            amp=ctx.amp,
            loss_scale=ctx.loss_scale,
            channels_last=ctx.channels_last,
            cudnn_benchmark=bool(args.cudnn_benchmark),
            iters=args.iters,
            warmup=args.warmup,
            tiny=bool(args.tiny),
            data=args.dataset or 'synthetic in-memory tensors'),
        results=results,
        targets=compute_targets(results, scaling, ctx.profiles),
        scaling=scaling,
        profiles=ctx.profiles)
    if ctx.rank == 0:
        print_table(result)
        if args.out:
            os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
            with open(args.out, 'w') as f:
                json.dump(result, f, indent=2)
            print(f'written to {args.out}')
    if ctx.distributed:
        torch_dist.barrier()
        # Free the benchmark's DDP models, then the group and its threads.
        del ctx
        shutdown_process_group()
    return result


if __name__ == '__main__':
    main()
