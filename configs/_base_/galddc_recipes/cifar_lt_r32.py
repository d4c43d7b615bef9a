# GALD-DC recipe for CIFAR-LT with ResNet-32 (one GPU, batch 128), without
# the data set: configs/galddc/r32_cifar{10,100}lt_if100.py add it.
# Stage 1 is the LDAM-DRW CE recipe (200 epochs, warm-up, steps at 160/180);
# stage 2 trains the denoiser on the cached 64-d latents; stage 3 fine-tunes
# E and G with DDIM pseudo-latents (hybrid).
_base_ = ['../galddc_default.py']

model = dict(
    # GPU recipe: channels-last weights and batches (cuDNN's fast kernels).
    # fold_frozen_bn, compile_frozen_encoder and
    # pseudo_sampling.compile_denoiser stay off, as in the ResNet-50 recipe
    # (their compiling costs more than they save there; docs/benchmarks.md,
    # "Round 5"); not measured with this backbone.
    channels_last=True,
    backbone=dict(type='CifarResNet', depth=32, shortcut='A'),
    # mmpretrain's LabelSmoothLoss syncs with the host (.item()) every step;
    # LabelSmoothCELoss computes the same loss without (docs/benchmarks.md).
    head=dict(
        loss=dict(_delete_=True, type='LabelSmoothCELoss',
                  label_smooth_val=0.1),
        in_channels=64),
    diffusion_head=dict(
        denoiser=dict(hidden_dim=512, num_blocks=4, time_embed_dim=128),
        # Geometry losses and EMA on the less noisy half of each batch.
        geometry_t_fraction=0.5),
    geometry=dict(tau=20, lam=0.5))

train_cfg = dict(
    stages=[
        dict(name='representation', epochs=200),
        dict(name='diffusion', epochs=20, cache_latents=True, batch_size=256,
             repeat=20),
        dict(name='finetune', epochs=20, mode='hybrid',
             lr_mult=dict(encoder=0.01, head=0.1)),
    ],
    val_interval=5)

optim_wrapper = dict(
    encoder=dict(optimizer=dict(lr=0.1, weight_decay=2e-4)),
    head=dict(optimizer=dict(lr=0.1, weight_decay=2e-4)),
    diffusion=dict(optimizer=dict(lr=1e-3)))

# Stage 1: warm-up then x0.01 at epochs 160 and 180 (LDAM-DRW); stage 3:
# cosine. `stage=` counts epochs from the stage's start.
_stage1 = [
    dict(type='LinearLR', start_factor=0.2, stage='representation', end=5),
    dict(type='MultiStepLR', milestones=[160, 180], gamma=0.01,
         stage='representation'),
]
_stage3 = [dict(type='CosineAnnealingLR', stage='finetune')]
param_scheduler = dict(
    encoder=_stage1 + _stage3,
    head=_stage1 + _stage3,
    diffusion=[
        dict(type='CosineAnnealingLR', stage='diffusion', eta_min=1e-5)
    ])
