# Copyright (c) galddc_mm contributors. All rights reserved.
# Cross-entropy baseline on ImageNet-LT: ResNet-50 from scratch, 90 epochs
# of SGD with cosine decay, total batch 256 (8 GPUs x 32 images).
#   bash tools/dist_train.sh configs/baselines/ce_r50_imagenetlt.py 8
# Its checkpoint can serve as GALD-DC's stage 1 (`load_from`).
_base_ = [
    '../_base_/models/resnet50.py',
    '../_base_/datasets/imagenet_lt.py',
    '../_base_/schedules/imagenet_lt_sgd_90e.py',
    '../_base_/default_runtime.py',
]

# 8 GPUs x 32 = 256, the batch the learning rate is set for; with another
# number of GPUs add --auto-scale-lr.
train_dataloader = dict(batch_size=32)
