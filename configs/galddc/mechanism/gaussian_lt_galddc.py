# Copyright (c) galddc_mm contributors. All rights reserved.
# GALD-DC's latent half on the known-answer testbed (GaussianLatentLT):
# stage 1 is skipped (the samples are latents; LatentPassThrough is an
# identity encoder), stage 2 and a stable stage 3 run exactly as on real
# data, so the same code paths are measured. KnownAnswerHook compares what
# stage 2 generates with the true class distributions; the test split (500
# per class) measures G. About 2.5 minutes on one CPU core:
#   python tools/train.py configs/galddc/mechanism/gaussian_lt_galddc.py
# IF 100: gaussian_lt100_galddc.py (see docs/mechanism.md).
_base_ = [
    '../../_base_/datasets/gaussian_latent_lt.py',
    '../../_base_/galddc_default.py',
]

model = dict(
    backbone=dict(type='LatentPassThrough', latent_dim=64),
    neck=dict(type='GlobalAveragePooling', dim=1),
    head=dict(
        num_classes=20,
        in_channels=64,
        loss=dict(_delete_=True, type='CrossEntropyLoss')),
    diffusion_head=dict(
        denoiser=dict(hidden_dim=256, num_blocks=3, time_embed_dim=64),
        geometry_t_fraction=0.5),
    geometry=dict(tau=20, lam=0.5))

train_cfg = dict(
    stages=[
        dict(name='representation', epochs=0),
        # 10 epochs x 50 passes x 8 batches = 4000 denoiser steps.
        dict(name='diffusion', epochs=10, cache_latents=True, batch_size=128,
             repeat=50),
        # G from scratch on real + pseudo latents (E is the identity).
        dict(name='finetune', epochs=10, mode='stable', cache_latents=True,
             batch_size=128, repeat=10),
    ],
    val_interval=10)

optim_wrapper = dict(
    # No encoder parameters: the identity has none.
    encoder=None,
    head=dict(optimizer=dict(lr=0.1, weight_decay=5e-4)),
    diffusion=dict(optimizer=dict(lr=1e-3)))
param_scheduler = dict(
    _delete_=True,
    head=[dict(type='CosineAnnealingLR', stage='finetune')],
    diffusion=[
        dict(type='CosineAnnealingLR', stage='diffusion', eta_min=1e-4)
    ])

custom_hooks = [
    # G is untrained at the end of stage 2 (stage 1 is skipped): no accuracy
    # floor; and a collapsed tail is what the testbed measures, not stops.
    dict(type='GenerationReportHook', num_per_class=50, gate='warn',
         min_gen_acc=0),
    dict(type='KnownAnswerHook', num_per_class=200),
    dict(type='RankConsistencyHook'),
]
default_hooks = dict(
    logger=dict(interval=50), checkpoint=dict(max_keep_ckpts=1))
