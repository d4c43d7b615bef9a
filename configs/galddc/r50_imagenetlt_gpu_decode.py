# GALD-DC, ResNet-50, ImageNet-LT (r50_imagenetlt.py) with the training
# images decoded and augmented on the GPU (nvJPEG), for machines whose CPU
# cannot decode as fast as the GPU trains; see
# configs/_base_/datasets/imagenet_lt_gpu_decode.py.
#   bash tools/dist_train.sh configs/galddc/r50_imagenetlt_gpu_decode.py 8
# Val/test and the stage-2 latent extraction (training set, eval crop)
# decode on the GPU too. Measured on one H200 with 16 cores
# (docs/benchmarks.md, "GPU decoding", rounds 3 and 4): the extraction is
# ~1.6x faster than with cv2, but training steps are slower (decoding and
# the step share the GPU and do not overlap), so prefer
# r50_imagenetlt.py with more loader workers unless the extraction
# dominates.
_base_ = [
    '../_base_/datasets/imagenet_lt_gpu_decode.py',
    '../_base_/galddc_recipes/imagenet_lt_r50.py',
]
model = dict(head=dict(num_classes=1000))
# Head/tail accuracy with the geometry's tau.
val_evaluator = dict(tau=20)
test_evaluator = dict(tau=20)
