# GALD-DC, ResNet-50, ImageNet-LT: the full 3-stage recipe for 8 GPUs.
#   bash tools/dist_train.sh configs/galddc/r50_imagenetlt.py 8
# Skip stage 1 with a CE checkpoint (e.g. from ce_r50_imagenetlt.py):
#   bash tools/dist_train.sh configs/galddc/r50_imagenetlt.py 8 \
#     --cfg-options load_from=work_dirs/ce_r50_imagenetlt/epoch_90.pth \
#     "train_cfg.stages.0.epochs=0"
_base_ = [
    '../_base_/datasets/imagenet_lt.py',
    '../_base_/galddc_recipes/imagenet_lt_r50.py',
]
model = dict(head=dict(num_classes=1000))
# Head/tail accuracy with the geometry's tau.
val_evaluator = dict(tau=20)
test_evaluator = dict(tau=20)
