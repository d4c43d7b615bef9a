# Copyright (c) galddc_mm contributors. All rights reserved.
# DigitsLT: scikit-learn's 8x8 digits made long-tailed (ships with
# scikit-learn, no download). A CPU-sized set for smoke tests and tutorials.
# Default train split: n = [110, 78, 56, 40, 29, 20, 14, 10, 7, 5] (369
# images; many / medium / few-shot classes all present), val 20 and test 40
# images per class.
#
# `imbalance_factor` must be the same for all three splits (val/test report
# the *training* class counts the metric needs). To change it, in a child
# config:
#   imbalance_factor = 50
#   train_dataloader = dict(dataset=dict(imbalance_factor=imbalance_factor))
#   val_dataloader = dict(dataset=dict(imbalance_factor=imbalance_factor))
#   test_dataloader = dict(dataset=dict(imbalance_factor=imbalance_factor))
# or with --cfg-options {train,val,test}_dataloader.dataset.imbalance_factor=50
dataset_type = 'DigitsLT'
imbalance_factor = 20
data_preprocessor = dict(
    num_classes=10,
    # grey level repeated on 3 channels, scaled 0..16 -> 0..255
    mean=[77.85, 77.85, 77.85],
    std=[95.85, 95.85, 95.85],
    to_rgb=False)

train_pipeline = [
    # light augmentation: digits are not flip-invariant
    dict(type='RandomCrop', crop_size=8, padding=1),
    dict(type='PackInputs'),
]

test_pipeline = [
    dict(type='PackInputs'),
]

train_dataloader = dict(
    batch_size=64,
    num_workers=0,
    # (upstream tools/train.py defaults to persistent workers, which need
    # num_workers > 0)
    persistent_workers=False,
    dataset=dict(
        type=dataset_type,
        split='train',
        imbalance_factor=imbalance_factor,
        pipeline=train_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=True),
)

val_dataloader = dict(
    batch_size=100,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        type=dataset_type,
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
    batch_size=100,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        type=dataset_type,
        split='test',
        imbalance_factor=imbalance_factor,
        pipeline=test_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=False),
)
test_evaluator = dict(
    type='LongTailAccuracy',
    topk=(1, 5),
    per_class_file='test_per_class_accuracy')
