# Copyright (c) galddc_mm contributors. All rights reserved.
"""End to end: tools/train.py, --resume and tools/test.py on DigitsLT.

The runs use ``configs/baselines/ce_digits_lt.py`` unchanged except for a
few epochs and ``RandomCrop(padding=0)`` (an 8x8 crop of an 8x8 image, so
the augmentation no longer depends on the RNG state and a resumed run can
be compared with an uninterrupted one exactly).
"""
import csv
import json
import os.path as osp
import sys
import tempfile
from unittest import TestCase, mock

import numpy as np
import torch
from conftest import (
    DIGITS_CONFIG,
    REPO_ROOT,
    load_tool,
    parse_metric_tables,
    read_final_metrics,
    read_scalars,
    run_dirs,
    run_tool,
)
from mmengine.config import Config

import galddc_mm  # noqa: F401  (safe loading of mmengine checkpoints)

SHORT = [
    'train_cfg.val_interval=1',
    # Deterministic augmentation, see the module docstring.
    'train_dataloader.dataset.pipeline.0.padding=0',
]
KEYS = ('accuracy/top1', 'accuracy/many', 'accuracy/medium', 'accuracy/few')


def train_args(work_dir, epochs, *extra):
    return [
        'tools/train.py', DIGITS_CONFIG, '--work-dir', work_dir,
        *extra, '--cfg-options', f'train_cfg.max_epochs={epochs}', *SHORT
    ]


class TestTrainResumeTest(TestCase):
    """Shared runs: 2 epochs, resumed to 4, and 4 epochs uninterrupted."""

    @classmethod
    def setUpClass(cls):
        cls._tmp = tempfile.TemporaryDirectory()
        tmp = cls._tmp.name
        cls.resumed_dir = osp.join(tmp, 'resumed')
        cls.straight_dir = osp.join(tmp, 'straight')
        cls.first = run_tool(train_args(cls.resumed_dir, 2))
        cls.first_ckpt = osp.join(cls.resumed_dir, 'epoch_2.pth')
        # Test the 2-epoch checkpoint before the resume adds epochs 3 and 4.
        cls.test_dir = osp.join(tmp, 'test')
        cls.metrics_out = osp.join(tmp, 'test_metrics.json')
        cls.tested = run_tool([
            'tools/test.py', DIGITS_CONFIG, cls.first_ckpt, '--work-dir',
            cls.test_dir, '--out', cls.metrics_out, '--out-item', 'metrics'
        ])
        # ``--resume`` without a value: the latest checkpoint of work_dir.
        cls.resumed = run_tool(train_args(cls.resumed_dir, 4, '--resume'))
        cls.straight = run_tool(train_args(cls.straight_dir, 4))

    @classmethod
    def tearDownClass(cls):
        cls._tmp.cleanup()

    def test_train_prints_and_saves_final_metrics(self):
        final = read_final_metrics(self.resumed_dir, run=0)
        self.assertEqual(final['epoch'], 2)
        val = final['metrics']['val']
        for key in KEYS:
            self.assertIn(key, val)
            self.assertTrue(0 <= val[key] <= 100)
        # The logged table shows the same numbers as the JSON file.
        table = parse_metric_tables(self.first.stdout)[-1]
        for key in KEYS:
            self.assertAlmostEqual(
                table['val'][key.split('/')[1]], val[key], places=2)
        # ... which are the last validation of the run.
        vals = [
            r for r in read_scalars(self.resumed_dir, run=0)
            if 'accuracy/top1' in r
        ]
        self.assertEqual([r['step'] for r in vals], [1, 2])
        for key in KEYS:
            self.assertAlmostEqual(vals[-1][key], val[key], places=4)
        # The best checkpoint is chosen on val top-1 (the later resumed run
        # may have replaced the file).
        best = max(vals, key=lambda r: r['accuracy/top1'])
        self.assertAlmostEqual(final['best_score'], best['accuracy/top1'])
        self.assertTrue(final['best_ckpt'].endswith(
            f'best_accuracy_top1_epoch_{best["step"]}.pth'))

    def test_test_tool_reports_long_tail_metrics(self):
        with open(self.metrics_out) as f:
            dumped = json.load(f)
        final = read_final_metrics(self.test_dir)
        self.assertEqual(final['checkpoint'], self.first_ckpt)
        table = parse_metric_tables(self.tested.stdout)[-1]['test']
        for key in KEYS:
            self.assertAlmostEqual(final['metrics']['test'][key], dumped[key])
            self.assertAlmostEqual(table[key.split('/')[1]], dumped[key],
                                   places=2)
        # Recompute many/medium/few from the per-class file and DigitsLT's
        # training counts [110, 78, 56, 40, 29, 20, 14, 10, 7, 5]:
        # many > 100, few < 20, medium otherwise.
        per_class = osp.join(run_dirs(self.test_dir)[-1],
                             'test_per_class_accuracy.csv')
        with open(per_class) as f:
            rows = list(csv.DictReader(f))
        counts = [int(r['train_count']) for r in rows]
        self.assertEqual(counts, [110, 78, 56, 40, 29, 20, 14, 10, 7, 5])
        acc = np.array([float(r['accuracy']) for r in rows])
        counts = np.array(counts)
        expected = {
            'accuracy/many': acc[counts > 100].mean(),
            'accuracy/medium': acc[(counts >= 20) & (counts <= 100)].mean(),
            'accuracy/few': acc[counts < 20].mean(),
            'accuracy/top1': acc.mean(),  # test set is class-balanced
        }
        for key, value in expected.items():
            self.assertAlmostEqual(dumped[key], value, places=3)

    def test_resume_continues_the_epoch_counter(self):
        self.assertRegex(self.resumed.stdout, r'resumed epoch: 2, iter: 12')
        self.assertEqual(len(run_dirs(self.resumed_dir)), 2)
        epochs = sorted({
            r['epoch']
            for r in read_scalars(self.resumed_dir) if 'epoch' in r
        })
        self.assertEqual(epochs, [3, 4])
        self.assertEqual(read_final_metrics(self.resumed_dir)['epoch'], 4)

    def test_resume_equals_uninterrupted_run(self):
        resumed = read_final_metrics(self.resumed_dir)['metrics']['val']
        straight = read_final_metrics(self.straight_dir)['metrics']['val']
        self.assertEqual(resumed, straight)
        a = torch.load(osp.join(self.resumed_dir, 'epoch_4.pth'))
        b = torch.load(osp.join(self.straight_dir, 'epoch_4.pth'))
        self.assertEqual(a['state_dict'].keys(), b['state_dict'].keys())
        for key in a['state_dict']:
            torch.testing.assert_close(
                a['state_dict'][key], b['state_dict'][key], msg=key)


class TestUpstreamTools(TestCase):
    """MMPretrain's own tools run the config unchanged (custom_imports)."""

    def test_upstream_train_and_test(self):
        import mmpretrain
        tools = osp.join(osp.dirname(mmpretrain.__file__), '.mim', 'tools')
        with tempfile.TemporaryDirectory() as work_dir:
            trained = run_tool([
                osp.join(tools, 'train.py'), DIGITS_CONFIG, '--work-dir',
                work_dir, '--cfg-options', 'train_cfg.max_epochs=1'
            ])
            # Loading the mmengine checkpoint needs the plugin's allow-list
            # (torch>=2.6), which only custom_imports brings in here.
            ckpt = osp.join(work_dir, 'epoch_1.pth')
            proc = run_tool([
                osp.join(tools, 'test.py'), DIGITS_CONFIG, ckpt,
                '--work-dir', work_dir
            ])
            # FinalMetricsHook (default_hooks) writes the summary of both.
            final_train = read_final_metrics(work_dir, run=0)
            final_test = read_final_metrics(work_dir, run=-1)
        self.assertRegex(proc.stdout,
                         r'Epoch\(test\).*accuracy/many.*accuracy/few')
        self.assertEqual(final_train['epoch'], 1)
        self.assertTrue(final_train['best_ckpt'].endswith(
            'best_accuracy_top1_epoch_1.pth'))
        table = parse_metric_tables(trained.stdout)[-1]['val']
        for key in KEYS:
            self.assertAlmostEqual(
                table[key.split('/')[1]], final_train['metrics']['val'][key],
                places=2)
        self.assertEqual(final_test['checkpoint'], ckpt)
        table = parse_metric_tables(proc.stdout)[-1]['test']
        for key in KEYS:
            self.assertAlmostEqual(
                table[key.split('/')[1]], final_test['metrics']['test'][key],
                places=2)


class TestToolArguments(TestCase):
    """The argument handling of the tools, without running them."""

    @classmethod
    def setUpClass(cls):
        cls.train = load_tool('train')
        cls.test = load_tool('test')

    @staticmethod
    def parse(tool, argv):
        # The tools are MMPretrain's: they read sys.argv.
        with mock.patch.object(sys, 'argv', ['tool.py'] + argv):
            return tool.parse_args()

    def merged(self, argv, cfg=None):
        args = self.parse(self.train, [DIGITS_CONFIG] + argv)
        cfg = cfg or Config.fromfile(DIGITS_CONFIG)
        return self.train.merge_args(cfg, args)

    def test_amp_plain_optim_wrapper(self):
        cfg = self.merged(['--amp'])
        self.assertEqual(cfg.optim_wrapper.type, 'AmpOptimWrapper')
        self.assertEqual(cfg.optim_wrapper.loss_scale, 'dynamic')
        self.assertEqual(cfg.optim_wrapper.optimizer.type, 'SGD')

    def test_amp_per_part_optim_wrapper(self):
        cfg = Config(
            dict(
                optim_wrapper=dict(
                    constructor='GALDDCOptimWrapperConstructor',
                    encoder=dict(optimizer=dict(type='SGD', lr=0.1)),
                    head=dict(optimizer=dict(type='SGD', lr=0.1)),
                    diffusion=dict(optimizer=dict(type='AdamW', lr=1e-3)))))
        cfg = self.merged(['--amp'], cfg)
        wrapper = cfg.optim_wrapper
        self.assertEqual(wrapper.type, 'AmpOptimWrapper')
        self.assertEqual(wrapper.loss_scale, 'dynamic')
        self.assertEqual(wrapper.constructor, 'GALDDCOptimWrapperConstructor')
        self.assertEqual(wrapper.diffusion.optimizer.type, 'AdamW')
        # A loss scale given in the config is kept.
        cfg.optim_wrapper.loss_scale = 512.
        self.assertEqual(
            self.merged(['--amp'], cfg).optim_wrapper.loss_scale, 512.)

    def test_amp_without_accelerator_stops_before_training(self):
        # mmengine's AmpOptimWrapper refuses a machine without an
        # accelerator when the optimiser is built, before any iteration.
        with tempfile.TemporaryDirectory() as work_dir:
            proc = run_tool(
                ['tools/train.py', DIGITS_CONFIG, '--amp', '--work-dir',
                 work_dir],
                check=False)
        self.assertNotEqual(proc.returncode, 0)
        self.assertRegex(
            proc.stderr, r'AssertionError: ``AmpOptimizerWrapper`` is only '
            r'available training on gpu')
        self.assertNotIn('Epoch(train)', proc.stdout + proc.stderr)

    def test_resume_and_validation_flags(self):
        cfg = self.merged(['--resume'])
        self.assertTrue(cfg.resume)
        self.assertIsNone(cfg.load_from)
        cfg = self.merged(['--resume', 'x.pth'])
        self.assertTrue(cfg.resume)
        self.assertEqual(cfg.load_from, 'x.pth')
        cfg = self.merged(['--no-validate'])
        self.assertIsNone(cfg.val_dataloader)
        self.assertIsNone(cfg.val_evaluator)
        self.assertIsNone(cfg.val_cfg)

    def test_work_dir_and_dataloader_defaults(self):
        cfg = self.merged([])
        self.assertEqual(cfg.work_dir, osp.join('./work_dirs', 'ce_digits_lt'))
        # num_workers=0: persistent workers would be refused by torch.
        self.assertFalse(cfg.train_dataloader.persistent_workers)
        self.assertEqual(cfg.train_dataloader.collate_fn.type,
                         'default_collate')
        cfg = self.merged(['--no-pin-memory', '--work-dir', 'wd'])
        self.assertFalse(cfg.val_dataloader.pin_memory)
        self.assertEqual(cfg.work_dir, 'wd')

    def test_auto_scale_lr(self):
        cfg = self.merged(['--auto-scale-lr'])
        self.assertTrue(cfg.auto_scale_lr.enable)
        self.assertEqual(cfg.auto_scale_lr.base_batch_size, 64)

    def test_test_tool_arguments(self):
        argv = ['test.py', DIGITS_CONFIG, 'x.pth', '--out-item', 'metrics']
        with mock.patch.object(sys, 'argv', argv), \
                self.assertRaisesRegex(ValueError, r'--out'):
            self.test.main()
        args = self.parse(
            self.test, [DIGITS_CONFIG, 'x.pth', '--tta', '--show-dir', 'vis'])
        cfg = self.test.merge_args(Config.fromfile(DIGITS_CONFIG), args)
        self.assertEqual(cfg.load_from, 'x.pth')
        self.assertEqual(cfg.model.type, 'mmpretrain.AverageClsScoreTTA')
        self.assertEqual(cfg.model.module.type, 'ImageClassifier')
        self.assertTrue(cfg.default_hooks.visualization.enable)
        self.assertEqual(cfg.default_hooks.visualization.out_dir, 'vis')


class TestBaselineConfigs(TestCase):
    """The baseline configs build the models and schedules they describe."""

    def build_model(self, name):
        from mmengine.registry import init_default_scope
        from mmpretrain.registry import MODELS
        cfg = Config.fromfile(
            osp.join(REPO_ROOT, 'configs', 'baselines', f'{name}.py'))
        init_default_scope('mmpretrain')
        return cfg, MODELS.build(cfg.model)

    def test_cifar_resnet32_is_ldam_drw_resnet32(self):
        for name, classes in (('ce_r32_cifar10lt_if100', 10),
                              ('ce_r32_cifar100lt_if100', 100)):
            cfg, model = self.build_model(name)
            # ResNet-32 with option-A shortcuts: 463,504 backbone weights
            # plus a 64 x K linear classifier (464,154 for CIFAR-10).
            params = sum(p.numel() for p in model.parameters())
            self.assertEqual(params, 463504 + 64 * classes + classes)
            self.assertEqual(cfg.data_preprocessor.num_classes, classes)
            logits = model(torch.zeros(2, 3, 32, 32))
            self.assertEqual(logits.shape, (2, classes))

    def test_cifar_schedule_matches_ldam_drw(self):
        from mmengine.registry import PARAM_SCHEDULERS
        cfg = Config.fromfile(
            osp.join(REPO_ROOT, 'configs', 'baselines',
                     'ce_r32_cifar10lt_if100.py'))
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))],
                              lr=cfg.optim_wrapper.optimizer.lr)
        schedulers = [
            PARAM_SCHEDULERS.build(s, default_args=dict(optimizer=opt))
            for s in cfg.param_scheduler
        ]

        def ldam_lr(epoch):  # LDAM-DRW's adjust_learning_rate, 1-based
            if epoch <= 5:
                return 0.1 * epoch / 5
            if epoch > 180:
                return 0.1 * 0.0001
            if epoch > 160:
                return 0.1 * 0.01
            return 0.1

        for epoch in range(cfg.train_cfg.max_epochs):
            self.assertAlmostEqual(
                opt.param_groups[0]['lr'], ldam_lr(epoch + 1), places=9)
            opt.step()  # (no gradient: keeps the step order torch expects)
            for s in schedulers:
                s.step()

    def test_imagenet_and_digits_models(self):
        cfg, model = self.build_model('ce_r50_imagenetlt')
        self.assertEqual(cfg.train_dataloader.batch_size * 8,
                         cfg.auto_scale_lr.base_batch_size)
        self.assertEqual(model.backbone.depth, 50)
        self.assertEqual(model.head.num_classes, 1000)
        cfg, model = self.build_model('ce_digits_lt')
        self.assertEqual(model(torch.zeros(2, 3, 8, 8)).shape, (2, 10))
