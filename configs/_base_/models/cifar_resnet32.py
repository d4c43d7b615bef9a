# Copyright (c) galddc_mm contributors. All rights reserved.
# ResNet-32 for CIFAR-LT, as in LDAM-DRW (Cao et al., NeurIPS 2019): 32x32
# inputs, 16/32/64 channels, option-A (zero-padding) shortcuts, a linear
# head on the 64-d pooled feature. num_classes is 10; CIFAR-100-LT configs
# set 100.
model = dict(
    type='ImageClassifier',
    backbone=dict(type='CifarResNet', depth=32, shortcut='A'),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=10,
        in_channels=64,
        loss=dict(type='CrossEntropyLoss', loss_weight=1.0),
        topk=(1, 5),
    ))
