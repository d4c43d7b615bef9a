# ImageNet-LT (see imagenet_lt.py) with every image decoded and augmented
# on the GPU: the workers only read the JPEG files (LoadImageBytes +
# PackImageBytes) and put a batch's files into one buffer
# (encoded_collate); the DataLoader's pin-memory thread decodes the batch
# with nvJPEG while the previous step runs, and
# GPUDecodeClsDataPreprocessor draws RandomResizedCrop(224) boxes from
# mmpretrain's distribution and flips with probability 0.5 (training), or
# resizes the short edge to 256 and crops the centre 224 (val/test and the
# latent-cache extraction of GALD-DC), for the whole batch at once.
# For machines whose CPU cores cannot keep up with the GPU (e.g. 16 cores
# per H200); tools/benchmarks/decode.py measures both paths, and
# docs/benchmarks.md gives the figures.
#
# The evaluation crops differ from the cv2 pipeline's by a fraction of a
# grey level (float resampling vs cv2's fixed point; nvJPEG's IDCT). To
# keep val/test on the CPU pipeline, set their dataset.pipeline to
# test_pipeline of imagenet_lt.py and their collate_fn to default_collate.
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
    # mean/std (RGB) and num_classes come from imagenet_lt.py; to_rgb=True
    # there applies to decoded (cv2, BGR) inputs only, not to bytes.
)

bytes_pipeline = [
    dict(type='LoadImageBytes'),
    dict(type='PackImageBytes'),
]
train_pipeline = bytes_pipeline
test_pipeline = bytes_pipeline

# One buffer per batch from the workers; pinned, and decoded on the GPU in
# the pin-memory thread (encoded_collate(decode_in_loader=False) leaves
# decoding to the preprocessor, between the steps).
bytes_loader = dict(
    collate_fn=dict(type='encoded_collate'),
    pin_memory=True,
    dataset=dict(pipeline=bytes_pipeline))
train_dataloader = bytes_loader
val_dataloader = bytes_loader
test_dataloader = bytes_loader
