# Copyright (c) galddc_mm contributors. All rights reserved.
# iNaturalist 2018: 8,142 classes, 437,513 training images (2-1,000 per
# class), 24,426 validation images (3 per class). Lists
# iNaturalist18_{train,val}.txt and the images under data/inat2018 (see
# docs/data_preparation.md).
# iNat2018 has no separate test set: the literature reports results on the
# validation list, so split='test' reads iNaturalist18_val.txt too, and
# checkpoint selection (val_dataloader) uses the same images.
# Pipelines, loaders and evaluators are ImageNet-LT's.
_base_ = ['./imagenet_lt.py']

dataset_type = 'INat2018'
data_root = 'data/inat2018'
data_preprocessor = dict(num_classes=8142)

train_dataloader = dict(dataset=dict(type=dataset_type, data_root=data_root))
val_dataloader = dict(dataset=dict(type=dataset_type, data_root=data_root))
test_dataloader = dict(dataset=dict(type=dataset_type, data_root=data_root))
