# Copyright (c) galddc_mm contributors. All rights reserved.
"""Every config under configs/ builds and trains a few iterations of each
of its stages on tiny generated data in the real formats."""
import copy
import glob
import os.path as osp

import pytest
from conftest import REPO_ROOT
from data_utils import make_cifar_pickles, make_list_dataset
from mmengine.config import Config
from mmengine.runner import Runner

import galddc_mm  # noqa: F401

CONFIGS = sorted(
    osp.relpath(p, REPO_ROOT)
    for p in glob.glob(osp.join(REPO_ROOT, 'configs', '**', '*.py'),
                       recursive=True)
    if '_base_' not in p.split(osp.sep))

LIST_KINDS = {
    'ImageNetLT': 'imagenet_lt',
    'PlacesLT': 'places_lt',
    'INat2018': 'inat2018'
}
TINY_SIZES = {
    'RandomResizedCrop': ('scale', 32),
    'ResizeEdge': ('scale', 36),
    'CenterCrop': ('crop_size', 32),
}


@pytest.fixture(scope='module')
def data_roots(tmp_path_factory):
    root = tmp_path_factory.mktemp('data')
    roots = {}
    for kind in ('cifar10', 'cifar100'):
        path = str(root / kind)
        make_cifar_pickles(path, kind=kind, per_class=12, test_per_class=2)
        roots[kind] = path
    for kind in LIST_KINDS.values():
        path = str(root / kind)
        make_list_dataset(path, kind=kind, train_counts=(6, 4, 2, 1))
        roots[kind] = path
    return roots


def _shrink_pipeline(pipeline):
    for transform in pipeline:
        if transform['type'] in TINY_SIZES:
            key, value = TINY_SIZES[transform['type']]
            transform[key] = value


def _shrink_preprocessor(preprocessor):
    # The GPU-decode configs crop and resize in the data preprocessor.
    if preprocessor and preprocessor.get('type') == \
            'GPUDecodeClsDataPreprocessor':
        preprocessor.update(crop_size=TINY_SIZES['CenterCrop'][1],
                            eval_resize_edge=TINY_SIZES['ResizeEdge'][1])


def _shrink(cfg: Config, data_roots: dict, work_dir: str) -> Config:
    """Tiny data, batches, stages and image sizes; same components."""
    cfg.work_dir = work_dir
    cfg.experiment_name = osp.basename(work_dir)
    cfg.default_hooks.logger.interval = 1
    cfg.default_hooks.checkpoint.max_keep_ckpts = 1
    # No checkpoint: the ResNet-50 recipes' are up to 1.3 GB, and writing
    # them was most of their test time (one at the end still took ~5 s of
    # ~21). Saving, at every epoch and stage boundary, and loading are
    # tested on Digits-LT (test_galddc_training, test_interruption_...).
    cfg.default_hooks.checkpoint.interval = 1000
    cfg.default_hooks.checkpoint.save_last = False
    cfg.default_hooks.checkpoint.save_best = None
    dataset_type = cfg.train_dataloader.dataset.type
    for split in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        loader = cfg[split]
        loader.batch_size = 64 if dataset_type == 'DigitsLT' else 8
        loader.num_workers = 0
        loader.persistent_workers = False
        dataset = loader.dataset
        if dataset_type.startswith('CIFAR'):
            kind = 'cifar100' if '100' in dataset_type else 'cifar10'
            dataset.data_root = data_roots[kind]
            dataset.imbalance_factor = 10
            dataset.val_per_class = 1
        elif dataset_type == 'DigitsLT':
            dataset.n_max = 30  # ~100 training images, all bands but many
        elif dataset_type == 'SyntheticLT':
            # 20 classes of 8..1 images at 32 px.
            dataset.update(num_classes=20, n_max=8, img_size=32)
            cfg.model.head.num_classes = 20
            cfg.data_preprocessor.num_classes = 20
        elif dataset_type == 'GaussianLatentLT':
            dataset.update(n_max=30, val_per_class=5, test_per_class=5)
        elif dataset_type in LIST_KINDS:
            dataset.data_root = data_roots[LIST_KINDS[dataset_type]]
        _shrink_pipeline(dataset.pipeline)
    _shrink_preprocessor(cfg.get('data_preprocessor'))
    # No single-image last batch (BatchNorm refuses it in training).
    cfg.train_dataloader.drop_last = True
    backbone = cfg.model.backbone
    if 'img_size' in backbone:
        backbone.img_size = 32
    if backbone.type == 'SwinTransformer':
        backbone.pad_small_map = True  # 32 px maps are below the window
    train_cfg = cfg.train_cfg
    if train_cfg.get('type') == 'GALDDCTrainLoop':
        # Few DDIM steps: the chain is the same code at any length.
        cfg.model.diffusion_head.sampler.num_steps = 5
        for stage in train_cfg.stages:
            # A stage a config skips (epochs=0) stays skipped.
            stage.epochs = min(stage.epochs, 1)
            if 'repeat' in stage:
                stage.repeat = 1
            if stage.get('cache_latents'):
                stage.batch_size = 16
        if dataset_type != 'DigitsLT':
            # Tiny sets: classes of 6/4/2/1 (or 12..1) training images.
            cfg.model.geometry.tau = 3
            for evaluator in ('val_evaluator', 'test_evaluator'):
                cfg[evaluator].tau = 3
        for hook in cfg.custom_hooks:
            if hook.type == 'GenerationReportHook':
                hook.num_per_class = 2
                # One tiny epoch of stage 2 samples poor latents.
                hook.gate = 'warn'
            if hook.type == 'KnownAnswerHook':
                hook.update(num_per_class=5, true_per_class=5)
        cfg.param_scheduler = {
            part: [dict(type='ConstantLR', factor=1.0, by_epoch=True)]
            for part in cfg.param_scheduler
        }
    else:
        train_cfg.max_epochs = 1
        cfg.param_scheduler = [dict(type='ConstantLR', factor=1.0)]
    return cfg


@pytest.mark.parametrize('config', CONFIGS)
def test_config_trains_every_stage(config, data_roots, tmp_path):
    cfg = Config.fromfile(osp.join(REPO_ROOT, config))
    cfg = _shrink(copy.deepcopy(cfg), data_roots, str(tmp_path))
    runner = Runner.from_cfg(cfg)
    runner.train()
    loop = runner.train_loop
    assert loop.epoch == loop.max_epochs
    if cfg.train_cfg.get('type') == 'GALDDCTrainLoop':
        names = [s.name for s in loop.stages]
        report = osp.join(str(tmp_path), 'generation_report.json')
        if not loop.stages[-1].pseudo_latents:
            # cRT: stage 1, then G re-trained on real latents only.
            assert names == ['representation', 'finetune']
            assert not bool(runner.model.geometry.initialized)
            assert not osp.isfile(report)
        else:
            assert names[-2:] == ['diffusion', 'finetune']
            assert bool(runner.model.geometry.initialized)
            assert osp.isfile(report)
    # The final evaluation produced long-tail metrics.
    hub = runner.message_hub
    assert 'val/accuracy/top1' in hub.log_scalars
