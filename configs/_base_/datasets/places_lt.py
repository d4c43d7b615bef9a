# Copyright (c) galddc_mm contributors. All rights reserved.
# Places-LT (Liu et al., OLTR, CVPR 2019): 365 classes, 62,500 training
# images (5-4,980 per class); val 20 and test 100 images per class. Lists
# Places_LT_{train,val,test}.txt and the Places-365 images under
# data/places365 (see docs/data_preparation.md).
# Checkpoints are selected on the val split, results reported on test.
# Pipelines, loaders and evaluators are ImageNet-LT's.
_base_ = ['./imagenet_lt.py']

dataset_type = 'PlacesLT'
data_root = 'data/places365'
data_preprocessor = dict(num_classes=365)

train_dataloader = dict(dataset=dict(type=dataset_type, data_root=data_root))
val_dataloader = dict(dataset=dict(type=dataset_type, data_root=data_root))
test_dataloader = dict(dataset=dict(type=dataset_type, data_root=data_root))
