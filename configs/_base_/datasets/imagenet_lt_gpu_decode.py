# ImageNet-LT (see imagenet_lt.py) with the training images decoded and
# augmented on the GPU: the workers only read the JPEG files
# (LoadImageBytes + PackImageBytes) and GPUDecodeClsDataPreprocessor
# decodes them with nvJPEG, then draws RandomResizedCrop(224) boxes from
# mmpretrain's distribution and flips with probability 0.5, on the GPU.
# For machines whose CPU cores cannot keep up with the GPU (e.g. 16 cores
# per H200: ~3,900 img/s for cv2 decoding vs ~4,400 img/s for a ResNet-50
# step); tools/benchmarks/decode.py measures both paths.
#
# The val/test pipelines stay on the CPU (cv2, BGR): the preprocessor
# passes decoded images to ClsDataPreprocessor, where to_rgb=True applies
# (decode_jpeg already gives RGB, so to_rgb is ignored for bytes). The
# latent-cache extraction of GALD-DC uses the training set with the val
# pipeline, so it decodes on the CPU too; to decode val/test and the
# extraction on the GPU as well (ResizeEdge 256 + CenterCrop 224 in the
# preprocessor's eval mode), set their pipelines to train_pipeline below.
_base_ = ['./imagenet_lt.py']

data_preprocessor = dict(
    type='GPUDecodeClsDataPreprocessor',
    # RandomResizedCrop(224) + RandomFlip(0.5) of the CPU pipeline ...
    crop_size=224,
    scale=(0.08, 1.0),
    ratio=(3. / 4., 4. / 3.),
    flip_prob=0.5,
    # ... and ResizeEdge(256, 'short') + CenterCrop(224) in eval mode.
    eval_resize_edge=256,
    # cv2's INTER_LINEAR (no antialiasing), as the CPU pipeline.
    interpolation='bilinear',
    antialias=False,
    # mean/std (RGB), num_classes and to_rgb=True (for the CPU val/test
    # pipelines) come from imagenet_lt.py.
)

train_pipeline = [
    dict(type='LoadImageBytes'),
    dict(type='PackImageBytes'),
]

train_dataloader = dict(
    # Variable-length byte tensors cannot be stacked: a list per batch
    # (tools/train.py otherwise defaults every loader to default_collate).
    collate_fn=dict(type='pseudo_collate'),
    # Pinned byte buffers for the host-to-device copy of nvJPEG.
    pin_memory=True,
    dataset=dict(pipeline=train_pipeline))
