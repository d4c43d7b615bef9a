# Copyright (c) galddc_mm contributors. All rights reserved.
# DigitsLT smoke-test schedule: 60 short epochs (6 iterations each at batch
# 64) of SGD with a cosine schedule; well under a minute on one CPU core.
optim_wrapper = dict(
    optimizer=dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=5e-4))

param_scheduler = dict(
    type='CosineAnnealingLR',
    T_max=60,
    eta_min=0.,
    by_epoch=True,
    begin=0,
    end=60,
    # Decay every iteration rather than in epoch-sized steps.
    convert_to_iter_based=True)

train_cfg = dict(by_epoch=True, max_epochs=60, val_interval=5)
val_cfg = dict()
test_cfg = dict()

auto_scale_lr = dict(base_batch_size=64)
