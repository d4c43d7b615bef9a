# Copyright (c) galddc_mm contributors. All rights reserved.
"""``tools/run_experiments.py``: planning, commands, table maths, runs.

The table maths is checked on fixed inputs against hand-computed values;
collection on fake work-dir trees; one real run goes through the tool end
to end (the CE baseline for 1 epoch: train, then test of its last
checkpoint since that config does not test after training).
"""
import contextlib
import io
import json
import os
import os.path as osp
import sys
import tempfile
from unittest import TestCase

import torch
from conftest import DIGITS_CONFIG, REPO_ROOT, load_tool

rx = load_tool('run_experiments')
GALDDC_CONFIG = osp.join(REPO_ROOT, 'configs', 'galddc', 'r20_digitslt.py')


def fake_run(work_dir, metrics, stamp='20240101_000000'):
    """A work dir with ``final_metrics.json`` holding ``metrics``."""
    path = osp.join(work_dir, stamp, 'final_metrics.json')
    os.makedirs(osp.dirname(path), exist_ok=True)
    with open(path, 'w', encoding='utf-8') as f:
        json.dump(dict(metrics=metrics, epoch=1), f)


def call_main(argv):
    """Run ``main`` in process; returns (exit code, stdout)."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = rx.main(argv)
    return code, buf.getvalue()


class TestParsing(TestCase):

    def test_split_options(self):
        self.assertEqual(rx.split_options('a=1,b.c=x'), ['a=1', 'b.c=x'])
        # Commas inside brackets / quotes, and mmengine's key=a,b lists.
        self.assertEqual(
            rx.split_options('a=[1,2],b="x,y",c=(1,(2,3)),d=4,5,e=f'),
            ['a=[1,2]', 'b="x,y"', 'c=(1,(2,3))', 'd=4,5', 'e=f'])

    def test_parse_variant(self):
        self.assertEqual(
            rx.parse_variant('lam0:model.geometry.lam=0.0,x=[1,2]'),
            ('lam0', ['model.geometry.lam=0.0', 'x=[1,2]']))
        for bad in ('nocolon', 'bad/name:a=1', ':a=1'):
            with self.assertRaisesRegex(ValueError, 'NAME:key=value'):
                rx.parse_variant(bad)
        with self.assertRaisesRegex(ValueError, 'must be key=value'):
            rx.parse_variant('v:')

    def test_plan_and_commands(self):
        runs = rx.plan_runs(['a/ce.py', 'b/gald.py'], [0, 2], 'root',
                            variants=[('lam0', ['m.lam=0'])])
        self.assertEqual(
            [(r.row, r.seed, r.work_dir) for r in runs],
            [('ce', 0, osp.join('root', 'ce', 'seed0')),
             ('ce', 2, osp.join('root', 'ce', 'seed2')),
             ('ce-lam0', 0, osp.join('root', 'ce-lam0', 'seed0')),
             ('ce-lam0', 2, osp.join('root', 'ce-lam0', 'seed2')),
             ('gald', 0, osp.join('root', 'gald', 'seed0')),
             ('gald', 2, osp.join('root', 'gald', 'seed2')),
             ('gald-lam0', 0, osp.join('root', 'gald-lam0', 'seed0')),
             ('gald-lam0', 2, osp.join('root', 'gald-lam0', 'seed2'))])
        run = runs[2]
        self.assertEqual(
            rx.train_command(run, ['x=1'], python='py', script='train.py'),
            ['py', 'train.py', 'a/ce.py', '--work-dir', run.work_dir,
             '--cfg-options', 'randomness.seed=0', 'm.lam=0', 'x=1'])
        self.assertEqual(
            rx.test_command(run, 'c.pth', ['x=1'], python='py',
                            script='test.py'),
            ['py', 'test.py', 'a/ce.py', 'c.pth', '--work-dir', run.work_dir,
             '--cfg-options', 'randomness.seed=0', 'm.lam=0', 'x=1'])
        only = rx.plan_runs(['a/ce.py'], [1], 'root', [('v', ['k=1'])],
                            variants_only=True, labels=['CE'])
        self.assertEqual([r.row for r in only], ['CE-v'])

    def test_plan_errors(self):
        with self.assertRaisesRegex(ValueError, 'same file name'):
            rx.plan_runs(['a/x.py', 'b/x.py'], [0], 'root')
        with self.assertRaisesRegex(ValueError, 'duplicates'):
            rx.plan_runs(['a/x.py'], [0, 0], 'root')
        with self.assertRaisesRegex(ValueError, 'one per config'):
            rx.plan_runs(['a/x.py'], [0], 'root', labels=['A', 'B'])
        with self.assertRaisesRegex(ValueError, 'needs at least one'):
            rx.plan_runs(['a/x.py'], [0], 'root', variants_only=True)
        with self.assertRaisesRegex(ValueError, 'unique'):
            rx.plan_runs(['a/x.py'], [0], 'root',
                         [('v', ['a=1']), ('v', ['a=2'])])


class TestTableMaths(TestCase):

    def test_mean_std(self):
        mean, std = rx.mean_std([90.0, 92.0, 94.0])
        self.assertAlmostEqual(mean, 92.0)
        # Sample std: sqrt(((-2)^2 + 0 + 2^2) / (3 - 1)) = 2.
        self.assertAlmostEqual(std, 2.0)
        mean, std = rx.mean_std([1.0, 2.0])
        self.assertAlmostEqual(std, 0.7071067811865476)
        self.assertEqual(rx.mean_std([5.0]), (5.0, None))
        with self.assertRaisesRegex(ValueError, 'at least one'):
            rx.mean_std([])

    def test_aggregate_and_format(self):
        results = {
            'ce': [{'accuracy/top1': 90.0, 'accuracy/many': 99.0,
                    'accuracy/few': 70.0},
                   {'accuracy/top1': 94.0, 'accuracy/many': 97.0,
                    'accuracy/few': 80.0},
                   None],
            'gald': [{'top1': 93.0, 'head': 98.0, 'tail': 85.0,
                      'many': 100.0}],
        }
        rows = rx.aggregate(results)
        self.assertEqual([r['name'] for r in rows], ['ce', 'gald'])
        ce, gald = rows
        self.assertEqual(ce['num_seeds'], 2)
        self.assertEqual(ce['metrics']['top1']['values'], [90.0, 94.0])
        self.assertAlmostEqual(ce['metrics']['top1']['mean'], 92.0)
        self.assertAlmostEqual(ce['metrics']['top1']['std'],
                               2.8284271247461903)
        self.assertNotIn('medium', ce['metrics'])
        self.assertIsNone(gald['metrics']['top1']['std'])

        self.assertEqual(rx.format_cell(ce['metrics']['few'], 2),
                         '75.00 ± 7.07')
        self.assertEqual(rx.format_cell(None, 2), '-')
        self.assertEqual(rx.format_cell(gald['metrics']['top1'], 1),
                         '93.00')
        partial = dict(mean=1.0, std=None, n=1, values=[1.0])
        self.assertEqual(rx.format_cell(partial, 3, digits=1), '1.0 (1/3)')

        table = rx.format_table(rows, 'test')
        caption, body = table.split('\n\n')
        self.assertIn('sample standard deviation (ddof=1)', caption)
        self.assertEqual(body.splitlines(), [
            '| method | seeds | top-1 | many | medium | few | head | tail |',
            '|---|---|---|---|---|---|---|---|',
            '| ce | 2 | 92.00 ± 2.83 | 98.00 ± 1.41 | - | 75.00 ± 7.07 '
            '| - | - |',
            '| gald | 1 | 93.00 | 100.00 | - | - | 98.00 | 85.00 |',
        ])
        # No run reports head/tail: those columns are left out.
        table = rx.format_table(rx.aggregate({'ce': results['ce']}), 'val')
        self.assertTrue(table.startswith('Val accuracy'))
        self.assertIn('| method | seeds | top-1 | many | medium | few |\n',
                      table)


class TestPairedComparison(TestCase):

    def test_paired_stats_by_hand(self):
        # Differences 2, -1, 4 (the fourth seed lacks the reference).
        stat = rx.paired_stats([90., 85., 88., 70.], [88., 86., 84., None])
        self.assertEqual(stat['diffs'], [2., -1., 4.])
        self.assertAlmostEqual(stat['mean'], 5 / 3)
        # ddof=1: squares of (1/3, -8/3, 7/3) sum to 114/9, over 2.
        self.assertAlmostEqual(stat['std'], (114 / 9 / 2)**0.5)
        self.assertEqual((stat['wins'], stat['n']), (2, 3))
        self.assertIsNone(rx.paired_stats([1.], [None]))

    def test_paired_rows_and_table(self):
        results = {
            'CE': [{'accuracy/top1': 80., 'accuracy/few': 50.},
                   {'accuracy/top1': 82., 'accuracy/few': 55.}],
            'GALD-DC': [{'accuracy/top1': 81., 'accuracy/few': 58.},
                        {'accuracy/top1': 81., 'accuracy/few': 57.}],
        }
        rows = rx.paired_rows(results, 'CE')
        self.assertEqual([r['name'] for r in rows], ['GALD-DC'])
        top1, few = rows[0]['metrics']['top1'], rows[0]['metrics']['few']
        self.assertEqual(top1['diffs'], [1., -1.])
        self.assertEqual(few['wins'], 2)
        self.assertIsNone(rows[0]['metrics']['tail'])
        table = rx.format_paired_table(rows)
        self.assertIn('| GALD-DC | +0.00 ± 1.41 (1/2) | +5.00 ± 4.24 (2/2) '
                      '| - |', table)
        with self.assertRaisesRegex(ValueError, 'no row'):
            rx.paired_rows(results, 'LDMLR')

    def test_seed_keys_follow_the_seed(self):
        runs = rx.plan_runs(['a/x.py'], [3], 'root',
                            seed_keys=['train_dataloader.dataset.seed'])
        self.assertIn('train_dataloader.dataset.seed=3',
                      rx.train_command(runs[0]))


class TestRunner(TestCase):
    """``main`` on fake work dirs, a failing run and one real run."""

    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory()
        self.root = self._tmp.name

    def tearDown(self):
        self._tmp.cleanup()

    def test_dry_run(self):
        fake_run(osp.join(self.root, 'r20_digitslt', 'seed1'),
                 dict(val={'accuracy/top1': 1.0}))
        code, out = call_main([
            DIGITS_CONFIG, GALDDC_CONFIG, '--seeds', '0', '1',
            '--work-root', self.root, '--variant', 'v:model.x=1',
            '--cfg-options', 'a=1', '--skip-existing', '--dry-run'
        ])
        self.assertEqual(code, 0)
        lines = out.splitlines()
        train = [ln for ln in lines if 'train.py' in ln]
        self.assertEqual(len(train), 8)
        self.assertTrue(train[0].endswith(
            f'--work-dir {osp.join(self.root, "ce_digits_lt", "seed0")} '
            '--cfg-options randomness.seed=0 a=1'))
        self.assertIn(
            f'{osp.join(self.root, "ce_digits_lt-v", "seed1")} '
            '--cfg-options randomness.seed=1 model.x=1 a=1', train[3])
        # The finished run is marked, nothing else is.
        skipped = [ln for ln in train if ln.startswith('# finished')]
        self.assertEqual(len(skipped), 1)
        self.assertIn(osp.join('r20_digitslt', 'seed1'), skipped[0])
        self.assertEqual(sum('tools/test.py' in ln for ln in lines), 8)
        # Nothing ran.
        self.assertFalse(osp.exists(osp.join(self.root, 'ce_digits_lt')))

    def test_collect_fake_tree(self):
        for seed, top1 in ((0, 80.0), (1, 84.0), (2, 85.0)):
            fake_run(osp.join(self.root, 'ce_digits_lt', f'seed{seed}'),
                     dict(val={'accuracy/top1': 1.0},
                          test={'accuracy/top1': top1,
                                'accuracy/few': top1 - 10}))
        # seed 2 also has an older run: the newest final metrics count.
        fake_run(osp.join(self.root, 'ce_digits_lt', 'seed2'),
                 dict(test={'accuracy/top1': 0.0}), stamp='20230101_000000')
        out_md = osp.join(self.root, 'table', 'digits.md')
        code, out = call_main([
            DIGITS_CONFIG, '--seeds', '0', '1', '2', '--work-root',
            self.root, '--collect-only', '--out', out_md, '--labels', 'CE'
        ])
        self.assertEqual(code, 0)
        # mean 83, sample std sqrt((9 + 1 + 4) / 2) = sqrt(7) = 2.6458.
        row = '| CE | 3 | 83.00 ± 2.65 | - | - | 73.00 ± 2.65 |'
        self.assertIn(row, out)
        with open(out_md, encoding='utf-8') as f:
            self.assertIn(row, f.read())
        with open(osp.join(self.root, 'table', 'digits.json')) as f:
            saved = json.load(f)
        self.assertEqual(saved['split'], 'test')
        self.assertEqual(saved['rows'][0]['metrics']['top1']['values'],
                         [80.0, 84.0, 85.0])
        self.assertEqual(len(saved['rows'][0]['work_dirs']), 3)
        # --split val reads the val metrics.
        code, out = call_main([
            DIGITS_CONFIG, '--seeds', '0', '1', '--work-root', self.root,
            '--collect-only', '--split', 'val'
        ])
        self.assertIn('| ce_digits_lt | 2 | 1.00 ± 0.00 | - | - | - |', out)

    def test_skip_existing_and_failures(self):
        done = osp.join(self.root, 'ce_digits_lt', 'seed0')
        fake_run(done, dict(test={'accuracy/top1': 70.0}))
        # A "python" that always fails: seed 0 is reused (never run), seed
        # 1 runs and fails.
        failing = osp.join(self.root, 'failing_python')
        with open(failing, 'w') as f:
            f.write('#!/bin/sh\necho "boom: $@"\nexit 3\n')
        os.chmod(failing, 0o755)
        code, out = call_main([
            DIGITS_CONFIG, '--seeds', '0', '1', '--work-root', self.root,
            '--skip-existing', '--python', failing
        ])
        self.assertEqual(code, 1)
        self.assertIn('finished before, skipped', out)
        self.assertIn('FAILED (exit code 3)', out)
        log = osp.join(self.root, 'ce_digits_lt', 'seed1', rx.TRAIN_LOG)
        self.assertIn(f'log: {log}', out)
        with open(log) as f:
            self.assertIn('boom:', f.read())
        self.assertIn('1 run(s) failed', out)
        self.assertIn('| ce_digits_lt | 1 | 70.00 | - | - | - |', out)

        # Without --skip-existing seed 0 is trained again; it fails, and
        # the final metrics of its earlier run must not be counted.
        code, out = call_main([
            DIGITS_CONFIG, '--seeds', '0', '--work-root', self.root,
            '--python', failing, '--fail-fast'
        ])
        self.assertEqual(code, 1)
        self.assertIn('| ce_digits_lt | 0 | - | - | - | - |', out)

    def test_missing_config(self):
        with self.assertRaisesRegex(FileNotFoundError, 'not found'):
            rx.main(['no/such/config.py', '--dry-run'])

    def test_real_run_trains_then_tests(self):
        code, out = call_main([
            DIGITS_CONFIG, '--seeds', '3', '--work-root', self.root,
            '--cfg-options', 'train_cfg.max_epochs=1', '--python',
            sys.executable
        ])
        self.assertEqual(code, 0, out)
        work_dir = osp.join(self.root, 'ce_digits_lt', 'seed3')
        self.assertIn('no test metrics: testing', out)
        for log in (rx.TRAIN_LOG, rx.TEST_LOG):
            self.assertTrue(osp.isfile(osp.join(work_dir, log)))
        # The seed reached the config that was trained.
        from galddc_mm.utils import WorkDir
        with open(WorkDir(work_dir).config()) as f:
            self.assertIn('seed=3', f.read())
        test = rx.read_final_metrics(work_dir, 'test')
        self.assertIn(f'| ce_digits_lt | 1 | {test["accuracy/top1"]:.2f} |',
                      out)
        # Reused without training again.
        code, out = call_main([
            DIGITS_CONFIG, '--seeds', '3', '--work-root', self.root,
            '--skip-existing', '--python', '/nonexistent/python'
        ])
        self.assertEqual(code, 0, out)
        self.assertIn('finished before, skipped', out)


CRT_CONFIG = osp.join(REPO_ROOT, 'configs', 'galddc', 'ablations',
                      'r20_digitslt_crt.py')
# A tiny hybrid GALD-DC run: 1 + 1 + 1 epochs; a tiny stage 2 samples poor
# latents, so the generation gate only warns.
TINY = [
    'train_cfg.stages.0.epochs=1', 'train_cfg.stages.1.epochs=1',
    'train_cfg.stages.1.repeat=1', 'train_cfg.stages.2.epochs=1',
    'custom_hooks.0.gate=warn'
]


class TestSharedStage1(TestCase):
    """``--share-stage1``: one stage 1 per seed, rows start from it."""

    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory()
        self.root = self._tmp.name

    def tearDown(self):
        self._tmp.cleanup()

    def test_plan(self):
        runs = rx.plan_runs([DIGITS_CONFIG, CRT_CONFIG, GALDDC_CONFIG],
                            [0, 1], self.root)
        stage1 = rx.share_stage1(runs, self.root, 'CE')
        # One stage-1 run per seed, by the first GALD-DC-loop config (cRT)
        # with its other stages at 0 epochs.
        self.assertEqual([(r.seed, r.label, r.config) for r in stage1],
                         [(0, 'CE', CRT_CONFIG), (1, 'CE', CRT_CONFIG)])
        self.assertEqual(stage1[1].work_dir,
                         osp.join(self.root, 'stage1', 'seed1'))
        self.assertEqual(stage1[1].pinned_options, [
            'train_cfg.stages.1.epochs=0', 'train_cfg.stages.2.epochs=0'
        ])
        # After the common options, which cannot undo them.
        command = rx.train_command(stage1[1], ['train_cfg.stages.1.epochs=1'])
        self.assertEqual(command[-3:], [
            'train_cfg.stages.1.epochs=1', 'train_cfg.stages.1.epochs=0',
            'train_cfg.stages.2.epochs=0'
        ])
        # The plain MMPretrain config runs as before; the GALD-DC-loop rows
        # load the stage-1 run of their seed and skip stage 1.
        ce, crt, galddc = runs[0], runs[2], runs[5]
        self.assertIsNone(ce.after)
        self.assertEqual(ce.options + ce.pinned_options, [])
        self.assertIs(crt.after, stage1[0])
        self.assertIs(galddc.after, stage1[1])
        ckpt = osp.join(self.root, 'stage1', 'seed1', 'epoch_60.pth')
        self.assertEqual(galddc.pinned_options,
                         [f'load_from={ckpt}', 'train_cfg.stages.0.epochs=0'])
        # Another stage-1 recipe cannot share it; the key is named.
        runs = rx.plan_runs([GALDDC_CONFIG], [0], self.root,
                            variants=[('v', ['model.head.loss.type=Focal'])])
        with self.assertRaisesRegex(ValueError, 'model.head differs'):
            rx.share_stage1(runs, self.root, 'CE')
        with self.assertRaisesRegex(ValueError, 'nothing to share'):
            rx.share_stage1(rx.plan_runs([DIGITS_CONFIG], [0], self.root),
                            self.root, 'CE')

    def test_collect_logit_adjusted_rows(self):
        fake_run(osp.join(self.root, 'ce_digits_lt', 'seed0'),
                 dict(test={'accuracy/top1': 70.0}))
        with open(osp.join(self.root, 'ce_digits_lt', 'seed0',
                           rx.LA_FILE), 'w') as f:
            json.dump(dict(chosen_tau=1.0, test={'accuracy/top1': 74.5}), f)
        code, out = call_main([
            DIGITS_CONFIG, '--seeds', '0', '--work-root', self.root,
            '--collect-only', '--labels', 'CE', '--logit-adjust', 'CE',
            '--paired-against', 'CE'
        ])
        self.assertEqual(code, 0, out)
        self.assertIn('| CE + LA | 1 | 74.50 | - | - | - |', out)
        self.assertIn('| CE + LA | +4.50 (1/1) |', out)
        with self.assertRaisesRegex(ValueError, 'does not have'):
            rx.main([DIGITS_CONFIG, '--logit-adjust', 'LDMLR',
                     '--dry-run'])

    def test_shared_stage1_equals_the_whole_run(self):
        """A row started from the shared stage 1 is the row run whole.

        On the CPU (deterministic kernels) bit for bit: the loop keys every
        random stream by stage and starts each stage's optimisers afresh,
        so skipping stage 1 and loading its checkpoint changes nothing.
        """
        code, out = call_main([
            GALDDC_CONFIG, '--seeds', '0', '--work-root',
            self.root, '--share-stage1', '--stage1-label', 'CE',
            '--logit-adjust', 'CE', '--jobs', '2', '--cfg-options', *TINY
        ])
        self.assertEqual(code, 0, out)
        from galddc_mm.utils import WorkDir
        whole = osp.join(self.root, 'whole')
        code = rx._execute(
            rx.train_command(
                rx.Run(config=GALDDC_CONFIG, seed=0, work_dir=whole), TINY),
            osp.join(whole, 'train.log'))
        self.assertEqual(code, 0)
        shared = osp.join(self.root, 'r20_digitslt', 'seed0')
        # 1 + 1 + 1 epochs whole; 1 + 1 after the shared stage 1.
        whole_state = torch.load(
            osp.join(whole, 'epoch_3.pth'), map_location='cpu',
            weights_only=False)['state_dict']
        shared_state = torch.load(
            osp.join(shared, 'epoch_2.pth'), map_location='cpu',
            weights_only=False)['state_dict']
        self.assertEqual(set(whole_state), set(shared_state))
        for key, value in whole_state.items():
            self.assertTrue(torch.equal(value, shared_state[key]), key)
        self.assertEqual(
            WorkDir(whole).final_metrics('test'),
            WorkDir(shared).final_metrics('test'))
        # The stage-1 runs are the CE row, with its logit-adjusted row.
        stage1 = osp.join(self.root, 'stage1', 'seed0')
        ce = rx.read_final_metrics(stage1, 'test')['accuracy/top1']
        self.assertIn(f'| CE | 1 | {ce:.2f} |', out)
        la = rx.read_logit_adjusted(stage1)['accuracy/top1']
        self.assertIn(f'| CE + LA | 1 | {la:.2f} |', out)
