# Copyright (c) galddc_mm contributors. All rights reserved.
# ImageNet-LT (Liu et al., OLTR, CVPR 2019): 1,000 classes, 115,846 training
# images (5-1,280 per class); val 20 and test 50 images per class. Lists
# ImageNet_LT_{train,val,test}.txt and the ImageNet images under
# data/imagenet (see docs/data_preparation.md). Both layouts of the ImageNet
# validation images (val/<wnid>/x.JPEG and flat val/x.JPEG) are accepted.
# Checkpoints are selected on the val split, results reported on test.
dataset_type = 'ImageNetLT'
data_root = 'data/imagenet'
data_preprocessor = dict(
    num_classes=1000,
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
