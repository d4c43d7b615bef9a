# Copyright (c) galddc_mm contributors. All rights reserved.
# gaussian_lt_ldmlr.py at imbalance factor 100: train counts 200 -> 2.
_base_ = ['./gaussian_lt_ldmlr.py']
_if100 = dict(dataset=dict(imbalance_factor=100))
train_dataloader = _if100
val_dataloader = _if100
test_dataloader = _if100
