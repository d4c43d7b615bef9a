# Copyright (c) galddc_mm contributors. All rights reserved.
"""Bad data: unreadable images, empty classes, an incomplete latent cache.

Missing data roots / list files, malformed list lines (with line number)
and out-of-range labels are tested in
``test_datasets/test_long_tail_datasets.py`` (``TestListDatasets.test_errors``,
``TestCIFARLT.test_errors``).
"""
import os.path as osp
import tempfile
import warnings
from types import SimpleNamespace
from unittest import TestCase

import cv2
import numpy as np
import torch
from data_utils import TINY_DIM as DIM
from data_utils import TINY_GALDDC_MODEL as MODEL
from mmengine.logging import MMLogger
from mmpretrain.registry import HOOKS, MODELS, TRANSFORMS

import galddc_mm  # noqa: F401
from galddc_mm.datasets import LongTailListDataset, UnreadableImageError
from galddc_mm.engine.loops.latent_cache import LatentCache
from galddc_mm.engine.loops.stage import Stage


def _write_images(root):
    """Two good images, and bad ones of every kind; returns the paths."""
    rng = np.random.default_rng(0)
    img = (rng.random((16, 16, 3)) * 255).astype(np.uint8)
    paths = {name: osp.join(root, name) for name in (
        'good.png', 'good.jpg', 'trunc.jpg', 'trunc.png', 'text.jpg',
        'empty.jpg')}
    cv2.imwrite(paths['good.png'], img)
    cv2.imwrite(paths['good.jpg'], img)
    for name in ('jpg', 'png'):
        with open(paths[f'good.{name}'], 'rb') as f:
            data = f.read()
        with open(paths[f'trunc.{name}'], 'wb') as f:
            f.write(data[:len(data) // 2])
    with open(paths['text.jpg'], 'wb') as f:
        f.write(b'this is not an image')
    open(paths['empty.jpg'], 'wb').close()
    paths['missing.jpg'] = osp.join(root, 'missing.jpg')
    return paths


class TestCheckedLoadImageFromFile(TestCase):

    @classmethod
    def setUpClass(cls):
        cls._tmp = tempfile.TemporaryDirectory()
        cls.paths = _write_images(cls._tmp.name)

    @classmethod
    def tearDownClass(cls):
        cls._tmp.cleanup()

    def _load(self, name, **kwargs):
        t = TRANSFORMS.build(dict(type='CheckedLoadImageFromFile', **kwargs))
        return t(dict(img_path=self.paths[name]))

    def test_good_images_load_like_upstream(self):
        upstream = TRANSFORMS.build(dict(type='LoadImageFromFile'))
        for name in ('good.png', 'good.jpg'):
            ours = self._load(name)
            ref = upstream(dict(img_path=self.paths[name]))
            np.testing.assert_array_equal(ours['img'], ref['img'])
            self.assertEqual(ours['img_shape'], (16, 16))
            self.assertEqual(ours['ori_shape'], (16, 16))
        self.assertEqual(self._load('good.png', to_float32=True)['img'].dtype,
                         np.float32)

    def test_each_failure_names_file_and_reason(self):
        cases = {
            'trunc.jpg': r'is truncated: a JPEG without its end-of-image '
            r'marker \(\d+ bytes; the file was cut short\)',
            'trunc.png': r'is truncated: a PNG without its IEND chunk',
            'text.jpg': r'is not an image the decoder can read \(20 bytes '
            r"starting with b'this is '\)",
            'empty.jpg': r'is empty \(0 bytes\)',
            'missing.jpg': r'does not exist',
        }
        for name, reason in cases.items():
            for backend in ('cv2', 'pillow'):
                with self.assertRaisesRegex(
                        UnreadableImageError,
                        rf'^Image .*{name} {reason}.*Replace it or remove it '
                        r"from the data list, or set on_error='skip'"):
                    self._load(name, imdecode_backend=backend)

    def test_skip_warns_and_returns_none(self):
        logger = MMLogger.get_current_instance()
        for name in ('trunc.jpg', 'missing.jpg'):
            with self.assertLogs(logger, 'WARNING') as logs:
                self.assertIsNone(self._load(name, on_error='skip'))
            self.assertRegex(logs.output[0], rf'Skipped image .*{name}: it ')

    def test_bad_arguments(self):
        with self.assertRaisesRegex(ValueError, "on_error must be one of "
                                    r"\('raise', 'skip'\), got 'ignore'"):
            self._load('good.png', on_error='ignore')
        with self.assertRaisesRegex(ValueError, "on_error='skip'"):
            self._load('good.png', ignore_empty=True)

    def test_through_a_list_dataset(self):
        root = self._tmp.name
        with open(osp.join(root, 'train.txt'), 'w') as f:
            f.write('good.png 0\ntrunc.jpg 1\ngood.jpg 1\n')

        def dataset(on_error, test_mode=False):
            return LongTailListDataset(
                data_root=root,
                ann_file='train.txt',
                train_ann_file='train.txt',
                num_classes=2,
                test_mode=test_mode,
                pipeline=[
                    dict(type='CheckedLoadImageFromFile', on_error=on_error),
                    dict(type='PackInputs')
                ])

        with self.assertRaisesRegex(UnreadableImageError,
                                    r'trunc\.jpg is truncated'):
            dataset('raise')[1]
        # Skipped: mmengine's BaseDataset draws another sample instead.
        with self.assertLogs(MMLogger.get_current_instance(), 'WARNING'):
            sample = dataset('skip')[1]
        self.assertNotEqual(sample['data_samples'].img_path,
                            osp.join(root, 'trunc.jpg'))
        self.assertEqual(tuple(sample['inputs'].shape), (3, 16, 16))
        # A test-mode data set cannot replace a sample: it refuses.
        with self.assertRaisesRegex(Exception, 'should not get `None`'):
            dataset('skip', test_mode=True)[1]


class TestClassWithoutSamples(TestCase):
    """A class with zero training images: handled, not a crash or a NaN."""

    def test_geometry_losses_and_pseudo_labels(self):
        torch.manual_seed(0)
        model = MODELS.build(MODEL)
        g = torch.Generator().manual_seed(1)
        labels = torch.tensor([0] * 6 + [1] * 4 + [3] * 2)  # class 2: none
        latents = torch.randn(labels.numel(), DIM, generator=g)
        with self.assertWarnsRegex(UserWarning, r'no training sample: \[2\]'):
            model.fit_latent_statistics(
                latents, labels, class_counts=[6, 4, 0, 2])
        self.assertEqual(model.geometry.valid_mask.tolist(),
                         [True, True, False, True])
        self.assertEqual(float(model.geometry.r_cal[2]), 0.)
        # r_prior: mean radius of the head classes 0 and 1 only.
        torch.testing.assert_close(model.geometry.r_prior,
                                   model.geometry.r_real[:2].mean())

        model.set_stage('diffusion')
        model.train()
        losses = model.loss_latents(latents, labels)
        for key, value in losses.items():
            self.assertTrue(torch.isfinite(value), key)
        batch = model.take_geometry_batch()
        model.geometry.ema_update(batch.latents, batch.labels)
        self.assertTrue(torch.isfinite(model.geometry.prototypes).all())
        self.assertEqual(model.geometry.prototypes[2].abs().sum(), 0)

        # Stage 3 never draws pseudo-latents of the empty class.
        model.set_stage('finetune', 'stable')
        self.assertEqual(float(model.pseudo_label_weights()[2]), 0.)
        _, pseudo_labels = model.sample_pseudo_latents(200, latents.device)
        self.assertNotIn(2, pseudo_labels.tolist())
        losses = model.finetune_loss(latents, labels)
        for key, value in losses.items():
            self.assertTrue(torch.isfinite(value), key)


class TestIncompleteLatentCache(TestCase):
    """Images skipped during extraction stop the run with the reason."""

    def test_cache_smaller_than_dataset(self):
        torch.manual_seed(0)
        model = MODELS.build(MODEL)
        model.set_stage('diffusion')
        dataset = SimpleNamespace(
            get_class_counts=lambda: np.array([6, 4, 2, 2]))
        labels = torch.tensor([0] * 6 + [1] * 4 + [2] * 2 + [3])  # one lost
        loop = SimpleNamespace(
            current_stage=Stage('diffusion', epochs=1, begin=0),
            image_dataloader=SimpleNamespace(dataset=dataset),
            latent_cache=LatentCache(
                torch.randn(labels.numel(), DIM), labels,
                torch.arange(labels.numel())))
        runner = SimpleNamespace(
            model=model, train_loop=loop,
            logger=MMLogger.get_current_instance())
        hook = HOOKS.build(dict(type='ClassGeometryHook'))
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            with self.assertRaisesRegex(
                    ValueError, r'The latent cache holds 13 latents but the '
                    r'training set has 14 samples.*'
                    r"CheckedLoadImageFromFile\(on_error='skip'\)"):
                hook.before_train_epoch(runner)
        self.assertFalse(model.geometry_ready)
