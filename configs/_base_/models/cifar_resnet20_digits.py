# Copyright (c) galddc_mm contributors. All rights reserved.
# A small CIFAR-style ResNet-20 for the 8x8 DigitsLT smoke-test data set
# (stages at 8x8 / 4x4 / 2x2, 64-d feature, 10 classes); fast on a CPU.
model = dict(
    type='ImageClassifier',
    backbone=dict(type='CifarResNet', depth=20),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=10,
        in_channels=64,
        loss=dict(type='CrossEntropyLoss', loss_weight=1.0),
        topk=(1, 5),
    ))
