# Copyright (c) galddc_mm contributors. All rights reserved.
"""Bytes pipeline + GPUDecodeClsDataPreprocessor, on the CPU fall-back.

* The crop boxes follow mmpretrain's ``RandomResizedCrop`` distribution
  (two-sample KS tests that also reject a wrong scale range).
* The batched bilinear resampling equals ``F.interpolate`` of each crop
  (and cv2 to a grey level), for crops, flips and resize + centre crop.
* End to end through mmengine dataloaders (``encoded_collate`` and
  ``pseudo_collate``): eval mode matches the CPU test pipeline (cv2,
  ResizeEdge + CenterCrop), training mode gives normalised
  (B, 3, 224, 224) crops, flips mirror; batched and per-image resampling
  agree; on CUDA the pin-memory thread decodes.
* Unusual files (PNG named .JPEG, CMYK, grayscale) decode; a damaged one
  is named in the error.
* ``configs/galddc/r50_imagenetlt_gpu_decode.py`` loads and builds.
"""
import os
import os.path as osp
import shutil
import tempfile
import unittest
from unittest import TestCase

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from conftest import REPO_ROOT
from data_utils import make_list_dataset
from mmengine.config import Config
from mmengine.dataset import Compose, pseudo_collate
from mmengine.registry import DefaultScope
from mmengine.runner import Runner
from mmpretrain.datasets.transforms import RandomResizedCrop
from mmpretrain.models.utils import ClsDataPreprocessor
from mmpretrain.registry import MODELS, TRANSFORMS
from PIL import Image
from scipy.stats import ks_2samp

import galddc_mm  # noqa: F401
from galddc_mm.datasets import (
    EncodedImages,
    UnreadableImageError,
    encoded_collate,
)
from galddc_mm.models import (
    GPUDecodeClsDataPreprocessor,
    center_resize_box,
    resample_bilinear,
    sample_crop_boxes,
)

MEAN = [123.675, 116.28, 103.53]
STD = [58.395, 57.12, 57.375]
DEFAULT_ARGS = dict(
    type='GPUDecodeClsDataPreprocessor', mean=MEAN, std=STD, to_rgb=True,
    num_classes=4)
#: (H, W) of the test images: landscape, portrait, square (no resize in
#: eval), odd sizes.
SIZES = [(375, 500), (500, 333), (256, 256), (300, 301), (281, 420)]
CPU_TEST_PIPELINE = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=256, edge='short'),
    dict(type='CenterCrop', crop_size=224),
    dict(type='PackInputs'),
]
BYTES_PIPELINE = [dict(type='LoadImageBytes'), dict(type='PackImageBytes')]


def _photo(h, w, rng, gray=False):
    """A smooth random image with some texture (JPEG-friendly, but with
    detail for the resize kernels to differ on)."""
    base = rng.rand(h // 16 + 2, w // 16 + 2, 3) * 255
    img = cv2.resize(base, (w, h), interpolation=cv2.INTER_CUBIC)
    img = np.clip(img + rng.randn(h, w, 3) * 12, 0, 255).astype(np.uint8)
    return img[..., 0] if gray else img


def _grey_levels(a, b):
    """|a - b| of normalised batches in grey levels (x std)."""
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (a - b).abs() * std


# ----------------------------------------------------------------------
# 4a. crop statistics
# ----------------------------------------------------------------------
class TestCropSampler(TestCase):
    N = 20000
    H, W = 375, 500

    def _reference(self, img_hw, n, **kwargs):
        """Boxes of mmpretrain's RandomResizedCrop (numpy RNG, seeded)."""
        state = np.random.get_state()
        np.random.seed(0)
        try:
            rrc = RandomResizedCrop(224, **kwargs)
            img = np.zeros((*img_hw, 1), np.uint8)
            boxes = [rrc.rand_crop_params(img) for _ in range(n)]
        finally:
            np.random.set_state(state)
        return np.asarray(boxes, dtype=np.float64)

    def _ours(self, img_hw, n, seed=1, **kwargs):
        gen = torch.Generator().manual_seed(seed)
        sizes = torch.tensor([img_hw] * n)
        return sample_crop_boxes(sizes, generator=gen, **kwargs).double(
        ).numpy()

    @staticmethod
    def _stats(boxes, h, w):
        # (top, left, height, width) -> area fraction, aspect ratio w/h,
        # relative centre.
        return dict(
            area=boxes[:, 2] * boxes[:, 3] / (h * w),
            ratio=boxes[:, 3] / boxes[:, 2],
            cy=(boxes[:, 0] + boxes[:, 2] / 2) / h,
            cx=(boxes[:, 1] + boxes[:, 3] / 2) / w)

    def test_matches_random_resized_crop(self):
        h, w = self.H, self.W
        ref = self._stats(self._reference((h, w), self.N), h, w)
        ours = self._stats(self._ours((h, w), self.N), h, w)
        for key in ref:
            p = ks_2samp(ours[key], ref[key]).pvalue
            self.assertGreater(p, 0.01, f'{key}: KS p={p:.2g}')
        # Every box lies inside the image.
        boxes = self._ours((h, w), 1000)
        self.assertTrue((boxes[:, :2] >= 0).all())
        self.assertTrue((boxes[:, 0] + boxes[:, 2] <= h).all())
        self.assertTrue((boxes[:, 1] + boxes[:, 3] <= w).all())

    def test_detects_a_wrong_distribution(self):
        # The same test must fail for a different crop distribution.
        h, w = self.H, self.W
        ref = self._stats(self._reference((h, w), self.N), h, w)
        wrong = self._stats(self._ours((h, w), self.N, scale=(0.5, 1.0)),
                            h, w)
        self.assertLess(ks_2samp(wrong['area'], ref['area']).pvalue, 1e-6)
        wrong = self._stats(
            self._ours((h, w), self.N, ratio=(0.5, 2.0)), h, w)
        self.assertLess(ks_2samp(wrong['ratio'], ref['ratio']).pvalue, 1e-6)

    def test_fallback_central_crop(self):
        # No try fits an image this thin (every box is >= 24 px high):
        # the central crop with the ratio clipped to the range, exactly
        # as mmpretrain's.
        for hw in [(10, 1000), (1000, 10)]:
            ours = self._ours(hw, 50)
            ref = self._reference(hw, 50)
            np.testing.assert_array_equal(ours, ref)
            np.testing.assert_array_equal(ours[0], ours[-1])
        np.testing.assert_array_equal(
            self._ours((10, 1000), 1)[0], [0, 493, 10, 13])
        # max_attempts=0: always the fall-back (whole image when the
        # image's ratio is in the range).
        np.testing.assert_array_equal(
            self._ours((375, 500), 3, max_attempts=0),
            self._reference((375, 500), 3, max_attempts=0))
        np.testing.assert_array_equal(
            self._ours((375, 500), 1, max_attempts=0)[0], [0, 0, 375, 500])

    def test_seeded(self):
        np.testing.assert_array_equal(
            self._ours((375, 500), 100, seed=3),
            self._ours((375, 500), 100, seed=3))
        self.assertFalse(
            np.array_equal(
                self._ours((375, 500), 100, seed=3),
                self._ours((375, 500), 100, seed=4)))


# ----------------------------------------------------------------------
# 4b. end to end
# ----------------------------------------------------------------------
class TestResampleBilinear(TestCase):
    """One batched call equals F.interpolate of each image (a closed
    loop of its own: resize of the crop, or resize then crop)."""

    def setUp(self):
        g = torch.Generator().manual_seed(0)
        self.sizes = [(37, 50), (60, 41), (20, 20), (301, 300)]
        self.images = [
            torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)
            for h, w in self.sizes
        ]
        self.boxes = sample_crop_boxes(
            torch.tensor(self.sizes), generator=g)

    def _crops(self, size):
        return [
            F.interpolate(img[None, :, y:y + h, x:x + w].float(), size=size,
                          mode='bilinear', align_corners=False)[0]
            for img, (y, x, h, w) in zip(self.images, self.boxes.tolist())
        ]

    def test_random_resized_crops(self):
        for size in ((16, 16), (64, 48)):  # down- and upscaling
            out = resample_bilinear(self.images, self.boxes.double(),
                                    self.boxes, size)
            self.assertEqual(out.shape, (4, 3) + size)
            self.assertEqual(out.dtype, torch.float32)
            torch.testing.assert_close(
                out, torch.stack(self._crops(size)), rtol=0, atol=1e-3)

    def test_a_negative_width_mirrors(self):
        windows = self.boxes.double()
        windows[:, 1] += windows[:, 3]
        windows[:, 3] *= -1
        out = resample_bilinear(self.images, windows, self.boxes, (16, 16))
        torch.testing.assert_close(
            out, torch.stack(self._crops((16, 16))).flip(-1), rtol=0,
            atol=1e-3)

    def test_resize_then_centre_crop(self):
        windows, bounds, refs = [], [], []
        for img, (h, w) in zip(self.images, self.sizes):
            new_h, new_w, top, left = center_resize_box(h, w, 24, (16, 16))
            sy, sx = h / new_h, w / new_w
            windows.append((top * sy, left * sx, 16 * sy, 16 * sx))
            bounds.append((0, 0, h, w))
            full = F.interpolate(img[None].float(), size=(new_h, new_w),
                                 mode='bilinear', align_corners=False)[0]
            refs.append(full[:, top:top + 16, left:left + 16])
        out = resample_bilinear(self.images, torch.tensor(windows),
                                torch.tensor(bounds), (16, 16))
        # F.interpolate's float32 coordinates vs float64 here: ~1e-3 of a
        # grey level where neighbours differ by 255.
        torch.testing.assert_close(out, torch.stack(refs), rtol=0, atol=5e-3)

    def test_matches_cv2_to_a_grey_level(self):
        out = resample_bilinear(self.images, self.boxes.double(), self.boxes,
                                (16, 16))
        for crop, img, (y, x, h, w) in zip(out, self.images,
                                           self.boxes.tolist()):
            ref = cv2.resize(
                img[:, y:y + h, x:x + w].permute(1, 2, 0).numpy(), (16, 16),
                interpolation=cv2.INTER_LINEAR)
            diff = np.abs(crop.permute(1, 2, 0).numpy() - ref)
            self.assertLess(diff.max(), 1.0)  # cv2's fixed point, rounding


class TestGPUDecode(TestCase):

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp()
        info = make_list_dataset(
            cls.tmp, kind='imagenet_lt', train_counts=(2, 2, 1),
            val_per_class=0, test_per_class=0, image_size=8)
        rng = np.random.RandomState(0)
        cls.paths = []
        for (path, _), hw in zip(info['entries']['train'], SIZES):
            full = osp.join(cls.tmp, path)
            cv2.imwrite(full, _photo(*hw, rng),
                        [cv2.IMWRITE_JPEG_QUALITY, 90])
            cls.paths.append(full)
        cls.labels = [label for _, label in info['entries']['train']]

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp)

    def _loader(self, pipeline, batch_size=5, **loader):
        """A real mmengine dataloader (its default collate unless said)."""
        cfg = dict(
            batch_size=batch_size,
            num_workers=0,
            sampler=dict(type='DefaultSampler', shuffle=False),
            dataset=dict(
                type='ImageNetLT', data_root=self.tmp, split='train',
                pipeline=pipeline))
        cfg.update(loader)
        with DefaultScope.overwrite_default_scope('mmpretrain'):
            return Runner.build_dataloader(cfg)

    def _cpu_batch(self, pipeline=CPU_TEST_PIPELINE):
        batch = next(iter(self._loader(pipeline)))
        return ClsDataPreprocessor(mean=MEAN, std=STD, to_rgb=True)(batch)

    def _bytes_batch(self):
        return next(iter(self._loader(BYTES_PIPELINE)))

    def test_bytes_pipeline(self):
        batch = self._bytes_batch()
        # pseudo_collate keeps the variable-length byte tensors as a list.
        inputs = batch['inputs']
        self.assertIsInstance(inputs, list)
        self.assertEqual(len(inputs), 5)
        for x, path in zip(inputs, self.paths):
            self.assertEqual((x.dtype, x.dim()), (torch.uint8, 1))
            with open(path, 'rb') as f:
                self.assertEqual(x.numpy().tobytes(), f.read())
        samples = batch['data_samples']
        self.assertEqual([s.sample_idx for s in samples], list(range(5)))
        self.assertEqual([s.img_path for s in samples], self.paths)
        self.assertEqual([int(s.gt_label) for s in samples], self.labels)

    def test_encoded_collate(self):
        # In 2 workers, as in training: one buffer per batch.
        loader = self._loader(BYTES_PIPELINE, num_workers=2,
                              collate_fn=dict(type='encoded_collate'))
        batch = next(iter(loader))
        inputs = batch['inputs']
        self.assertIsInstance(inputs, EncodedImages)
        self.assertEqual(len(inputs), 5)
        self.assertIsNone(inputs.images)  # no pin-memory thread here
        for x, path in zip(inputs.files(), self.paths):
            with open(path, 'rb') as f:
                self.assertEqual(x.numpy().tobytes(), f.read())
        self.assertEqual(inputs.names, self.paths)
        self.assertEqual([int(s.gt_label) for s in batch['data_samples']],
                         self.labels)
        # The preprocessor gives what it gives for pseudo_collate's list.
        pp = MODELS.build(DEFAULT_ARGS)
        for training in (False, True):
            listed = self._bytes_batch()  # (building a loader draws seeds)
            torch.manual_seed(0)
            out = pp(batch, training)
            torch.manual_seed(0)
            ref = pp(listed, training)
            torch.testing.assert_close(out['inputs'], ref['inputs'])
            self.assertEqual(
                [s.ori_shape for s in out['data_samples']],
                [s.ori_shape for s in ref['data_samples']])

    def _encoded_with_a_bad_file(self, tmp):
        bad = osp.join(tmp, 'bad.JPEG')
        with open(bad, 'wb') as f:
            f.write(b'\xff\xd8\xff' + b'\x00' * 100)
        pipeline = Compose([TRANSFORMS.build(t) for t in BYTES_PIPELINE])
        return encoded_collate([
            pipeline(dict(img_path=path, gt_label=0))
            for path in (self.paths[0], bad)
        ])

    def test_encoded_batch_names_an_undecodable_file(self):
        tmp = tempfile.mkdtemp()
        try:
            batch = self._encoded_with_a_bad_file(tmp)
            with self.assertRaisesRegex(UnreadableImageError, 'bad.JPEG'):
                MODELS.build(DEFAULT_ARGS)(batch, False)
        finally:
            shutil.rmtree(tmp)

    @unittest.skipUnless(torch.cuda.is_available(), 'needs a CUDA device')
    def test_pin_memory_leaves_a_bad_batch_to_the_preprocessor(self):
        # A failure in the loader's pin-memory thread would come back as a
        # RuntimeError; the preprocessor decodes again and names the file.
        tmp = tempfile.mkdtemp()
        try:
            batch = self._encoded_with_a_bad_file(tmp)
            batch['inputs'].pin_memory()
            self.assertIsNone(batch['inputs'].images)
            with self.assertRaisesRegex(UnreadableImageError, 'bad.JPEG'):
                MODELS.build(DEFAULT_ARGS).to('cuda')(batch, False)
        finally:
            shutil.rmtree(tmp)

    def test_encoded_collate_errors(self):
        with self.assertRaisesRegex(TypeError, 'encoded_collate'):
            next(iter(self._loader(CPU_TEST_PIPELINE,
                                   collate_fn=dict(type='encoded_collate'))))
        with self.assertRaisesRegex(ValueError, 'add up to 5'):
            EncodedImages(torch.zeros(4, dtype=torch.uint8),
                          torch.tensor([2, 3]))

    @unittest.skipUnless(torch.cuda.is_available(), 'needs a CUDA device')
    def test_pin_memory_thread_decodes_on_cuda(self):
        loader = self._loader(BYTES_PIPELINE, num_workers=2,
                              pin_memory=True,
                              collate_fn=dict(type='encoded_collate'))
        batch = next(iter(loader))
        images = batch['inputs'].images
        self.assertIsNotNone(images)
        self.assertTrue(all(img.is_cuda for img in images))
        self.assertTrue(batch['inputs'].data.is_pinned())
        # 'cuda', not 'cuda:0': the loader's images are used as they are
        # (a re-decode here also rebuilt torchvision's nvJPEG decoder).
        pp = MODELS.build(DEFAULT_ARGS).to('cuda')
        ahead = pp(batch, False)['inputs']
        self.assertIs(batch['inputs'].images, images)
        here = pp(next(iter(self._loader(
            BYTES_PIPELINE, collate_fn=dict(type='encoded_collate',
                                            decode_in_loader=False)))),
                  False)['inputs']
        torch.testing.assert_close(ahead, here)

    def test_batched_equals_per_image(self):
        batched = MODELS.build(DEFAULT_ARGS)
        per_image = MODELS.build({**DEFAULT_ARGS, 'batched': False})
        for training in (False, True):
            batches = self._bytes_batch(), self._bytes_batch()
            torch.manual_seed(3)
            a = batched(batches[0], training)
            torch.manual_seed(3)
            b = per_image(batches[1], training)
            torch.testing.assert_close(a['inputs'], b['inputs'], rtol=0,
                                       atol=1e-4)
            if training:
                self.assertEqual([s.flip for s in a['data_samples']],
                                 [s.flip for s in b['data_samples']])

    def test_transform_errors(self):
        load = TRANSFORMS.build(dict(type='LoadImageBytes'))
        with self.assertRaisesRegex(UnreadableImageError, 'does not exist'):
            load(dict(img_path=osp.join(self.tmp, 'missing.JPEG')))
        pack = TRANSFORMS.build(dict(type='PackImageBytes'))
        with self.assertRaisesRegex(TypeError, '1-D uint8'):
            pack(dict(img_bytes=np.zeros((4, 4, 3), np.uint8)))

    def test_eval_matches_cpu_pipeline(self):
        ref = self._cpu_batch()
        pp = MODELS.build(DEFAULT_ARGS)
        out = pp(self._bytes_batch(), False)
        self.assertEqual(out['inputs'].shape, ref['inputs'].shape)
        self.assertEqual(out['inputs'].shape, (5, 3, 224, 224))
        # libjpeg-turbo decodes as cv2 does (bit-identical here); the
        # resize is the same bilinear kernel in float where cv2 uses
        # 11-bit fixed-point weights and rounds to uint8 (<= 0.5 grey
        # level each), so the crops agree to a fraction of a grey level
        # (measured: mean ~0.27, max < 1); a wrong geometry (offset by
        # one pixel, other edge rounding, BGR) is tens of levels off.
        diff = _grey_levels(out['inputs'], ref['inputs'])
        self.assertLess(diff.mean().item(), 0.5)
        self.assertLess(diff.max().item(), 1.5)
        # The square 256 image is only cropped: exact.
        self.assertLess(diff[2].max().item(), 1e-3)
        for sample, hw in zip(out['data_samples'], SIZES):
            self.assertEqual(sample.ori_shape, hw)
            self.assertEqual(sample.img_shape, (224, 224))
        self.assertEqual([int(s.gt_label) for s in out['data_samples']],
                         self.labels)

    def test_antialias_differs_from_cv2(self):
        # The option documented as not cv2's kernel: smoother crops.
        ref = self._cpu_batch()
        pp = MODELS.build({**DEFAULT_ARGS, 'antialias': True})
        diff = _grey_levels(pp(self._bytes_batch(), False)['inputs'],
                            ref['inputs'])
        self.assertGreater(diff[0].mean().item(), 0.5)

    def test_decoded_inputs_delegate(self):
        # The val/test CPU pipelines through the same preprocessor.
        batch = next(iter(self._loader(CPU_TEST_PIPELINE)))
        ref = ClsDataPreprocessor(mean=MEAN, std=STD, to_rgb=True)(batch)
        batch = next(iter(self._loader(CPU_TEST_PIPELINE)))
        out = MODELS.build(DEFAULT_ARGS)(batch, True)
        torch.testing.assert_close(out['inputs'], ref['inputs'])

    def test_training(self):
        pp = MODELS.build(DEFAULT_ARGS)
        torch.manual_seed(0)
        out = pp(self._bytes_batch(), True)
        x = out['inputs']
        self.assertEqual(x.shape, (5, 3, 224, 224))
        self.assertEqual(x.dtype, torch.float32)
        self.assertTrue(torch.isfinite(x).all())
        mean, std = torch.tensor(MEAN), torch.tensor(STD)
        lo, hi = ((0 - mean) / std).min(), ((255 - mean) / std).max()
        self.assertGreaterEqual(x.min().item(), lo.item() - 1e-4)
        self.assertLessEqual(x.max().item(), hi.item() + 1e-4)
        # Normalised: roughly centred, unit scale (random pixels here).
        self.assertLess(x.mean().abs().item(), 1.0)
        self.assertTrue(0.1 < x.std().item() < 2.0)
        # Seeded by the global torch RNG (mmengine's seed).
        torch.manual_seed(0)
        torch.testing.assert_close(pp(self._bytes_batch(), True)['inputs'], x)
        torch.manual_seed(1)
        self.assertFalse(
            torch.equal(pp(self._bytes_batch(), True)['inputs'], x))

    def test_flip(self):
        no_flip = MODELS.build({**DEFAULT_ARGS, 'flip_prob': 0.0})
        flip = MODELS.build({**DEFAULT_ARGS, 'flip_prob': 1.0})
        torch.manual_seed(0)
        a = no_flip(self._bytes_batch(), True)
        torch.manual_seed(0)
        b = flip(self._bytes_batch(), True)
        # Boxes are drawn before the flips: same crops, mirrored.
        torch.testing.assert_close(b['inputs'], a['inputs'].flip(-1))
        self.assertTrue(all(s.flip for s in b['data_samples']))
        self.assertFalse(any(s.flip for s in a['data_samples']))

    def test_training_crop_matches_cv2(self):
        # A whole-image crop (area 1, the image's own ratio 4/3) resized
        # as the CPU RandomResizedCrop does, for the 375 x 500 image.
        rrc = dict(scale=(1.0, 1.0), ratio=(4 / 3, 4 / 3))
        cpu = [
            dict(type='LoadImageFromFile'),
            dict(type='RandomResizedCrop', scale=224,
                 crop_ratio_range=rrc['scale'],
                 aspect_ratio_range=rrc['ratio']),
            dict(type='PackInputs'),
        ]
        ref = self._cpu_batch(cpu)['inputs'][0]
        pp = MODELS.build({**DEFAULT_ARGS, **rrc, 'flip_prob': 0.0})
        out = pp(self._bytes_batch(), True)['inputs'][0]
        diff = _grey_levels(out[None], ref[None])
        self.assertLess(diff.mean().item(), 0.5)
        self.assertLess(diff.max().item(), 1.5)

    def test_unusual_files(self):
        tmp = tempfile.mkdtemp()
        try:
            rng = np.random.RandomState(1)
            img = _photo(60, 80, rng)
            paths = {k: osp.join(tmp, f'{k}.JPEG')
                     for k in ('png', 'cmyk', 'gray', 'bad')}
            # A PNG named .JPEG (as one ImageNet training image).
            cv2.imwrite(osp.join(tmp, 'x.png'), img)
            os.rename(osp.join(tmp, 'x.png'), paths['png'])
            Image.fromarray(img[..., ::-1]).convert('CMYK').save(
                paths['cmyk'], quality=95)
            cv2.imwrite(paths['gray'], img[..., 1])
            with open(paths['bad'], 'wb') as f:
                f.write(b'\xff\xd8\xff' + b'\x00' * 100)
            pipeline = Compose([TRANSFORMS.build(t) for t in BYTES_PIPELINE])
            pp = MODELS.build({**DEFAULT_ARGS, 'eval_resize_edge': 64,
                               'crop_size': 48})

            def run(keys, training=False):
                return pp(
                    pseudo_collate([
                        pipeline(dict(img_path=paths[k], gt_label=0))
                        for k in keys
                    ]), training)['inputs']

            out = run(['png', 'cmyk', 'gray'])
            self.assertEqual(out.shape, (3, 3, 48, 48))
            self.assertTrue(torch.isfinite(out).all())
            # Each as the CPU pipeline reads it (cv2; CMYK via libjpeg).
            for i, key in enumerate(['png', 'cmyk', 'gray']):
                ref = ClsDataPreprocessor(mean=MEAN, std=STD, to_rgb=True)(
                    pseudo_collate([
                        Compose([
                            TRANSFORMS.build(t) for t in [
                                dict(type='LoadImageFromFile'),
                                dict(type='ResizeEdge', scale=64),
                                dict(type='CenterCrop', crop_size=48),
                                dict(type='PackInputs')
                            ]
                        ])(dict(img_path=paths[key]))
                    ]))['inputs']
                # CMYK -> RGB conversions of libjpeg-turbo and cv2 differ
                # by ~1 grey level.
                self.assertLess(
                    _grey_levels(out[i:i + 1], ref).mean().item(), 2.0)
            self.assertEqual(run(['png', 'gray'], True).shape,
                             (2, 3, 48, 48))
            with self.assertRaisesRegex(UnreadableImageError, 'bad.JPEG'):
                run(['gray', 'bad'])
        finally:
            shutil.rmtree(tmp)

    def test_errors(self):
        with self.assertRaisesRegex(ValueError, 'batch_augments'):
            MODELS.build({
                **DEFAULT_ARGS, 'batch_augments':
                dict(augments=dict(type='Mixup', alpha=0.8))
            })
        with self.assertRaisesRegex(ValueError, 'eval_resize_edge'):
            MODELS.build({**DEFAULT_ARGS, 'eval_resize_edge': 200})
        with self.assertRaisesRegex(ValueError, 'interpolation'):
            MODELS.build({**DEFAULT_ARGS, 'interpolation': 'lanczos'})


# ----------------------------------------------------------------------
# 4c. config
# ----------------------------------------------------------------------
class TestGPUDecodeConfig(TestCase):

    def test_config_builds(self):
        cfg = Config.fromfile(
            osp.join(REPO_ROOT, 'configs', 'galddc',
                     'r50_imagenetlt_gpu_decode.py'))
        # Every loader reads bytes into one buffer per batch, said in the
        # config: tools/train.py defaults every loader to default_collate,
        # which cannot stack variable-length files.
        for loader in (cfg.train_dataloader, cfg.val_dataloader,
                       cfg.test_dataloader):
            types = [t['type'] for t in loader.dataset.pipeline]
            self.assertEqual(types, ['LoadImageBytes', 'PackImageBytes'])
            self.assertEqual(loader.collate_fn, dict(type='encoded_collate'))
            self.assertTrue(loader.pin_memory)
        pp = MODELS.build(cfg.data_preprocessor)
        self.assertIsInstance(pp, GPUDecodeClsDataPreprocessor)
        self.assertTrue(pp.to_rgb)
        self.assertEqual((pp.crop_size, pp.eval_resize_edge),
                         ((224, 224), 256))
        # As the Runner does: the top-level preprocessor reaches the model
        # (the recipe sets no model.data_preprocessor of its own).
        self.assertNotIn('data_preprocessor', cfg.model)
        model_cfg = dict(cfg.model, data_preprocessor=cfg.data_preprocessor)
        model = MODELS.build(model_cfg)
        self.assertIsInstance(model.data_preprocessor,
                              GPUDecodeClsDataPreprocessor)
