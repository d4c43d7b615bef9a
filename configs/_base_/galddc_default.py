# GALD-DC defaults shared by every configs/galddc/* config: the model with
# its diffusion head, geometry and losses, the staged loop, one optimiser
# wrapper per part, the separate-DDP wrapper and the generation report.
# A dataset/backbone config inherits this plus a dataset base and sets the
# backbone, neck, head, stage lengths and learning rates.
_base_ = ['./default_runtime.py']

model = dict(
    type='GALDDCClassifier',
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        # Stage 1 and the real-data term of stage 3: CE with label smoothing
        # 0.1, as in the seed.
        loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1,
                  mode='original'),
        topk=(1, 5)),
    diffusion_head=dict(
        type='LatentDiffusionHead',
        # latent_dim / num_classes are taken from the cls head.
        schedule=dict(type='NoiseSchedule', num_timesteps=1000,
                      beta_schedule='linear'),
        denoiser=dict(type='ResMLPDenoiser', hidden_dim=1024, num_blocks=4,
                      time_embed_dim=256, dropout=0.0),
        # Stage-3 pseudo-latents: deterministic 25-step DDIM.
        sampler=dict(type='DDIMSampler', num_steps=25, eta=0.0,
                     guidance_scale=1.0),
        cond_drop_prob=0.0,
        # Stage 2: L_LDM + eta_p L_proto + eta_r L_rad + eta_m L_margin.
        ldm_loss=dict(type='LDMLoss', loss_weight=1.0),
        proto_loss=dict(type='PrototypeLoss', loss_weight=0.1),      # eta_p
        radius_loss=dict(type='CalibratedRadiusLoss',
                         loss_weight=0.01),                          # eta_r
        margin_loss=dict(type='PrototypeMarginLoss', margin=1.0,
                         loss_weight=0.01),                          # eta_m
        # The seed's clamp of the denoised estimate z~0 (losses and
        # sampling); None: no clamp.
        feature_clamp_max=None,
        # Sampling bounds each dimension of the estimate z^0 by the range
        # the standardised training latents take (diffusers' clip_sample,
        # for latents): an under-trained denoiser cannot sample latents
        # hundreds of radii wide. None: unbounded.
        clip_z0='data',
        # The geometry losses and the EMA see this fraction of each batch,
        # the least noisy (1.0: all, as the seed).
        geometry_t_fraction=1.0),
    geometry=dict(
        type='ClassGeometry',
        tau=20,                # head: >= tau training images
        lam=0.5,               # tail: r_cal = lam r_obs + (1 - lam) r_prior
        proto_momentum=0.01,
        radius_momentum=0.01),
    pseudo_loss=dict(type='PseudoLatentCELoss', loss_weight=1.0),     # gamma
    consistency_loss=dict(type='FeatureConsistencyLoss',
                          loss_weight=1.0),                           # beta
    pseudo_batch_size=None,       # None: as many pseudo as real latents
    pseudo_label_dist='inverse',  # 'inverse' | 'tail' | 'uniform'
    # Stage 3 draws each epoch's pseudo-latents at its start, in large
    # batches, from a (seed, epoch, rank) generator; False samples inside
    # every step (the seed's way).
    pseudo_bank=True,
)

# Stages are data: the loop derives the stage from the epoch counter, so
# --resume lands in the right stage. Set the representation epochs to 0 and
# `load_from` a CE checkpoint to skip stage 1.
train_cfg = dict(
    type='GALDDCTrainLoop',
    stages=[
        dict(name='representation', epochs=90),
        dict(name='diffusion', epochs=10, cache_latents=True,
             batch_size=256, repeat=1),
        dict(name='finetune', epochs=10, mode='hybrid',
             lr_mult=dict(encoder=0.01, head=0.1)),
    ],
    val_interval=1,
    test_after_train=True)
val_cfg = dict()
test_cfg = dict()

# One optimiser wrapper per part; each stage steps only its own parts.
# `--amp` switches every part to AmpOptimWrapper.
optim_wrapper = dict(
    constructor='GALDDCOptimWrapperConstructor',
    encoder=dict(
        optimizer=dict(type='SGD', lr=0.1, momentum=0.9, nesterov=True,
                       weight_decay=5e-4)),
    head=dict(
        optimizer=dict(type='SGD', lr=0.1, momentum=0.9, nesterov=True,
                       weight_decay=5e-4)),
    diffusion=dict(
        optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.0)))

# Each part's schedule covers the stages it trains in. `stage=` makes
# begin/end/milestones count from that stage's first epoch (end defaults to
# the stage's length), so schedules follow when a stage is resized or
# skipped; without `stage=` epochs are global, as usual in mmengine.
param_scheduler = dict(
    encoder=[
        dict(type='CosineAnnealingLR', stage='representation'),
        dict(type='CosineAnnealingLR', stage='finetune'),
    ],
    head=[
        dict(type='CosineAnnealingLR', stage='representation'),
        dict(type='CosineAnnealingLR', stage='finetune'),
    ],
    diffusion=[
        dict(type='CosineAnnealingLR', stage='diffusion', eta_min=1e-5),
    ])

# Separate DDP per part: survives parts being frozen between stages.
model_wrapper_cfg = dict(_delete_=True, type='GALDDCDistributedDataParallel')

# In default_hooks (merged by key) rather than custom_hooks (a list that
# child configs replace): the method needs them whatever else is added.
default_hooks = dict(
    # Before any epoch: config against model and data (classes, tau,
    # latent dimension, optimiser parts).
    galddc_check=dict(type='GALDDCCheckHook'),
    # The class statistics: fitted on the latent cache when stage 2
    # starts, EMA after every stage-2 iteration, logged every stage-2 epoch.
    class_geometry=dict(type='ClassGeometryHook'),
)

custom_hooks = [
    # End of stage 2: what the diffusion head generates, per class and band,
    # and the gate before stage 3 (gate='warn' logs instead of stopping).
    dict(type='GenerationReportHook', num_per_class=50, gate='error'),
    # End of training: geometry, normaliser and E^(0) identical on all ranks.
    dict(type='RankConsistencyHook'),
]
