# Copyright (c) galddc_mm contributors. All rights reserved.
# ResNet-50 for ImageNet-LT: mmpretrain's ResNet-50 classifier (1000-way
# linear head, cross-entropy, top-1/top-5).
_base_ = 'mmpretrain::_base_/models/resnet50.py'

model = dict(head=dict(num_classes=1000, in_channels=2048, topk=(1, 5)))
