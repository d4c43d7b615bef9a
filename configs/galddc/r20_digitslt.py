# GALD-DC on the embedded Digits-LT set (scikit-learn digits, IF 20): the
# README's main command. All three stages run on a 2-core CPU in minutes.
#   python tools/train.py configs/galddc/r20_digitslt.py
_base_ = [
    '../_base_/datasets/digits_lt.py',
    '../_base_/galddc_default.py',
]

model = dict(
    backbone=dict(type='CifarResNet', depth=20, in_channels=3),
    head=dict(num_classes=10, in_channels=64, topk=(1, 5)),
    diffusion_head=dict(
        denoiser=dict(hidden_dim=512, num_blocks=3, time_embed_dim=64),
        # Geometry losses and EMA on the less noisy half of each batch.
        geometry_t_fraction=0.5),
    geometry=dict(tau=20, lam=0.5))

train_cfg = dict(
    stages=[
        dict(name='representation', epochs=60),
        # 10 epochs x 100 passes x 3 batches = 3000 denoiser steps.
        dict(name='diffusion', epochs=10, cache_latents=True, batch_size=128,
             repeat=100),
        dict(name='finetune', epochs=20, mode='hybrid',
             lr_mult=dict(encoder=0.1, head=0.1)),
    ],
    val_interval=10)

optim_wrapper = dict(
    encoder=dict(optimizer=dict(lr=0.05, weight_decay=5e-4)),
    head=dict(optimizer=dict(lr=0.05, weight_decay=5e-4)),
    diffusion=dict(optimizer=dict(lr=1e-3)))

# Cosine schedules per stage (see configs/_base_/galddc_default.py).
param_scheduler = dict(
    diffusion=[
        dict(type='CosineAnnealingLR', stage='diffusion', eta_min=1e-4),
    ])

# Head/tail accuracy with the same tau as the geometry.
val_evaluator = dict(tau=20)
test_evaluator = dict(tau=20)
