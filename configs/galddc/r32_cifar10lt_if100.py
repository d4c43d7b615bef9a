# GALD-DC, ResNet-32, CIFAR-10-LT (imbalance factor 100), one GPU.
#   python tools/train.py configs/galddc/r32_cifar10lt_if100.py
_base_ = [
    '../_base_/datasets/cifar10_lt.py',
    '../_base_/galddc_recipes/cifar_lt_r32.py',
]
model = dict(head=dict(num_classes=10))
# Head/tail accuracy with the geometry's tau.
val_evaluator = dict(tau=20)
test_evaluator = dict(tau=20)
