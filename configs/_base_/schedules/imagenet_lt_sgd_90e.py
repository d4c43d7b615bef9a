# Copyright (c) galddc_mm contributors. All rights reserved.
# ImageNet-LT, 90 epochs of SGD with a cosine schedule: the instance-balanced
# (plain CE) recipe of Kang et al., "Decoupling Representation and
# Classifier for Long-Tailed Recognition" (ICLR 2020): lr 0.2 for batch 512,
# momentum 0.9, weight decay 5e-4. Here lr 0.1 for the total batch 256
# (8 GPUs x 32); `--auto-scale-lr` rescales it for another total batch.
optim_wrapper = dict(
    optimizer=dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=5e-4))

param_scheduler = dict(
    type='CosineAnnealingLR',
    T_max=90,
    eta_min=0.,
    by_epoch=True,
    begin=0,
    end=90,
    # Decay every iteration rather than in epoch-sized steps.
    convert_to_iter_based=True)

train_cfg = dict(by_epoch=True, max_epochs=90, val_interval=1)
val_cfg = dict()
test_cfg = dict()

auto_scale_lr = dict(base_batch_size=256)
