# Copyright (c) galddc_mm contributors. All rights reserved.
"""The generation report between stage 2 and stage 3, timed.

``GenerationReportHook.compute`` as the recipe's hook runs it after the
last stage-2 epoch: sample ``num_per_class`` latents of every class with
the recipe's DDIM sampler, classify them, and measure radii, Fréchet
distance, precision/recall and memorisation against the real latents.
Compare with ``imagenet_lt_epoch_s`` of ``stage2_cached*`` in the same run.
"""
import time

from mmpretrain.registry import HOOKS


def bench_generation_report(ctx, repeats=3):
    """Seconds of one report (median of ``repeats`` after a warm-up)."""
    ctx.reset()
    model, _ = ctx.build_galddc('diffusion')
    real, real_labels = ctx.real_latents()
    hooks = [
        h for h in ctx.galddc_cfg.get('custom_hooks', [])
        if h['type'] == 'GenerationReportHook'
    ]
    hook = HOOKS.build(
        dict(hooks[0]) if hooks else dict(type='GenerationReportHook'))
    model.eval()
    hook.compute(model, real, real_labels)  # warm-up (kernels, caches)
    times = []
    for _ in range(repeats):
        ctx.sync()
        start = time.perf_counter()
        hook.compute(model, real, real_labels)
        ctx.sync()
        times.append(time.perf_counter() - start)
    times.sort()
    ctx.record(
        'generation_report',
        ms=times[len(times) // 2] * 1e3,
        per_s=hook.num_per_class * ctx.num_classes / times[len(times) // 2],
        unit='generated latents/s',
        num_classes=ctx.num_classes,
        latent_dim=ctx.latent_dim,
        num_per_class=hook.num_per_class,
        num_real=int(real.size(0)),
        peak_mem_mib=ctx.peak_mib())
