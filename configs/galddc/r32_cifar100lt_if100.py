# GALD-DC, ResNet-32, CIFAR-100-LT (imbalance factor 100), one GPU.
#   python tools/train.py configs/galddc/r32_cifar100lt_if100.py
_base_ = [
    '../_base_/datasets/cifar100_lt.py',
    '../_base_/galddc_recipes/cifar_lt_r32.py',
]
model = dict(head=dict(num_classes=100))
# Head/tail accuracy with the geometry's tau.
val_evaluator = dict(tau=20)
test_evaluator = dict(tau=20)
