# Copyright (c) galddc_mm contributors. All rights reserved.
# CIFAR-100-LT of LDAM-DRW (Cao et al., NeurIPS 2019): the official CIFAR-100
# python files under data/cifar/cifar-100-python (no download; see
# docs/data_preparation.md), subsampled with n_i = int(500 * (1/IF)^(i/99))
# and np.random.seed(0). IF 100 / 50 / 10 -> 10,847 / 12,608 / 19,573
# training images.
# val: up to 20 images per class drawn from the training images the
# subsample left out (class 0 has none), for checkpoint selection;
# test: the official, balanced test file.
#
# `imbalance_factor` must be the same for all three splits (val/test report
# the *training* class counts the metric needs). To change it, in a child
# config:
#   imbalance_factor = 50
#   train_dataloader = dict(dataset=dict(imbalance_factor=imbalance_factor))
#   val_dataloader = dict(dataset=dict(imbalance_factor=imbalance_factor))
#   test_dataloader = dict(dataset=dict(imbalance_factor=imbalance_factor))
# or with --cfg-options {train,val,test}_dataloader.dataset.imbalance_factor=50
# Everything but the data set type, class count and normalisation is
# CIFAR-10-LT's.
_base_ = ['./cifar10_lt.py']

dataset_type = 'CIFAR100LT'
data_preprocessor = dict(
    num_classes=100,
    mean=[129.304, 124.070, 112.434],
    std=[68.170, 65.392, 70.418])

train_dataloader = dict(dataset=dict(type=dataset_type))
val_dataloader = dict(dataset=dict(type=dataset_type))
test_dataloader = dict(dataset=dict(type=dataset_type))
