# Copyright (c) galddc_mm contributors. All rights reserved.
"""End to end: tools/dist_train.sh and dist_test.sh, 2 CPU processes.

torchrun on a machine without CUDA: galddc_mm switches NCCL to gloo and
``CPUCompatibleDDP`` drops mmengine's ``device_ids``. Each rank logs the
final table (``log_level=DEBUG`` makes mmengine keep one log file per rank);
the evaluator broadcasts the metrics, so both ranks must report the same
numbers, and a 2-process test of a checkpoint must equal a 1-process test.

Both 2-process runs also check the clean exit: rank 1's last collective
finishes on a busy gloo worker thread (``LateLastCollectiveHook`` of
``tests/crash_hook.py``). Before the fix, rank 1 reached interpreter
finalization with that thread still running and was aborted (``terminate
called without an active exception``, exit code -6) after a successful
run, and torchrun failed the job; the runner now joins the group's
threads at exit. The hook changes no number: it runs after the run.
"""
import glob
import os.path as osp
import tempfile
from unittest import TestCase

from conftest import (
    DIGITS_CONFIG,
    free_port,
    hook_config,
    hook_env,
    parse_metric_tables,
    read_final_metrics,
    run_dirs,
    run_tool,
)

CFG = [
    '--cfg-options', 'train_cfg.max_epochs=2', 'train_cfg.val_interval=1',
    'log_level=DEBUG'
]


def rank_tables(work_dir):
    """The last metrics table of each rank's log file, by rank."""
    tables = {}
    for path in glob.glob(osp.join(run_dirs(work_dir)[-1], '*rank*.log')):
        rank = int(osp.splitext(path)[0].rsplit('rank', 1)[1])
        with open(path) as f:
            tables[rank] = parse_metric_tables(f.read())[-1]
    return tables


def _late_collective_config(folder):
    """The CE baseline plus a hook that delays rank 1's last collective."""
    return hook_config(folder, 'late_last_collective', DIGITS_CONFIG,
                       [dict(type='LateLastCollectiveHook', rank=1)])


def _dist_env():
    return hook_env(PORT=str(free_port()))


class TestTwoProcessCPU(TestCase):

    @classmethod
    def setUpClass(cls):
        cls._tmp = tempfile.TemporaryDirectory()
        tmp = cls._tmp.name
        config = _late_collective_config(tmp)
        cls.train_dir = osp.join(tmp, 'train')
        # check=False: the tests below read the exit status and the output.
        cls.trained = run_tool(
            ['tools/dist_train.sh', config, '2', '--work-dir',
             cls.train_dir] + CFG,
            check=False,
            python=['bash'],
            env=_dist_env(),
            timeout=180)
        cls.ckpt = osp.join(cls.train_dir, 'epoch_2.pth')
        if not osp.exists(cls.ckpt):
            raise AssertionError(
                'The 2-process training wrote no epoch_2.pth (exit status '
                f'{cls.trained.returncode}):\n'
                f'{(cls.trained.stdout + cls.trained.stderr)[-4000:]}')
        cls.dist_test_dir = osp.join(tmp, 'dist_test')
        cls.dist_tested = run_tool(
            ['tools/dist_test.sh', config, cls.ckpt, '2',
             '--work-dir', cls.dist_test_dir, '--cfg-options',
             'log_level=DEBUG'],
            check=False,
            python=['bash'],
            env=_dist_env(),
            timeout=180)
        if not glob.glob(
                osp.join(cls.dist_test_dir, '*', 'final_metrics.json')):
            raise AssertionError(
                'The 2-process test wrote no final metrics (exit status '
                f'{cls.dist_tested.returncode}):\n'
                f'{(cls.dist_tested.stdout + cls.dist_tested.stderr)[-4000:]}')
        cls.single_test_dir = osp.join(tmp, 'single_test')
        run_tool([
            'tools/test.py', DIGITS_CONFIG, cls.ckpt, '--work-dir',
            cls.single_test_dir
        ])

    @classmethod
    def tearDownClass(cls):
        cls._tmp.cleanup()

    def test_train_then_test_exit_zero(self):
        for run, proc in (('train', self.trained),
                          ('test', self.dist_tested)):
            with self.subTest(run=run):
                tail = (proc.stdout + proc.stderr)[-3000:]
                self.assertEqual(proc.returncode, 0, tail)
                self.assertNotIn('terminate called', tail)

    def test_gloo_on_cpu(self):
        out = self.trained.stdout + self.trained.stderr
        self.assertIn("using the gloo backend instead of 'nccl'", out)
        self.assertRegex(out, r'Distributed launcher: pytorch')
        self.assertRegex(out, r'Distributed training: True')

    def test_train_ranks_report_same_metrics(self):
        tables = rank_tables(self.train_dir)
        self.assertEqual(sorted(tables), [0, 1])
        self.assertEqual(tables[0], tables[1])
        final = read_final_metrics(self.train_dir)
        self.assertEqual(final['epoch'], 2)
        for key in ('top1', 'many', 'medium', 'few'):
            self.assertAlmostEqual(
                tables[1]['val'][key],
                final['metrics']['val'][f'accuracy/{key}'],
                places=2)

    def test_dist_test_equals_single_process_test(self):
        tables = rank_tables(self.dist_test_dir)
        self.assertEqual(sorted(tables), [0, 1])
        self.assertEqual(tables[0], tables[1])
        dist = read_final_metrics(self.dist_test_dir)['metrics']['test']
        single = read_final_metrics(self.single_test_dir)['metrics']['test']
        self.assertEqual(sorted(dist), sorted(single))
        for key in single:
            self.assertAlmostEqual(dist[key], single[key], places=4)
