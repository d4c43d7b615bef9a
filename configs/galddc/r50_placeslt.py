# GALD-DC, ResNet-50, Places-LT (365 classes), 8 GPUs. The literature
# starts Places-LT from ImageNet-pretrained weights: give them with
#   --cfg-options model.backbone.init_cfg.type=Pretrained \
#     model.backbone.init_cfg.checkpoint=PATH_TO_RESNET50_WEIGHTS
# (plain state-dict files, e.g. torchvision's, load) and shorten stage 1.
_base_ = [
    '../_base_/datasets/places_lt.py',
    '../_base_/galddc_recipes/imagenet_lt_r50.py',
]
model = dict(head=dict(num_classes=365))
# Head/tail accuracy with the geometry's tau.
val_evaluator = dict(tau=20)
test_evaluator = dict(tau=20)
