# Copyright (c) galddc_mm contributors. All rights reserved.
# Cross-entropy baseline on DigitsLT (8x8 digits, imbalance factor 20): a
# ResNet-20 trained for 60 epochs, about 15 s on one CPU core (val top-1
# ~92%, few-shot ~80%). The smoke test of the whole toolchain (train,
# resume, test, torchrun on CPU).
#   python tools/train.py configs/baselines/ce_digits_lt.py
_base_ = [
    '../_base_/models/cifar_resnet20_digits.py',
    '../_base_/datasets/digits_lt.py',
    '../_base_/schedules/digits_lt_short.py',
    '../_base_/default_runtime.py',
]

# 6 iterations per epoch: log once per epoch rather than every 100
# iterations, and save a checkpoint at each validation (the last epoch is
# always saved).
default_hooks = dict(
    logger=dict(interval=5), checkpoint=dict(interval=5))

# The loaders run in the main process (num_workers=0); torch refuses
# persistent workers then, and MMPretrain's own tools/train.py defaults them
# to True, so say it here for that tool too.
train_dataloader = dict(persistent_workers=False)
val_dataloader = dict(persistent_workers=False)
test_dataloader = dict(persistent_workers=False)

# Head/tail accuracy with the same tau as the GALD-DC Digits-LT configs.
val_evaluator = dict(tau=20)
test_evaluator = dict(tau=20)
