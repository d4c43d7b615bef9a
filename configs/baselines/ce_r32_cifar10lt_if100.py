# Copyright (c) galddc_mm contributors. All rights reserved.
# Cross-entropy baseline on CIFAR-10-LT, imbalance factor 100: ResNet-32,
# 200 epochs, batch 128 on one GPU (the CE row of LDAM-DRW, Cao et al.,
# NeurIPS 2019).
#   python tools/train.py configs/baselines/ce_r32_cifar10lt_if100.py
_base_ = [
    '../_base_/models/cifar_resnet32.py',
    '../_base_/datasets/cifar10_lt.py',
    '../_base_/schedules/cifar_lt_sgd_200e.py',
    '../_base_/default_runtime.py',
]
