# Copyright (c) galddc_mm contributors. All rights reserved.
"""The runner stops persistent dataloader workers when a run ends.

torch 2.11 waits 5 s for each such worker at exit (2 minutes for the
ResNet-50 recipes); see galddc_mm/engine/runner/loader_workers.py.
"""
import tempfile
from unittest import TestCase, mock

from mmengine.hooks import Hook
from torch.utils.data import DataLoader
from toy_runner import ToySet, toy_runner

from galddc_mm.engine.runner import (
    GALDDCRunner,
    runner_dataloaders,
    stop_loader_workers,
)


def _persistent_loader():
    return dict(
        dataset=ToySet(),
        sampler=dict(type='DefaultSampler', shuffle=False),
        batch_size=4,
        num_workers=2,
        persistent_workers=True)


class RecordWorkers(Hook):
    """Keeps every worker process the loops' iterators start; can fail."""

    def __init__(self, fail_at_epoch=None):
        self.workers = []
        self.fail_at_epoch = fail_at_epoch

    def _record(self, loader):
        iterator = getattr(loader, '_iterator', None)
        for worker in getattr(iterator, '_workers', ()):
            if worker not in self.workers:
                self.workers.append(worker)

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None):
        self._record(runner.train_loop.dataloader)

    def after_val_iter(self, runner, batch_idx, data_batch=None,
                       outputs=None):
        self._record(runner.val_loop.dataloader)

    def after_test_iter(self, runner, batch_idx, data_batch=None,
                        outputs=None):
        self._record(runner.test_loop.dataloader)

    def after_train_epoch(self, runner):
        if runner.epoch + 1 == self.fail_at_epoch:
            raise RuntimeError('planned failure')


class TestStopLoaderWorkers(TestCase):

    def test_stops_and_the_loader_restarts(self):
        loader = DataLoader(ToySet(), batch_size=4, num_workers=2,
                            persistent_workers=True)
        first = list(loader)
        workers = list(loader._iterator._workers)
        self.assertTrue(all(w.is_alive() for w in workers))  # kept alive

        self.assertEqual(stop_loader_workers([loader]), 2)
        self.assertFalse(any(w.is_alive() for w in workers))
        self.assertIsNone(loader._iterator)
        self.assertEqual(stop_loader_workers([loader]), 0)  # none left

        # The loader starts new workers and reads the same batches.
        again = list(loader)
        self.assertEqual(len(again), 2)
        for a, b in zip(first, again):
            self.assertTrue((a['inputs'] == b['inputs']).all())
        self.assertTrue(all(w.is_alive() for w in loader._iterator._workers))
        stop_loader_workers([loader])

    def test_loaders_that_keep_no_iterator_are_left_alone(self):
        plain = DataLoader(ToySet(), batch_size=4, num_workers=2)
        live = iter(plain)  # the caller's iterator, not the loader's
        next(live)
        in_process = DataLoader(ToySet(), batch_size=4)
        list(in_process)
        self.assertEqual(stop_loader_workers([plain, in_process]), 0)
        self.assertTrue(all(w.is_alive() for w in live._workers))
        self.assertEqual(len(list(live)), 1)  # still reads its last batch


class TestRunnerStopsWorkers(TestCase):

    def setUp(self):
        self.tmp = self.enterContext(tempfile.TemporaryDirectory())

    def _runner(self, hook):
        return toy_runner(
            self.tmp, max_epochs=2, runner_cls=GALDDCRunner,
            train_dataloader=_persistent_loader(),
            val_dataloader=_persistent_loader(),
            test_dataloader=_persistent_loader(),
            train_cfg=dict(by_epoch=True, max_epochs=2, val_interval=1),
            custom_hooks=[hook])

    def test_train_then_test_leave_no_worker_alive(self):
        hook = RecordWorkers()
        runner = self._runner(hook)
        with self.assertLogs(runner.logger, 'INFO') as logs:
            runner.train()
        # Training and validation started 2 workers each; all stopped when
        # train() returned, and the log says so.
        self.assertEqual(len(hook.workers), 4)
        self.assertFalse(any(w.is_alive() for w in hook.workers))
        self.assertIn('Stopped the 4 worker processes', '\n'.join(
            logs.output))
        self.assertEqual(len(runner_dataloaders(runner)), 2)  # no test yet

        runner.test()
        self.assertEqual(len(hook.workers), 6)
        self.assertFalse(any(w.is_alive() for w in hook.workers))
        self.assertTrue(all(loader._iterator is None
                            for loader in runner_dataloaders(runner)))

    def test_a_failed_run_stops_its_workers_and_keeps_its_error(self):
        hook = RecordWorkers(fail_at_epoch=1)
        runner = self._runner(hook)
        with self.assertRaisesRegex(RuntimeError, 'planned failure'):
            runner.train()
        self.assertTrue(hook.workers)
        self.assertFalse(any(w.is_alive() for w in hook.workers))

    def test_a_failure_to_stop_is_logged_not_raised(self):
        runner = self._runner(RecordWorkers())
        with mock.patch(
                'galddc_mm.engine.runner.loader_workers.stop_loader_workers',
                side_effect=OSError('no such process')), \
                self.assertLogs(runner.logger, 'WARNING') as logs:
            runner.train()
        self.assertIn('Could not stop the dataloader workers (OSError: no '
                      'such process)', '\n'.join(logs.output))
        stop_loader_workers(runner_dataloaders(runner))
