# Copyright (c) galddc_mm contributors. All rights reserved.
"""Training-step benchmarks and the parts of a step timed alone.

* :func:`bench_train`: one full iteration (forward, backward, optimiser
  step) of a configuration of :data:`TRAIN_BENCHES`;
* :func:`bench_layout`: the baseline in fp32/NCHW, AMP/NCHW and
  AMP/channels-last;
* :func:`bench_compiled_stage2`: stage 2 with ``torch.compile``;
* :func:`bench_preprocess`: the data preprocessor on pageable vs pinned
  batches;
* :func:`bench_frozen_encoder`: E^(0) under ``no_grad`` vs
  ``inference_mode``, folded and compiled (``fold_frozen_bn``,
  ``compile_frozen_encoder``).
"""
import math
import time

import torch
from mmpretrain.structures import DataSample

from . import internals
from .common import IMAGENET_LT_TRAIN
from .timing import count_syncs, profile, time_loop

# name: (stage, finetune mode, data kind, pseudo_sampling overrides,
#        variant); stage None is the plain mmpretrain baseline. Variants
# ('+'-joined flags):
# 'ls': the baseline with the GALD-DC recipe's head loss (LabelSmoothLoss);
# 'sf': the head loss replaced by the sync-free LabelSmoothCELoss;
# 'fused': the diffusion part's AdamW with fused=True;
# 'bank': stage 3 takes its pseudo-latents from a bank drawn before the
#         timed steps (model.pseudo_bank, as the recipes train), the bank's
#         time reported per step;
# 'graphstep': model.cuda_graph_step=True (cached-latent stages);
# 'e0compiled': E^(0) folded and compiled (model.fold_frozen_bn,
#               model.compile_frozen_encoder; off in the recipes);
# 'samplercompiled': the bank's denoiser compiled
#                    (model.pseudo_sampling.compile_denoiser).
TRAIN_BENCHES = {
    'baseline': (None, None, 'images', None, None),
    'baseline_ls': (None, None, 'images', None, 'ls'),
    'stage1': ('representation', None, 'images', None, None),
    'stage1_sf': ('representation', None, 'images', None, 'sf'),
    'stage2_cached': ('diffusion', None, 'latents', None, None),
    'stage2_cached_fused': ('diffusion', None, 'latents', None, 'fused'),
    'stage2_cached_fused_graphstep': ('diffusion', None, 'latents', None,
                                      'fused+graphstep'),
    'stage2_images': ('diffusion', None, 'images', None, None),
    'stage3_stable_cached': ('finetune', 'stable', 'latents', None, None),
    'stage3_stable_cached_graph': ('finetune', 'stable', 'latents',
                                   dict(cuda_graph=True), None),
    'stage3_stable_cached_graph_sf': ('finetune', 'stable', 'latents',
                                      dict(cuda_graph=True), 'sf'),
    'stage3_stable_cached_bank_sf': ('finetune', 'stable', 'latents', None,
                                     'sf+bank'),
    'stage3_stable_cached_bank_graphstep_sf': ('finetune', 'stable',
                                               'latents', None,
                                               'sf+bank+graphstep'),
    'stage3_stable_images': ('finetune', 'stable', 'images', None, None),
    'stage3_hybrid': ('finetune', 'hybrid', 'images', None, None),
    'stage3_hybrid_graph': ('finetune', 'hybrid', 'images',
                            dict(cuda_graph=True), None),
    'stage3_hybrid_graph_sf': ('finetune', 'hybrid', 'images',
                               dict(cuda_graph=True), 'sf'),
    'stage3_hybrid_bank_sf': ('finetune', 'hybrid', 'images', None,
                              'sf+bank'),
    'stage2_images_e0compiled': ('diffusion', None, 'images', None,
                                 'e0compiled'),
    'stage3_hybrid_bank_sf_compiled': ('finetune', 'hybrid', 'images', None,
                                       'sf+bank+e0compiled+samplercompiled'),
    'stage3_stable_cached_bank_sf_compiled': ('finetune', 'stable',
                                              'latents', None,
                                              'sf+bank+samplercompiled'),
    'stage3_stable_cached_bank_graphstep_sf_compiled': (
        'finetune', 'stable', 'latents', None,
        'sf+bank+graphstep+samplercompiled'),
}


def bench_train(ctx, name, warmup=None, iters=None, suffix=''):
    """One training configuration of :data:`TRAIN_BENCHES`."""
    stage, mode, kind, sampling, variant = TRAIN_BENCHES[name]
    args = ctx.args
    warmup = args.warmup if warmup is None else warmup
    iters = args.iters if iters is None else iters
    ctx.reset()
    if stage is None:
        model, optim = ctx.build_baseline(variant)
    else:
        model, optim = ctx.build_galddc(stage, mode, sampling, variant)
    profiled = ctx.profiled(name) and not suffix
    extra = 2 + (3 if profiled else 0)
    if kind == 'images':
        get_batch = ctx.image_batches(warmup + iters + extra)
    else:
        get_batch = ctx.latent_batch()
    bank = {}
    if 'bank' in (variant or '').split('+'):
        # What the loop does at an epoch start (under the stage's
        # autocast, as there), for every step timed here. The first fill
        # pays what a run pays once (the 16-bit copy of the denoiser, the
        # compilations of `compile_denoiser`): timed apart.
        num_steps = warmup + iters + extra
        fills = []
        for seed in (1, 0):
            ctx.sync()
            start = time.perf_counter()
            internals.unwrap(model).prepare_pseudo_bank(
                num_steps, ctx.batch_size, seed=seed, optim_wrapper=optim)
            ctx.sync()
            fills.append(time.perf_counter() - start)
        bank_s = fills[-1]
        bank = dict(bank_fill_ms=bank_s * 1e3, bank_steps=num_steps,
                    bank_ms_per_step=bank_s * 1e3 / num_steps,
                    bank_first_fill_ms=fills[0] * 1e3)

    def step(batch):
        internals.train_iteration(model, batch, optim)

    seconds, wait = time_loop(ctx, step, get_batch, warmup, iters)
    syncs, sites = count_syncs(ctx, step, get_batch(warmup + iters))
    if profiled:
        profile(ctx, name, step, lambda i: get_batch(warmup + iters + 1 + i))
    per_s = ctx.world_size * ctx.batch_size / seconds
    row = dict(
        ms=seconds * 1e3,
        per_s=per_s,
        unit='latents/s' if kind == 'latents' else 'images/s',
        peak_mem_mib=ctx.peak_mib(),
        syncs_per_step=syncs,
        sync_sites=sites,
        world_size=ctx.world_size,
        amp=ctx.amp,
        channels_last=ctx.channels_last,
        **bank)
    if args.dataset and kind == 'images':
        row['data_wait_ms'] = wait * 1e3
    if stage in ('diffusion', 'finetune'):
        steps = math.ceil(IMAGENET_LT_TRAIN /
                          (ctx.batch_size * ctx.world_size))
        row['imagenet_lt_epoch_s'] = steps * seconds
    ctx.record(name + suffix, **row)


def bench_layout(ctx):
    """The baseline in fp32/NCHW, AMP/NCHW and AMP/channels-last."""
    saved = ctx.amp, ctx.channels_last
    variants = [('none', False), ('none', True)]
    if ctx.cuda:
        amp = 'bf16' if saved[0] == 'none' else saved[0]
        variants = [('none', False), (amp, False), (amp, True)]
    warmup = max(2, ctx.args.warmup // 2)
    iters = max(2, ctx.args.iters // 2)
    try:
        for amp, last in variants:
            ctx.amp, ctx.channels_last = amp, last
            layout = 'channels_last' if last else 'nchw'
            bench_train(
                ctx, 'baseline', warmup, iters, suffix=f'@{amp}_{layout}')
    finally:
        ctx.amp, ctx.channels_last = saved


def bench_compiled_stage2(ctx):
    """Stage 2 on cached latents: the head's ``loss`` compiled, fused AdamW.
    """
    args = ctx.args
    ctx.reset()
    model, optim = ctx.build_galddc('diffusion', variant='fused')
    internals.compile_diffusion_loss(model, args.compile_mode)
    get_batch = ctx.latent_batch()

    def step(batch):
        internals.train_iteration(model, batch, optim)

    start = time.perf_counter()
    step(get_batch(0))
    ctx.sync()
    compile_s = time.perf_counter() - start
    seconds, _ = time_loop(ctx, step, get_batch, args.warmup, args.iters)
    syncs, sites = count_syncs(ctx, step, get_batch(0))
    ctx.record(
        'stage2_cached_compiled',
        ms=seconds * 1e3,
        per_s=ctx.world_size * ctx.batch_size / seconds,
        unit='latents/s',
        peak_mem_mib=ctx.peak_mib(),
        syncs_per_step=syncs,
        sync_sites=sites,
        compile_s=compile_s,
        compile_mode=args.compile_mode)


def bench_preprocess(ctx):
    """ClsDataPreprocessor on pageable vs pinned (+ non_blocking)."""
    args = ctx.args
    ctx.reset()
    model, _ = ctx.build_baseline()
    dp = model.data_preprocessor
    b, s = ctx.batch_size, ctx.img_size
    pageable = torch.randint(
        0, 256, (b, 3, s, s), dtype=torch.uint8, generator=ctx.gen)
    variants = [('pageable', pageable, False)]
    if ctx.cuda:
        pinned = pageable.pin_memory()
        variants += [('pinned', pinned, False),
                     ('pinned_non_blocking', pinned, True)]
    count = args.warmup + args.iters + 1
    for label, images, non_blocking in variants:
        batches = [
            dict(
                inputs=images,
                data_samples=[
                    DataSample().set_gt_label(int(y)) for y in ctx.labels(b)
                ]) for _ in range(count)
        ]
        internals.set_non_blocking(dp, non_blocking)

        def run(batch):
            dp(batch, True)

        seconds, _ = time_loop(ctx, run, batches.__getitem__, args.warmup,
                               args.iters)
        syncs, sites = count_syncs(ctx, run, batches[-1])
        ctx.record(
            f'preprocess@{label}',
            ms=seconds * 1e3,
            per_s=b / seconds,
            unit='images/s',
            syncs_per_step=syncs,
            sync_sites=sites)
    internals.set_non_blocking(dp, False)


def bench_frozen_encoder(ctx):
    """E^(0)(x) as it is, folded, compiled, and both.

    ``no_grad`` and ``inference_mode`` run the modules as they are;
    ``folded`` folds the BatchNorms (``fold_frozen_bn``), ``compiled``
    runs ``torch.compile`` (``compile_frozen_encoder``), ``folded_compiled``
    both. Folding and compiling happen in the warm-up; the compile time is
    recorded (``compile_s``, the first call).
    """
    ctx.reset()
    model, _ = ctx.build_galddc('finetune', 'hybrid')
    batch = ctx.image_batches(1)(0)
    with torch.no_grad():
        inputs = internals.unwrap(model).data_preprocessor(
            batch, False)['inputs']
    if ctx.channels_last:
        inputs = inputs.contiguous(memory_format=torch.channels_last)

    def no_grad(_):
        with ctx.autocast(), torch.no_grad():
            internals.frozen_encoder_forward(model, inputs)

    def inference_mode(_):
        with ctx.autocast(), torch.inference_mode():
            feats = internals.frozen_encoder_forward(model, inputs)
        return feats

    def runner_fn(fold, compiled):
        runner = internals.frozen_encoder_runner(
            fold, compiled, devices=(ctx.device.type, ))

        def run(_):
            with ctx.autocast():
                internals.run_frozen_encoder(model, runner, inputs)

        return run

    cases = [('no_grad', no_grad), ('inference_mode', inference_mode),
             ('folded', runner_fn(True, False))]
    if ctx.cuda:  # a CPU compiler would take minutes here
        cases += [('compiled', runner_fn(False, True)),
                  ('folded_compiled', runner_fn(True, True))]
    for label, fn in cases:
        start = time.perf_counter()
        fn(None)
        ctx.sync()
        first_s = time.perf_counter() - start
        seconds, _ = time_loop(ctx, fn, lambda i: None, ctx.args.warmup,
                               ctx.args.iters)
        ctx.record(
            f'frozen_encoder@{label}',
            ms=seconds * 1e3,
            per_s=ctx.batch_size / seconds,
            unit='images/s',
            peak_mem_mib=ctx.peak_mib(),
            compile_s=first_s)
