# GALD-DC recipe for ResNet-50 on ImageNet-scale long-tailed sets, sized for
# 8 GPUs x 64 images (total batch 512), without the data set:
# configs/galddc/r50_imagenetlt.py and r50_placeslt.py add it.
# - stage 1 (90 epochs): the instance-balanced CE recipe of Kang et al.
#   (ICLR 2020): SGD lr 0.2 for batch 512, cosine, weight decay 5e-4,
#   label smoothing 0.1 (as in the seed);
# - stage 2 (20 epochs x 10 passes over the cached 2048-d latents);
# - stage 3 (10 epochs, hybrid): E at 0.01x and G at 0.1x the base lr.
_base_ = ['../galddc_default.py']

model = dict(
    # GPU recipe: channels-last weights and batches (cuDNN's fast kernels).
    # fold_frozen_bn, compile_frozen_encoder and
    # pseudo_sampling.compile_denoiser stay off: 9-19% faster hybrid epochs,
    # but ~26 s of compiling per rank, more than they save in 10 hybrid
    # epochs on 8 GPUs (docs/benchmarks.md, "Round 5").
    channels_last=True,
    backbone=dict(
        type='ResNet', depth=50, num_stages=4, out_indices=(3, ),
        style='pytorch'),
    # mmpretrain's LabelSmoothLoss syncs with the host (.item()) every step;
    # LabelSmoothCELoss computes the same loss without (docs/benchmarks.md).
    head=dict(
        loss=dict(_delete_=True, type='LabelSmoothCELoss',
                  label_smooth_val=0.1),
        in_channels=2048),
    diffusion_head=dict(
        denoiser=dict(hidden_dim=2048, num_blocks=4, time_embed_dim=256),
        # Geometry losses and EMA on the less noisy half of each batch.
        geometry_t_fraction=0.5),
    geometry=dict(tau=20, lam=0.5))

train_cfg = dict(
    stages=[
        dict(name='representation', epochs=90),
        dict(name='diffusion', epochs=20, cache_latents=True, batch_size=256,
             repeat=10),
        dict(name='finetune', epochs=10, mode='hybrid',
             lr_mult=dict(encoder=0.01, head=0.1)),
    ],
    val_interval=5)

optim_wrapper = dict(
    encoder=dict(optimizer=dict(lr=0.2, weight_decay=5e-4)),
    head=dict(optimizer=dict(lr=0.2, weight_decay=5e-4)),
    diffusion=dict(optimizer=dict(lr=1e-3)))

# Cosine within stage 1 and within stage 3 for E and G; cosine for theta
# in stage 2 (the defaults of configs/_base_/galddc_default.py).
param_scheduler = dict(
    diffusion=[
        dict(type='CosineAnnealingLR', stage='diffusion', eta_min=1e-5)
    ])

# The lrs above are for a total batch of 512 (8 GPUs x 64);
# `tools/train.py --auto-scale-lr` rescales them for another total batch.
auto_scale_lr = dict(base_batch_size=512)
