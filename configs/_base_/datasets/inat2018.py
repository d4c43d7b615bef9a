# Copyright (c) galddc_mm contributors. All rights reserved.
# iNaturalist 2018: 8,142 classes, 437,513 training images (2-1,000 per
# class), 24,426 validation images (3 per class). Lists
# iNaturalist18_{train,val}.txt and the images under data/inat2018 (see
# docs/data_preparation.md).
# iNat2018 has no separate test set: the literature reports results on the
# validation list, so split='test' reads iNaturalist18_val.txt too, and
# checkpoint selection (val_dataloader) uses the same images.
dataset_type = 'INat2018'
data_root = 'data/inat2018'
data_preprocessor = dict(
    num_classes=8142,
    # RGB format normalization parameters
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    # convert image from BGR to RGB
    to_rgb=True,
)

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=224),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]

test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=256, edge='short'),
    dict(type='CenterCrop', crop_size=224),
    dict(type='PackInputs'),
]

# Per-GPU batch size: 8 GPUs x 64 = 512.
train_dataloader = dict(
    batch_size=64,
    num_workers=8,
    persistent_workers=True,
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        split='train',
        pipeline=train_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=True),
)

val_dataloader = dict(
    batch_size=64,
    num_workers=8,
    persistent_workers=True,
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        split='val',
        pipeline=test_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=False),
)
val_evaluator = dict(
    type='LongTailAccuracy',
    topk=(1, 5),
    per_class_file='val_per_class_accuracy')

test_dataloader = dict(
    batch_size=64,
    num_workers=8,
    persistent_workers=True,
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        split='test',
        pipeline=test_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=False),
)
test_evaluator = dict(
    type='LongTailAccuracy',
    topk=(1, 5),
    per_class_file='test_per_class_accuracy')
