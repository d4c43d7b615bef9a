# Copyright (c) galddc_mm contributors. All rights reserved.
"""FinalMetricsHook on a tiny Runner: the table and final_metrics.json.

Through the tools (ours and MMPretrain's) in
``test_tools/test_train_test_tools.py``.
"""
import json
import os.path as osp
import tempfile
from unittest import TestCase

from conftest import parse_metric_tables
from toy_runner import ToyMetric, toy_runner

import galddc_mm  # noqa: F401  (registers the hooks)

HOOKS = dict(
    checkpoint=dict(
        type='AtomicCheckpointHook',
        interval=1,
        save_best='accuracy/top1',
        rule='greater'),
    final_metrics=dict(type='FinalMetricsHook'))


class TestFinalMetricsHook(TestCase):

    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory()
        self.tmp = self._tmp.name

    def tearDown(self):
        self._tmp.cleanup()

    def _run(self, mode, hooks=HOOKS, **kwargs):
        runner = toy_runner(
            osp.join(self.tmp, mode), default_hooks=hooks, **kwargs)
        with self.assertLogs(runner.logger, 'INFO') as logs:
            getattr(runner, mode)()
        path = osp.join(runner.log_dir, 'final_metrics.json')
        final = None
        if osp.exists(path):
            with open(path) as f:
                final = json.load(f)
        # The log records without their "LEVEL:name:" prefix.
        text = '\n'.join(r.getMessage() for r in logs.records)
        return runner, final, text

    def test_train(self):
        runner, final, log = self._run('train', max_epochs=2)
        self.assertEqual(final['metrics'], dict(val=ToyMetric.METRICS))
        self.assertEqual((final['epoch'], final['iter']), (2, 4))
        # Equal scores: the first epoch stays the best.
        self.assertTrue(final['best_ckpt'].endswith(
            'best_accuracy_top1_epoch_1.pth'))
        self.assertEqual(final['best_score'], 75.0)
        self.assertIn('Final metrics (%) after epoch 2 (last evaluation of '
                      'each split):', log)
        table = parse_metric_tables(log)[-1]
        self.assertEqual(table['val'], dict(top1=75.0, many=90.0, few=40.0))
        self.assertRegex(
            log, r'Best checkpoint \(selected on val\): '
            r'\S*best_accuracy_top1_epoch_1\.pth, score 75\.00')

    def test_test_names_the_checkpoint(self):
        self._run('train')
        ckpt = osp.join(self.tmp, 'train', 'epoch_1.pth')
        _, final, log = self._run('test', load_from=ckpt)
        self.assertEqual(final, dict(
            metrics=dict(test=ToyMetric.METRICS), checkpoint=ckpt))
        self.assertIn('Test metrics (%):', log)
        self.assertEqual(parse_metric_tables(log)[-1]['test']['top1'], 75.0)

    def test_val_alone_writes_nothing(self):
        # (mmengine's CheckpointHook with save_best fails in a val-only run:
        # its file backend is set up by before_train.)
        _, final, log = self._run(
            'val', hooks=dict(final_metrics=dict(type='FinalMetricsHook')))
        self.assertIsNone(final)
        self.assertNotIn('metrics (%)', log)
