# Copyright (c) galddc_mm contributors. All rights reserved.
# CIFAR-10-LT of LDAM-DRW (Cao et al., NeurIPS 2019): the official CIFAR-10
# python files under data/cifar/cifar-10-batches-py (no download; see
# docs/data_preparation.md), subsampled with n_i = int(5000 * (1/IF)^(i/9))
# and np.random.seed(0). IF 100 / 50 / 10 -> 12,406 / 13,996 / 20,431
# training images.
# val: up to 100 images per class drawn from the training images the
# subsample left out (class 0 has none), for checkpoint selection;
# test: the official, balanced test batch.
#
# `imbalance_factor` must be the same for all three splits (val/test report
# the *training* class counts the metric needs). To change it, in a child
# config:
#   imbalance_factor = 50
#   train_dataloader = dict(dataset=dict(imbalance_factor=imbalance_factor))
#   val_dataloader = dict(dataset=dict(imbalance_factor=imbalance_factor))
#   test_dataloader = dict(dataset=dict(imbalance_factor=imbalance_factor))
# or with --cfg-options {train,val,test}_dataloader.dataset.imbalance_factor=50
dataset_type = 'CIFAR10LT'
data_root = 'data/cifar'
imbalance_factor = 100
data_preprocessor = dict(
    num_classes=10,
    # RGB format normalization parameters
    mean=[125.307, 122.961, 113.8575],
    std=[51.5865, 50.847, 51.255],
    # loaded images are already RGB format
    to_rgb=False)

train_pipeline = [
    dict(type='RandomCrop', crop_size=32, padding=4),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]

test_pipeline = [
    dict(type='PackInputs'),
]

train_dataloader = dict(
    batch_size=128,
    num_workers=4,
    persistent_workers=True,
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        split='train',
        imbalance_factor=imbalance_factor,
        pipeline=train_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=True),
)

val_dataloader = dict(
    batch_size=256,
    num_workers=4,
    persistent_workers=True,
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        split='val',
        imbalance_factor=imbalance_factor,
        pipeline=test_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=False),
)
val_evaluator = dict(
    type='LongTailAccuracy',
    topk=(1, 5),
    per_class_file='val_per_class_accuracy')

test_dataloader = dict(
    batch_size=256,
    num_workers=4,
    persistent_workers=True,
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        split='test',
        imbalance_factor=imbalance_factor,
        pipeline=test_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=False),
)
test_evaluator = dict(
    type='LongTailAccuracy',
    topk=(1, 5),
    per_class_file='test_per_class_accuracy')
