# Copyright (c) galddc_mm contributors. All rights reserved.
import os
import os.path as osp
import pickle
import tempfile
from unittest import TestCase

import numpy as np
from conftest import REPO_ROOT
from data_utils import image_id, make_cifar_pickles, make_list_dataset
from mmengine.config import Config
from mmpretrain.datasets.categories import IMAGENET_CATEGORIES
from mmpretrain.registry import DATASETS, METRICS
from sklearn.datasets import load_digits

from galddc_mm.datasets import LongTailMixin, ldam_long_tail_select
from galddc_mm.datasets.cifar_lt import CIFAR10LT, CIFAR100LT
from galddc_mm.datasets.digits_lt import DigitsLT
from galddc_mm.datasets.imagenet_lt import ImageNetLT
from galddc_mm.datasets.inat2018 import INat2018
from galddc_mm.datasets.list_lt import parse_list_file
from galddc_mm.datasets.long_tail import class_bands, long_tail_counts
from galddc_mm.datasets.places_lt import PlacesLT

REPO = REPO_ROOT


def ldam_reference(targets, num_classes, imb_factor):
    """LDAM-DRW's IMBALANCECIFAR10 selection, written as in their code
    (global np.random.seed(0) + np.random.shuffle, np.unique classes)."""
    img_max = len(targets) / num_classes
    img_num_per_cls = []
    for cls_idx in range(num_classes):
        num = img_max * (imb_factor**(cls_idx / (num_classes - 1.0)))
        img_num_per_cls.append(int(num))
    state = np.random.get_state()
    np.random.seed(0)
    targets_np = np.array(targets, dtype=np.int64)
    classes = np.unique(targets_np)
    selected = []
    for the_class, the_img_num in zip(classes, img_num_per_cls):
        idx = np.where(targets_np == the_class)[0]
        np.random.shuffle(idx)
        selected.append(idx[:the_img_num])
    np.random.set_state(state)
    return np.concatenate(selected), img_num_per_cls


class TestLongTailCounts(TestCase):

    def test_known_totals(self):
        # CIFAR-10-LT / CIFAR-100-LT totals reported by LDAM-DRW & co.
        for n_max, k, totals in ((5000, 10, (12406, 13996, 20431)),
                                 (500, 100, (10847, 12608, 19573))):
            for imb, total in zip((100, 50, 10), totals):
                self.assertEqual(long_tail_counts(n_max, k, imb).sum(), total)

    def test_known_totals_through_selection(self):
        # The selection the CIFAR-LT data sets use, on full-size label
        # vectors (50,000 labels, balanced, shuffled like the real files).
        rng = np.random.RandomState(1)
        for k, totals in ((10, (12406, 13996, 20431)),
                          (100, (10847, 12608, 19573))):
            targets = rng.permutation(np.repeat(np.arange(k), 50000 // k))
            for imb, total in zip((100, 50, 10), totals):
                train_idx, _ = ldam_long_tail_select(targets, k, imb)
                self.assertEqual(sum(len(i) for i in train_idx), total)
            ref, _ = ldam_reference(targets, k, 1 / 100)
            train_idx, _ = ldam_long_tail_select(targets, k, 100)
            np.testing.assert_array_equal(np.concatenate(train_idx), ref)

    def test_profile(self):
        # n_i = int(n_max * (1/IF) ** (i / (C-1))), by hand.
        np.testing.assert_array_equal(
            long_tail_counts(100, 3, 100), [100, 10, 1])
        np.testing.assert_array_equal(
            long_tail_counts(110, 10, 20),
            [110, 78, 56, 40, 29, 20, 14, 10, 7, 5])
        np.testing.assert_array_equal(long_tail_counts(7, 4, 1), [7] * 4)
        self.assertEqual(long_tail_counts(5, 1, 10).tolist(), [5])
        self.assertEqual(long_tail_counts(5000, 10, 100).dtype, np.int64)

    def test_errors(self):
        with self.assertRaisesRegex(ValueError, 'imbalance_factor.*>= 1'):
            long_tail_counts(100, 10, 0.5)
        with self.assertRaisesRegex(ValueError, 'num_classes'):
            long_tail_counts(100, 0, 10)
        with self.assertRaisesRegex(ValueError, 'few_thr'):
            class_bands([1, 2], many_thr=10, few_thr=20)

    def test_class_bands(self):
        bands = class_bands([150, 101, 100, 50, 20, 19, 0])
        self.assertEqual(bands.tolist(), [
            'many', 'many', 'medium', 'medium', 'medium', 'few', 'few'
        ])
        bands = class_bands([10, 5, 2], many_thr=8, few_thr=3)
        self.assertEqual(bands.tolist(), ['many', 'medium', 'few'])


class TestCIFARLT(TestCase):

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.root = cls.tmp.name
        cls.info = make_cifar_pickles(
            cls.root, 'cifar10', per_class=20, test_per_class=4)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def build(self, **kwargs):
        return CIFAR10LT(data_root=self.root, **kwargs)

    def test_train_matches_ldam(self):
        for imb in (10, 4):
            ds = self.build(split='train', imbalance_factor=imb)
            ref, ref_counts = ldam_reference(self.info['train_labels'], 10,
                                             1 / imb)
            ids = [
                image_id(ds.get_data_info(i)['img']) for i in range(len(ds))
            ]
            np.testing.assert_array_equal(ids, ref)
            labels = [ds.get_data_info(i)['gt_label'] for i in range(len(ds))]
            np.testing.assert_array_equal(labels,
                                          self.info['train_labels'][ref])
            np.testing.assert_array_equal(ds.get_class_counts(), ref_counts)
        # 20 per class, IF 10: int(20 * 0.1 ** (i / 9)) by hand.
        self.assertEqual(
            self.build(imbalance_factor=10).get_class_counts().tolist(),
            [20, 15, 11, 9, 7, 5, 4, 3, 2, 2])

    def test_image_content_and_pipeline(self):
        ds = self.build(
            split='train',
            pipeline=[
                dict(type='RandomCrop', crop_size=32, padding=4),
                dict(type='RandomFlip', prob=0.5, direction='horizontal'),
                dict(type='PackInputs')
            ])
        info = ds.get_data_info(0)
        src = self.info['train_data'][image_id(info['img'])]
        np.testing.assert_array_equal(
            info['img'], src.reshape(3, 32, 32).transpose(1, 2, 0))
        self.assertEqual(info['img'].dtype, np.uint8)
        out = ds[0]
        self.assertEqual(tuple(out['inputs'].shape), (3, 32, 32))

    def test_same_images_and_seed(self):
        a = self.build(imbalance_factor=10)
        b = self.build(imbalance_factor=10)
        c = self.build(imbalance_factor=10, seed=1)
        ids = [[image_id(d.get_data_info(i)['img']) for i in range(len(d))]
               for d in (a, b, c)]
        self.assertEqual(ids[0], ids[1])
        self.assertNotEqual(sorted(ids[0]), sorted(ids[2]))
        np.testing.assert_array_equal(a.get_class_counts(),
                                      c.get_class_counts())

    def test_test_split_untouched(self):
        ds = self.build(split='test', imbalance_factor=10)
        self.assertEqual(len(ds), 40)
        for i in range(len(ds)):
            info = ds.get_data_info(i)
            self.assertEqual(image_id(info['img']), 200 + i)
            self.assertEqual(info['gt_label'], self.info['test_labels'][i])
        # ... but it reports the training counts.
        np.testing.assert_array_equal(
            ds.get_class_counts(), [20, 15, 11, 9, 7, 5, 4, 3, 2, 2])
        self.assertEqual(ds.metainfo['class_counts'],
                         [20, 15, 11, 9, 7, 5, 4, 3, 2, 2])
        self.assertIsInstance(ds.metainfo['class_counts'][0], int)

    def test_val_split(self):
        train = self.build(imbalance_factor=10)
        val = self.build(split='val', imbalance_factor=10, val_per_class=6)
        train_ids = {image_id(train.get_data_info(i)['img'])
                     for i in range(len(train))}
        val_ids = [image_id(val.get_data_info(i)['img'])
                   for i in range(len(val))]
        self.assertFalse(train_ids & set(val_ids))
        self.assertEqual(len(set(val_ids)), len(val_ids))
        labels = np.array([val.get_data_info(i)['gt_label']
                           for i in range(len(val))])
        # min(6, 20 - n_c) per class; class 0 keeps all its 20 images.
        expected = np.minimum(6, 20 - np.array([20, 15, 11, 9, 7, 5, 4, 3, 2,
                                                2]))
        np.testing.assert_array_equal(np.bincount(labels, minlength=10),
                                      expected)
        for i, vid in enumerate(val_ids):
            self.assertEqual(self.info['train_labels'][vid], labels[i])
        np.testing.assert_array_equal(val.get_class_counts(),
                                      train.get_class_counts())
        again = self.build(split='val', imbalance_factor=10, val_per_class=6)
        self.assertEqual(val_ids, [
            image_id(again.get_data_info(i)['img']) for i in range(len(again))
        ])

    def test_lazy_init_has_counts(self):
        ds = self.build(imbalance_factor=10, lazy_init=True)
        np.testing.assert_array_equal(
            ds.get_class_counts(), [20, 15, 11, 9, 7, 5, 4, 3, 2, 2])
        self.assertIsInstance(ds, LongTailMixin)

    def test_cifar100(self):
        with tempfile.TemporaryDirectory() as root:
            info = make_cifar_pickles(
                root, 'cifar100', per_class=5, test_per_class=1)
            ds = CIFAR100LT(data_root=root, imbalance_factor=5)
            ref, ref_counts = ldam_reference(info['train_labels'], 100, 1 / 5)
            ids = [
                image_id(ds.get_data_info(i)['img']) for i in range(len(ds))
            ]
            np.testing.assert_array_equal(ids, ref)
            np.testing.assert_array_equal(ds.get_class_counts(), ref_counts)
            self.assertEqual(len(ds.metainfo['classes']), 100)
            test = CIFAR100LT(data_root=root, split='test')
            self.assertEqual(len(test), 100)

    def test_str_keys_accepted(self):
        # Files re-written by Python 3 may hold str keys.
        with tempfile.TemporaryDirectory() as root:
            info = make_cifar_pickles(
                root, 'cifar100', per_class=2, test_per_class=1)
            path = osp.join(root, 'cifar-100-python', 'test')
            with open(path, 'wb') as f:
                pickle.dump(
                    dict(data=info['test_data'],
                         fine_labels=info['test_labels'].tolist()), f)
            ds = CIFAR100LT(data_root=root, split='test')
            self.assertEqual(
                [ds.get_data_info(i)['gt_label'] for i in range(len(ds))],
                info['test_labels'].tolist())

    def test_errors(self):
        with tempfile.TemporaryDirectory() as root:
            with self.assertRaisesRegex(FileNotFoundError,
                                        'data_batch_1.*cifar-10-python'):
                CIFAR10LT(data_root=root)
            with self.assertRaisesRegex(FileNotFoundError,
                                        r'cifar-100-python/test'):
                CIFAR100LT(data_root=root, split='test')
            make_cifar_pickles(root, 'cifar10', per_class=2, test_per_class=1)
            os.remove(osp.join(root, 'cifar-10-batches-py', 'data_batch_4'))
            with self.assertRaisesRegex(FileNotFoundError, 'data_batch_4'):
                CIFAR10LT(data_root=root, split='test')
        with self.assertRaisesRegex(ValueError, "Unknown split 'dev'"):
            self.build(split='dev')
        with self.assertRaisesRegex(ValueError, 'imbalance_factor'):
            self.build(imbalance_factor=0.5)
        with self.assertRaisesRegex(ValueError, 'data_root'):
            CIFAR10LT()
        with self.assertRaisesRegex(ValueError, 'val_per_class'):
            self.build(split='val', val_per_class=-1)


class TestDigitsLT(TestCase):

    @classmethod
    def setUpClass(cls):
        cls.splits = {s: DigitsLT(split=s) for s in ('train', 'val', 'test')}
        digits = load_digits()
        cls.source = {
            np.round(x * 255 / 16).astype(np.uint8).tobytes(): int(y)
            for x, y in zip(digits.images, digits.target)
        }

    def keys(self, ds):
        return [(ds.get_data_info(i)['img'][..., 0].tobytes(),
                 ds.get_data_info(i)['gt_label']) for i in range(len(ds))]

    def test_sizes_and_counts(self):
        counts = [110, 78, 56, 40, 29, 20, 14, 10, 7, 5]
        self.assertEqual(len(self.splits['train']), sum(counts))
        self.assertEqual(len(self.splits['val']), 200)
        self.assertEqual(len(self.splits['test']), 400)
        for ds in self.splits.values():
            self.assertEqual(ds.get_class_counts().tolist(), counts)
            self.assertEqual(ds.metainfo['class_counts'], counts)
        labels = [k[1] for k in self.keys(self.splits['train'])]
        self.assertEqual(np.bincount(labels).tolist(), counts)
        for split, per_class in (('val', 20), ('test', 40)):
            labels = [k[1] for k in self.keys(self.splits[split])]
            self.assertEqual(np.bincount(labels).tolist(), [per_class] * 10)

    def test_bands_present(self):
        bands = set(class_bands(self.splits['train'].get_class_counts()))
        self.assertEqual(bands, {'many', 'medium', 'few'})

    def test_disjoint_and_real_images(self):
        keys = {s: self.keys(ds) for s, ds in self.splits.items()}
        sets = {s: {k[0] for k in v} for s, v in keys.items()}
        for s, v in keys.items():
            self.assertEqual(len(sets[s]), len(v))
            for img, label in v:
                self.assertEqual(self.source[img], label)
        self.assertFalse(sets['train'] & sets['val'])
        self.assertFalse(sets['train'] & sets['test'])
        self.assertFalse(sets['val'] & sets['test'])
        img = self.splits['train'].get_data_info(0)['img']
        self.assertEqual((img.shape, img.dtype), ((8, 8, 3), np.uint8))
        np.testing.assert_array_equal(img[..., 0], img[..., 2])

    def test_seed_and_imbalance(self):
        same = DigitsLT(split='train')
        self.assertEqual(self.keys(same), self.keys(self.splits['train']))
        other = DigitsLT(split='test', seed=1)
        self.assertNotEqual(
            set(self.keys(other)), set(self.keys(self.splits['test'])))
        steep = DigitsLT(split='val', imbalance_factor=50)
        self.assertEqual(steep.get_class_counts().tolist(),
                         [110, 71, 46, 29, 19, 12, 8, 5, 3, 2])

    def test_pipeline(self):
        ds = DATASETS.build(
            dict(
                type='DigitsLT',
                split='test',
                pipeline=[
                    dict(type='RandomCrop', crop_size=8, padding=1),
                    dict(type='PackInputs')
                ]))
        out = ds[3]
        self.assertEqual(tuple(out['inputs'].shape), (3, 8, 8))
        self.assertEqual(out['data_samples'].gt_label.item(),
                         ds.get_data_info(3)['gt_label'])

    def test_errors(self):
        with self.assertRaisesRegex(ValueError, "Unknown split 'dev'"):
            DigitsLT(split='dev')
        with self.assertRaisesRegex(ValueError, 'imbalance_factor'):
            DigitsLT(imbalance_factor=0.9)
        with self.assertRaisesRegex(ValueError, 'fewer than n_max=150'):
            DigitsLT(n_max=150)


class TestListDatasets(TestCase):

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.root = self.tmp.name

    def tearDown(self):
        self.tmp.cleanup()

    def paths_labels(self, ds):
        return [(osp.relpath(ds.get_data_info(i)['img_path'], self.root),
                 ds.get_data_info(i)['gt_label']) for i in range(len(ds))]

    def test_imagenet_lt(self):
        info = make_list_dataset(
            self.root, 'imagenet_lt', train_counts={0: 6, 1: 4, 2: 2,
                                                    999: 1})
        train = ImageNetLT(data_root=self.root, split='train')
        self.assertEqual(self.paths_labels(train), info['entries']['train'])
        counts = np.zeros(1000, dtype=np.int64)
        counts[[0, 1, 2, 999]] = [6, 4, 2, 1]
        for split in ('train', 'val', 'test'):
            ds = ImageNetLT(data_root=self.root, split=split)
            np.testing.assert_array_equal(ds.get_class_counts(), counts)
            self.assertEqual(ds.metainfo['class_counts'], counts.tolist())
            self.assertEqual(self.paths_labels(ds), info['entries'][split])
        self.assertEqual(tuple(train.metainfo['classes']),
                         tuple(IMAGENET_CATEGORIES))

    def test_imagenet_val_styles(self):
        for list_style, disk_style in (('nested', 'flat'),
                                       ('flat', 'nested'), ('flat', 'flat'),
                                       ('nested', 'nested')):
            with tempfile.TemporaryDirectory() as root:
                info = make_list_dataset(
                    root,
                    'imagenet_lt',
                    train_counts=(3, 2, 1),
                    val_style=list_style,
                    disk_val_style=disk_style)
                ds = ImageNetLT(data_root=root, split='test')
                paths = [ds.get_data_info(i)['img_path']
                         for i in range(len(ds))]
                labels = [ds.get_data_info(i)['gt_label']
                          for i in range(len(ds))]
                self.assertEqual(len(paths), 9)
                self.assertEqual(labels,
                                 [lab for _, lab in info['entries']['test']])
                for p, label in zip(paths, labels):
                    self.assertTrue(osp.isfile(p), p)
                    rel = osp.relpath(p, root).split(os.sep)
                    if disk_style == 'nested':
                        self.assertEqual(rel[:2], ['val', f'n{label:08d}'])
                    else:
                        self.assertEqual(len(rel), 2)

    def test_places_lt_and_loading(self):
        info = make_list_dataset(self.root, 'places_lt',
                                 train_counts={3: 2, 364: 5})
        ds = PlacesLT(
            data_root=self.root,
            split='test',
            pipeline=[dict(type='LoadImageFromFile'),
                      dict(type='PackInputs')])
        self.assertEqual(self.paths_labels(ds), info['entries']['test'])
        self.assertEqual(len(ds.get_class_counts()), 365)
        self.assertEqual(ds.get_class_counts()[[3, 364]].tolist(), [2, 5])
        self.assertEqual(ds.get_class_counts().sum(), 7)
        self.assertEqual(tuple(ds[0]['inputs'].shape), (3, 8, 8))
        self.assertEqual(ds.metainfo['classes'][364], 'class_364')

    def test_inat2018_test_reads_val_list(self):
        info = make_list_dataset(self.root, 'inat2018',
                                 train_counts={0: 3, 8141: 2})
        val = INat2018(data_root=self.root, split='val')
        test = INat2018(data_root=self.root, split='test')
        self.assertEqual(self.paths_labels(test), info['entries']['val'])
        self.assertEqual(self.paths_labels(val), self.paths_labels(test))
        self.assertTrue(test.ann_file.endswith('iNaturalist18_val.txt'))
        self.assertEqual(len(test.get_class_counts()), 8142)
        self.assertEqual(test.get_class_counts()[8141], 2)

    def test_ann_file_override_and_lazy(self):
        make_list_dataset(self.root, 'places_lt', train_counts=(4, 2))
        with open(osp.join(self.root, 'my_list.txt'), 'w') as f:
            f.write('data_256/a/class1/00000000.jpg 1\n')
        ds = PlacesLT(data_root=self.root, split='val', ann_file='my_list.txt')
        self.assertEqual(self.paths_labels(ds),
                         [('data_256/a/class1/00000000.jpg', 1)])
        self.assertEqual(ds.get_class_counts()[:3].tolist(), [4, 2, 0])
        lazy = PlacesLT(data_root=self.root, split='test', lazy_init=True)
        self.assertEqual(lazy.metainfo['class_counts'][:2], [4, 2])

    def test_parse_list_file(self):
        path = osp.join(self.root, 'l.txt')
        with open(path, 'w') as f:
            f.write('a/b c.jpg 3\n\nx.jpg\t0\n')
        paths, labels = parse_list_file(path, 4)
        self.assertEqual(paths, ['a/b c.jpg', 'x.jpg'])
        self.assertEqual(labels.tolist(), [3, 0])

    def test_errors(self):
        missing = osp.join(self.root, 'nowhere')
        with self.assertRaisesRegex(FileNotFoundError,
                                    'data root .*nowhere does not exist'):
            ImageNetLT(data_root=missing)
        with self.assertRaisesRegex(FileNotFoundError,
                                    'Places_LT_train.txt not found'):
            PlacesLT(data_root=self.root)
        info = make_list_dataset(self.root, 'places_lt', train_counts=(2, 2))
        with self.assertRaisesRegex(FileNotFoundError,
                                    'Places_LT_test.txt not found'):
            os.remove(info['lists']['test'])
            PlacesLT(data_root=self.root, split='test')
        train_list = info['lists']['train']
        with open(train_list, 'a') as f:
            f.write('data_256/a/x.jpg\n')
        with self.assertRaisesRegex(ValueError,
                                    r'Places_LT_train.txt:5: malformed'):
            PlacesLT(data_root=self.root)
        with open(train_list, 'w') as f:
            f.write('a.jpg 0\nb.jpg 365\n')
        with self.assertRaisesRegex(
                ValueError, r'Places_LT_train.txt:2: label 365 .*K=365'):
            PlacesLT(data_root=self.root, split='val')
        with open(train_list, 'w') as f:
            f.write('a.jpg zero\n')
        with self.assertRaisesRegex(ValueError,
                                    r'train.txt:1: .*not an integer'):
            PlacesLT(data_root=self.root)
        with open(train_list, 'w') as f:
            f.write('missing/a.jpg 0\n')
        with self.assertRaisesRegex(FileNotFoundError,
                                    'missing/a.jpg .*first entry'):
            PlacesLT(data_root=self.root)
        with self.assertRaisesRegex(ValueError, "Unknown split 'dev'"):
            INat2018(data_root=self.root, split='dev')


class TestDatasetConfigs(TestCase):

    def test_configs_load(self):
        expected = {
            'digits_lt.py': ('DigitsLT', 10),
            'cifar10_lt.py': ('CIFAR10LT', 10),
            'cifar100_lt.py': ('CIFAR100LT', 100),
            'imagenet_lt.py': ('ImageNetLT', 1000),
            'places_lt.py': ('PlacesLT', 365),
            'inat2018.py': ('INat2018', 8142),
        }
        for name, (dataset_type, k) in expected.items():
            cfg = Config.fromfile(
                osp.join(REPO, 'configs', '_base_', 'datasets', name))
            self.assertEqual(cfg.dataset_type, dataset_type, name)
            self.assertEqual(cfg.data_preprocessor.num_classes, k, name)
            splits = [
                cfg[f'{s}_dataloader'].dataset.split
                for s in ('train', 'val', 'test')
            ]
            self.assertEqual(splits, ['train', 'val', 'test'], name)
            self.assertTrue(cfg.train_dataloader.sampler.shuffle, name)
            for key in ('val_evaluator', 'test_evaluator'):
                self.assertEqual(cfg[key].type, 'LongTailAccuracy', name)
                METRICS.build(cfg[key])
            for s in ('train', 'val', 'test'):
                self.assertEqual(cfg[f'{s}_dataloader'].dataset.type,
                                 dataset_type)

    def test_digits_config_builds(self):
        cfg = Config.fromfile(
            osp.join(REPO, 'configs', '_base_', 'datasets', 'digits_lt.py'))
        for s in ('train', 'test'):
            ds = DATASETS.build(cfg[f'{s}_dataloader'].dataset)
            self.assertEqual(tuple(ds[0]['inputs'].shape), (3, 8, 8))
            self.assertEqual(ds.get_class_counts().sum(), 369)
