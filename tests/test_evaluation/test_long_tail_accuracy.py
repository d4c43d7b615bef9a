# Copyright (c) galddc_mm contributors. All rights reserved.
import csv
import json
import os
import os.path as osp
import tempfile
from unittest import TestCase

import numpy as np
import torch
from mmengine.evaluator import Evaluator
from mmengine.logging import MMLogger
from mmpretrain.registry import METRICS
from mmpretrain.structures import DataSample

from galddc_mm.datasets import DigitsLT
from galddc_mm.evaluation.metrics import LongTailAccuracy

# Training counts: many {0, 1}, medium {2, 3}, few {4, 5}; tau=40 gives
# head {0, 1, 2}, tail {3, 4, 5}.
COUNTS = [200, 150, 50, 30, 10, 5]
# (label, ranking of the 6 classes, best first)
SAMPLES = [
    (0, [0, 1, 2, 3, 4, 5]),  # top1 yes
    (0, [1, 0, 2, 3, 4, 5]),  # top1 no, top5 yes
    (1, [1, 0, 2, 3, 4, 5]),  # yes
    (2, [3, 2, 0, 1, 4, 5]),  # no, top5 yes
    (2, [2, 0, 1, 3, 4, 5]),  # yes
    (2, [2, 1, 0, 3, 4, 5]),  # yes
    (3, [0, 1, 2, 4, 5, 3]),  # no, top5 no (rank 6)
    (4, [4, 0, 1, 2, 3, 5]),  # yes
    (5, [0, 1, 2, 5, 3, 4]),  # no, top5 yes
    (5, [5, 0, 1, 2, 3, 4]),  # yes
]
# Hand-computed: per-class top-1 = [1/2, 1/1, 2/3, 0/1, 1/1, 1/2].
EXPECTED = {
    'accuracy/top1': 60.0,
    'accuracy/top5': 90.0,
    'accuracy/many': (50 + 100) / 2,
    'accuracy/medium': (200 / 3 + 0) / 2,
    'accuracy/few': (100 + 50) / 2,
    'accuracy/head': (50 + 100 + 200 / 3) / 3,
    'accuracy/tail': (0 + 100 + 50) / 3,
    'accuracy/mean_class': (50 + 100 + 200 / 3 + 0 + 100 + 50) / 6,
}
EXPECTED_SAMPLE_AVG = {
    'accuracy/many': 200 / 3,
    'accuracy/medium': 50.0,
    'accuracy/few': 200 / 3,
    'accuracy/head': 400 / 6,
    'accuracy/tail': 50.0,
}


def make_samples(samples=SAMPLES, num_classes=6, with_score=True):
    out = []
    for label, ranking in samples:
        sample = DataSample().set_gt_label(label)
        if with_score:
            score = torch.zeros(num_classes)
            # Unranked classes keep score 0, below every ranked one.
            score[torch.tensor(ranking)] = torch.arange(
                len(ranking), 0, -1, dtype=torch.float)
            sample.set_pred_score(score.softmax(0))
        else:
            sample.set_pred_label(ranking[0])
        out.append(sample.to_dict())
    return out


def run(metric, samples, meta=None, batch=4):
    if meta is not None:
        metric.dataset_meta = meta
    for i in range(0, len(samples), batch):
        metric.process(None, samples[i:i + batch])
    return metric.evaluate(len(samples))


class TestLongTailAccuracy(TestCase):

    def setUp(self):
        # A logger without a file, so no per-class files unless asked.
        MMLogger.get_instance('test_metric_no_file')

    def assertMetrics(self, result, expected):
        self.assertEqual(set(result), set(expected))
        for key, value in expected.items():
            self.assertAlmostEqual(result[key], value, places=4, msg=key)

    def test_hand_computed(self):
        metric = METRICS.build(dict(type='LongTailAccuracy', tau=40))
        result = run(metric, make_samples(), dict(class_counts=COUNTS))
        self.assertMetrics(result, EXPECTED)

    def test_sample_average(self):
        metric = LongTailAccuracy(tau=40, average='sample')
        result = run(metric, make_samples(), dict(class_counts=COUNTS))
        expected = dict(EXPECTED, **EXPECTED_SAMPLE_AVG)
        self.assertMetrics(result, expected)

    def test_through_evaluator(self):
        evaluator = Evaluator(LongTailAccuracy(topk=(1, 2, 5), tau=40))
        evaluator.dataset_meta = dict(class_counts=COUNTS)
        samples = [DataSample(**s) for s in make_samples()]
        evaluator.process(samples[:5])
        evaluator.process(samples[5:])
        result = evaluator.evaluate(10)
        # top-2 by hand: samples 2 and 4 now hit, 7 and 9 still miss.
        self.assertAlmostEqual(result['accuracy/top2'], 80.0, places=4)
        self.assertAlmostEqual(result['accuracy/top5'], 90.0, places=4)
        self.assertAlmostEqual(result['accuracy/many'], 75.0, places=4)

    def test_thresholds_and_empty_band(self):
        # many_thr=40 -> many {0, 1, 2}; few_thr=5 -> no few class (n < 5).
        metric = LongTailAccuracy(many_thr=40, few_thr=5, topk=1)
        result = run(metric, make_samples(), dict(class_counts=COUNTS))
        self.assertNotIn('accuracy/few', result)
        self.assertNotIn('accuracy/head', result)
        self.assertNotIn('accuracy/top5', result)
        self.assertAlmostEqual(result['accuracy/many'],
                               (50 + 100 + 200 / 3) / 3, places=4)
        self.assertAlmostEqual(result['accuracy/medium'],
                               (0 + 100 + 50) / 3, places=4)

    def test_classes_without_eval_samples(self):
        # Class 1 (many) has no evaluation sample: left out of the averages.
        samples = [s for s in SAMPLES if s[0] != 1]
        metric = LongTailAccuracy()
        result = run(metric, make_samples(samples), dict(class_counts=COUNTS))
        self.assertAlmostEqual(result['accuracy/many'], 50.0, places=4)
        self.assertAlmostEqual(result['accuracy/mean_class'],
                               (50 + 200 / 3 + 0 + 100 + 50) / 5, places=4)
        self.assertAlmostEqual(result['accuracy/top1'], 500 / 9, places=4)

    def test_labels_only_and_small_k(self):
        metric = LongTailAccuracy(class_counts=COUNTS)
        result = run(metric, make_samples(with_score=False))
        self.assertAlmostEqual(result['accuracy/top1'], 60.0, places=4)
        self.assertNotIn('accuracy/top5', result)
        # K = 5: top-5 would be trivially 100%, so it is skipped.
        samples = [(0, [0, 1, 2, 3, 4]), (4, [1, 4, 0, 2, 3])]
        metric = LongTailAccuracy(class_counts=[300, 200, 50, 10, 1])
        result = run(metric, make_samples(samples, num_classes=5))
        self.assertEqual(result['accuracy/top1'], 50.0)
        self.assertNotIn('accuracy/top5', result)
        self.assertEqual(result['accuracy/many'], 100.0)
        self.assertEqual(result['accuracy/few'], 0.0)

    def test_class_counts_override(self):
        # The argument wins over the data set's counts.
        metric = LongTailAccuracy(class_counts=COUNTS, tau=40)
        result = run(metric, make_samples(), dict(class_counts=[1] * 6))
        self.assertMetrics(result, EXPECTED)

    def test_per_class_files(self):
        names = ('a', 'b', 'c', 'd', 'e', 'f')
        with tempfile.TemporaryDirectory() as tmp:
            metric = LongTailAccuracy(
                tau=40, save_dir=tmp, per_class_file='val_pc')
            result = run(metric, make_samples(),
                         dict(class_counts=COUNTS, classes=names))
            with open(osp.join(tmp, 'val_pc.json')) as f:
                report = json.load(f)
            with open(osp.join(tmp, 'val_pc.csv'), newline='') as f:
                rows = list(csv.DictReader(f))
        self.assertEqual(report['metrics'], result)
        self.assertEqual((report['many_thr'], report['few_thr'],
                          report['tau'], report['average']),
                         (100, 20, 40, 'class'))
        accs = [50.0, 100.0, 200 / 3, 0.0, 100.0, 50.0]
        for c, (entry, row) in enumerate(zip(report['classes'], rows)):
            self.assertEqual(entry['class_idx'], c)
            self.assertEqual(entry['class_name'], names[c])
            self.assertEqual(entry['train_count'], COUNTS[c])
            self.assertEqual(entry['band'],
                             ['many', 'medium', 'few'][c // 2])
            self.assertEqual(entry['group'], 'head' if c < 3 else 'tail')
            self.assertAlmostEqual(entry['accuracy'], accs[c], places=4)
            self.assertEqual(row['class_name'], names[c])
            self.assertEqual(int(row['train_count']), COUNTS[c])
            self.assertEqual(row['band'], entry['band'])
            self.assertAlmostEqual(float(row['accuracy']), accs[c], places=4)
        self.assertEqual([int(r['num_eval']) for r in rows],
                         [2, 1, 3, 1, 1, 2])
        self.assertEqual([int(r['num_correct']) for r in rows],
                         [1, 1, 2, 0, 1, 1])

    def test_default_save_dir_is_log_dir(self):
        with tempfile.TemporaryDirectory() as tmp:
            logger = MMLogger.get_instance(
                'test_metric_with_file', log_file=osp.join(tmp, 'run.log'))
            try:
                samples = [s for s in SAMPLES if s[0] != 3]
                run(LongTailAccuracy(), make_samples(samples),
                    dict(class_counts=COUNTS))
                with open(osp.join(tmp, 'per_class_accuracy.csv')) as f:
                    rows = list(csv.DictReader(f))
                # Class 3 had no evaluation sample: empty accuracy.
                self.assertEqual(rows[3]['accuracy'], '')
                self.assertEqual(rows[3]['num_eval'], '0')
                self.assertEqual(rows[0]['group'], '')
                # per_class_file=None disables the files.
                os.remove(osp.join(tmp, 'per_class_accuracy.csv'))
                run(LongTailAccuracy(per_class_file=None),
                    make_samples(), dict(class_counts=COUNTS))
                self.assertFalse(
                    osp.exists(osp.join(tmp, 'per_class_accuracy.csv')))
            finally:
                for handler in logger.handlers:
                    handler.close()
                MMLogger.get_instance('test_metric_no_file_again')

    def test_no_files_without_log_file(self):
        with tempfile.TemporaryDirectory() as tmp:
            cwd = os.getcwd()
            os.chdir(tmp)
            try:
                run(LongTailAccuracy(), make_samples(),
                    dict(class_counts=COUNTS))
                self.assertEqual(os.listdir(tmp), [])
            finally:
                os.chdir(cwd)

    def test_with_long_tail_dataset_meta(self):
        # The contract with the data sets: training counts of the test
        # split come through its metainfo.
        test = DigitsLT(split='test')
        labels = [test.get_data_info(i)['gt_label'] for i in range(len(test))]
        samples = []
        for label in labels:
            ranking = [label] + [c for c in range(10) if c != label]
            samples.append((label, ranking))
        result = run(LongTailAccuracy(), make_samples(samples, 10),
                     test.metainfo, batch=64)
        for key in ('top1', 'top5', 'many', 'medium', 'few', 'mean_class'):
            self.assertEqual(result[f'accuracy/{key}'], 100.0)

    def test_errors(self):
        with self.assertRaisesRegex(RuntimeError, 'class_counts'):
            run(LongTailAccuracy(), make_samples(), dict(classes=('a', )))
        with self.assertRaisesRegex(ValueError, '7 class scores.*6 entries'):
            run(LongTailAccuracy(), make_samples(num_classes=7),
                dict(class_counts=COUNTS))
        with self.assertRaisesRegex(ValueError, r'labels span \[0, 5\]'):
            run(LongTailAccuracy(), make_samples(with_score=False),
                dict(class_counts=[5, 4, 3]))
        with self.assertRaisesRegex(ValueError, 'topk'):
            LongTailAccuracy(topk=(0, 1))
        with self.assertRaisesRegex(ValueError, 'few_thr'):
            LongTailAccuracy(many_thr=10, few_thr=20)
        with self.assertRaisesRegex(ValueError, 'average'):
            LongTailAccuracy(average='macro')
        with self.assertRaisesRegex(ValueError, 'tau'):
            LongTailAccuracy(tau=-1)
        with self.assertRaisesRegex(ValueError, 'non-negative integers'):
            LongTailAccuracy(class_counts=[[1, 2]])
        with self.assertRaisesRegex(ValueError, 'non-negative integers'):
            LongTailAccuracy(class_counts=[3, -1])
        with self.assertRaisesRegex(ValueError, 'non-negative integers'):
            LongTailAccuracy(class_counts=np.array([1.5, 2.0]))


class TestLogitAdjustment(TestCase):
    """Post-hoc logit adjustment against a hand computation."""

    # Two classes with counts 90 and 10 (prior 0.9, 0.1); logits below.
    LOGITS = [[2.0, 1.0], [2.0, 0.5], [0.0, 1.0]]
    LABELS = [1, 1, 0]

    def _samples(self):
        out = []
        for logits, label in zip(self.LOGITS, self.LABELS):
            sample = DataSample().set_gt_label(label)
            sample.set_pred_score(torch.tensor(logits).softmax(0))
            out.append(sample.to_dict())
        return out

    def _top1(self, tau):
        metric = LongTailAccuracy(
            topk=1, class_counts=[90, 10], logit_adjust_tau=tau,
            per_class_file=None)
        return run(metric, self._samples())['accuracy/top1']

    def test_hand_computation(self):
        # tau * log(prior) = tau * (log 0.9, log 0.1) = tau * (-0.105,
        # -2.303). Adjusted logits, tau = 1:
        #   [2.105, 3.303] -> 1 (right), [2.105, 2.803] -> 1 (right),
        #   [0.105, 3.303] -> 1 (wrong): 2/3.
        # tau = 0.5: [2.053, 2.151] -> 1, [2.053, 1.651] -> 0,
        #   [0.053, 2.151] -> 1: 1/3. tau = 0: argmax of the logits:
        #   0, 0, 1: 0/3.
        self.assertAlmostEqual(self._top1(1.0), 200 / 3)
        self.assertAlmostEqual(self._top1(0.5), 100 / 3)
        self.assertAlmostEqual(self._top1(0.0), 0.0)

    def test_adjusted_scores_equal_logits_minus_tau_log_prior(self):
        metric = LongTailAccuracy(class_counts=[90, 10, 0],
                                  logit_adjust_tau=1.5)
        logits = torch.tensor([0.3, -1.0, 2.0])
        got = metric.adjust(logits.softmax(0))
        # An empty class counts as one image: prior (90, 10, 1) / 101.
        prior = np.array([90, 10, 1]) / 101
        want = logits.double().numpy() - 1.5 * np.log(prior)
        # Equal up to the per-sample constant logsumexp(logits).
        diff = got.numpy() - want
        np.testing.assert_allclose(diff, diff[0], atol=1e-9)

    def test_needs_scores_and_valid_tau(self):
        with self.assertRaisesRegex(ValueError, 'logit_adjust_tau'):
            LongTailAccuracy(logit_adjust_tau=-1)
        metric = LongTailAccuracy(class_counts=COUNTS, logit_adjust_tau=1)
        with self.assertRaisesRegex(ValueError, 'pred_score'):
            metric.process(None, make_samples(with_score=False))
