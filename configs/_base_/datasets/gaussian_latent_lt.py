# Copyright (c) galddc_mm contributors. All rights reserved.
# The known-answer testbed: long-tailed latents from K Gaussians that share
# one true spread (GaussianLatentLT). The samples are latents: no image
# pipeline, PackInputs only. Train counts 200 -> 10 at IF 20 (200 -> 2 at
# IF 100); val 100 and test 500 latents per class from the same truth.
dataset_type = 'GaussianLatentLT'
imbalance_factor = 20
_truth = dict(num_classes=20, latent_dim=64, n_max=200, min_count=2,
              spread=1.0, mean_norm=2.5, seed=0)
data_preprocessor = dict(type='ClsDataPreprocessor', num_classes=20)

pipeline = [dict(type='PackInputs', input_key='latent')]

train_dataloader = dict(
    batch_size=128,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        type=dataset_type,
        split='train',
        imbalance_factor=imbalance_factor,
        pipeline=pipeline,
        **_truth),
    sampler=dict(type='DefaultSampler', shuffle=True),
)
val_dataloader = dict(
    batch_size=1000,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        type=dataset_type,
        split='val',
        imbalance_factor=imbalance_factor,
        pipeline=pipeline,
        **_truth),
    sampler=dict(type='DefaultSampler', shuffle=False),
)
test_dataloader = dict(
    batch_size=1000,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        type=dataset_type,
        split='test',
        imbalance_factor=imbalance_factor,
        pipeline=pipeline,
        **_truth),
    sampler=dict(type='DefaultSampler', shuffle=False),
)
val_evaluator = dict(
    type='LongTailAccuracy', topk=(1, 5), tau=20,
    per_class_file='val_per_class_accuracy')
test_evaluator = dict(
    type='LongTailAccuracy', topk=(1, 5), tau=20,
    per_class_file='test_per_class_accuracy')
