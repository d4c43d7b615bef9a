# Copyright (c) galddc_mm contributors. All rights reserved.
"""The ImageNet-LT-shaped JPEG generator and the whole-run figures.

The generator's class sizes are checked against ImageNet-LT's published
numbers (Liu et al., OLTR: 1,000 classes, 115,846 training images, 1,280
to 5 per class, 385 many-, 479 medium- and 136 few-shot classes); its
lists are read by the real ``ImageNetLT`` data set. The whole-run figures
are checked on hand-made logging records.
"""
import filecmp
import os.path as osp
import sys
import tempfile
from unittest import TestCase

import numpy as np
from conftest import REPO_ROOT
from mmengine.config import Config

sys.path.insert(0, osp.join(REPO_ROOT, 'tools', 'dataset_converters'))
sys.path.insert(0, osp.join(REPO_ROOT, 'tools', 'benchmarks'))

import make_imagenet_lt_like as gen  # noqa: E402
import whole_run  # noqa: E402


class TestGenerator(TestCase):

    def test_counts_have_imagenet_lt_profile(self):
        counts = gen.imagenet_lt_counts()
        self.assertEqual(counts.size, 1000)
        self.assertEqual((counts.max(), counts.min()), (1280, 5))
        self.assertTrue(np.all(np.diff(counts) <= 0))
        # OLTR's bands: many > 100, medium 20-100, few < 20 images.
        self.assertEqual((counts > 100).sum(), 385)
        self.assertEqual(((counts >= 20) & (counts <= 100)).sum(), 479)
        self.assertEqual((counts < 20).sum(), 136)
        self.assertLess(abs(int(counts.sum()) - 115846), 100)
        small = gen.imagenet_lt_counts(20, scale=0.01)
        self.assertEqual(small.min(), 1)  # every class keeps an image

    def test_lists_load_and_output_is_deterministic(self):
        from galddc_mm.datasets import ImageNetLT
        with tempfile.TemporaryDirectory() as tmp:
            roots = [osp.join(tmp, f'w{w}') for w in (1, 2)]
            for root, workers in zip(roots, (1, 2)):
                gen.main([root, '--num-classes', '4', '--scale', '0.004',
                          '--val-per-class', '1', '--test-per-class', '2',
                          '--size', '40', '30', '--workers', str(workers)])
            expected = gen.imagenet_lt_counts(4, 0.004)
            for split, per_class in (('train', expected), ('val', [1] * 4),
                                     ('test', [2] * 4)):
                dataset = ImageNetLT(data_root=roots[0], split=split,
                                     pipeline=[])
                labels = [dataset.get_data_info(i)['gt_label']
                          for i in range(len(dataset))]
                self.assertEqual(
                    np.bincount(labels, minlength=4).tolist(),
                    list(per_class), split)
                for i in range(len(dataset)):
                    self.assertTrue(
                        osp.isfile(dataset.get_data_info(i)['img_path']))
            # The same bytes whatever the number of workers.
            listed = open(osp.join(roots[0], 'ImageNet_LT_train.txt'))
            for line in listed:
                rel = line.split()[0]
                self.assertTrue(filecmp.cmp(
                    osp.join(roots[0], rel), osp.join(roots[1], rel),
                    shallow=False), rel)
            listed.close()


class TestWholeRun(TestCase):

    def test_stage_layout_and_rates_by_hand(self):
        cfg = Config(dict(
            train_dataloader=dict(batch_size=64),
            train_cfg=dict(type='GALDDCTrainLoop', stages=[
                dict(name='representation', epochs=2),
                dict(name='diffusion', epochs=1, batch_size=512),
                dict(name='finetune', epochs=0),
            ])))
        layout = whole_run.stage_layout(cfg)
        self.assertEqual(
            [(s['name'], s['first'], s['last'], s['batch_size'])
             for s in layout],
            [('representation', 1, 2, 64),
             ('diffusion, cached latents', 3, 3, 512)])
        records = [
            dict(epoch=1, time=9.0, data_time=9.0),  # first window: dropped
            dict(epoch=1, time=0.1, data_time=0.02),
            dict(epoch=2, time=0.3, data_time=0.06),
            dict(epoch=3, time=5.0, data_time=0.0),  # dropped
            dict(epoch=3, time=0.002, data_time=0.001),
        ]
        rows = whole_run.stage_rates(records, layout)
        # Stage 1: mean time 0.2 s -> 64 / 0.2 = 320 img/s; data 0.04/0.2.
        self.assertEqual(rows[0]['windows'], 2)
        self.assertAlmostEqual(rows[0]['images_per_s'], 320.0)
        self.assertAlmostEqual(rows[0]['data_share'], 0.2)
        self.assertAlmostEqual(rows[1]['images_per_s'], 512 / 0.002)
        self.assertAlmostEqual(rows[1]['data_share'], 0.5)
        plain = Config(dict(train_dataloader=dict(batch_size=32),
                            train_cfg=dict(by_epoch=True, max_epochs=3)))
        self.assertEqual(whole_run.stage_layout(plain),
                         [dict(name='train', first=1, last=3,
                               batch_size=32)])
