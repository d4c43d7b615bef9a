# Copyright (c) galddc_mm contributors. All rights reserved.
# GALD-DC, ResNet-50, the three stages in one short run on SyntheticLT:
# random 224 px images, 1000 classes, long-tailed labels (10 to 1 images per
# class, 3,900 in all), so no data set is needed. The multi-GPU smoke test
# of docs/benchmarks.md: DDP with NCCL, the latent cache gathered across
# ranks, and RankConsistencyHook checking that the geometry, the latent
# normaliser and the frozen encoder end bit-identical on every rank.
#   bash tools/dist_train.sh \
#     configs/galddc/benchmarks/r50_2xb64_synthetic_lt.py 2 --amp
_base_ = ['../../_base_/galddc_recipes/imagenet_lt_r50.py']

_synthetic = dict(
    type='SyntheticLT',
    num_classes=1000,
    n_max=10,
    imbalance_factor=10,
    min_per_class=1,
    eval_per_class=1,
    img_size=224)

data_preprocessor = dict(
    num_classes=1000,
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    to_rgb=True)

train_pipeline = [
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
test_pipeline = [dict(type='PackInputs')]

train_dataloader = dict(
    batch_size=64,
    num_workers=4,
    persistent_workers=True,
    dataset=dict(**_synthetic, split='train', pipeline=train_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=True))
val_dataloader = dict(
    batch_size=64,
    num_workers=4,
    persistent_workers=True,
    dataset=dict(**_synthetic, split='val', pipeline=test_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=False))
test_dataloader = dict(
    batch_size=64,
    num_workers=4,
    persistent_workers=True,
    dataset=dict(**_synthetic, split='test', pipeline=test_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=False))
# Head/tail split at 5 images: about a third of the classes are head.
val_evaluator = dict(
    type='LongTailAccuracy',
    topk=(1, 5),
    many_thr=8,
    few_thr=3,
    tau=5,
    per_class_file='val_per_class_accuracy')
test_evaluator = dict(
    type='LongTailAccuracy',
    topk=(1, 5),
    many_thr=8,
    few_thr=3,
    tau=5,
    per_class_file='test_per_class_accuracy')

model = dict(head=dict(num_classes=1000), geometry=dict(tau=5))

train_cfg = dict(
    stages=[
        dict(name='representation', epochs=1),
        dict(name='diffusion', epochs=1, cache_latents=True, batch_size=256,
             repeat=4),
        dict(name='finetune', epochs=1, mode='hybrid',
             lr_mult=dict(encoder=0.01, head=0.1)),
    ],
    val_interval=1,
    test_after_train=True)

param_scheduler = dict(
    encoder=[dict(type='ConstantLR', factor=1.0, by_epoch=True)],
    head=[dict(type='ConstantLR', factor=1.0, by_epoch=True)],
    diffusion=[dict(type='ConstantLR', factor=1.0, by_epoch=True)])

# A smoke run: log often, keep one checkpoint (the last), no best-by-val.
default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(interval=3, max_keep_ckpts=1, save_best=None))
