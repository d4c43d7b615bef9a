# Copyright (c) galddc_mm contributors. All rights reserved.
# Cross-entropy baseline on CIFAR-100-LT, imbalance factor 100: ResNet-32,
# 200 epochs, batch 128 on one GPU (the CE row of LDAM-DRW, Cao et al.,
# NeurIPS 2019).
#   python tools/train.py configs/baselines/ce_r32_cifar100lt_if100.py
_base_ = [
    '../_base_/models/cifar_resnet32.py',
    '../_base_/datasets/cifar100_lt.py',
    '../_base_/schedules/cifar_lt_sgd_200e.py',
    '../_base_/default_runtime.py',
]

model = dict(head=dict(num_classes=100))
