# Backbone swap by config only: ResNeXt-50 (32x4d) instead of ResNet-50 for
# GALD-DC on ImageNet-LT. The latent stays 2048-d, so nothing else changes.
_base_ = ['../r50_imagenetlt.py']
model = dict(
    backbone=dict(
        _delete_=True,
        type='ResNeXt', depth=50, groups=32, width_per_group=4,
        num_stages=4, out_indices=(3, ), style='pytorch'))
