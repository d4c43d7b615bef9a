# Copyright (c) galddc_mm contributors. All rights reserved.
# CIFAR-LT, 200 epochs of SGD: the recipe of LDAM-DRW (Cao et al., NeurIPS
# 2019) without its deferred re-weighting, i.e. the CE baseline of that
# paper. Batch 128 on one GPU, lr 0.1, momentum 0.9, weight decay 2e-4;
# linear warm-up over the first 5 epochs (lr x 1/5, 2/5, ... as in their
# code), then lr x 0.01 after epoch 160 and x 0.0001 after epoch 180.
optim_wrapper = dict(
    optimizer=dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=2e-4))

param_scheduler = [
    dict(type='LinearLR', start_factor=0.2, by_epoch=True, begin=0, end=5),
    dict(
        type='MultiStepLR', by_epoch=True, milestones=[160, 180],
        gamma=0.01),
]

train_cfg = dict(by_epoch=True, max_epochs=200, val_interval=1)
val_cfg = dict()
test_cfg = dict()

auto_scale_lr = dict(base_batch_size=128)
