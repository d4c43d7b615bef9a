# Copyright (c) galddc_mm contributors. All rights reserved.
"""The runner stops persistent dataloader workers when a run ends.

torch 2.11 waits 5 s for each such worker at exit (2 minutes for the
ResNet-50 recipes); see galddc_mm/engine/runner/loader_workers.py.
"""
import pytest
from mmengine.hooks import Hook
from torch.utils.data import DataLoader
from toy_runner import ToySet, toy_runner

from galddc_mm.engine.runner import GALDDCRunner
from galddc_mm.engine.runner.loader_workers import (
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


def _runner(tmp_path, hook, **kwargs):
    return toy_runner(
        str(tmp_path), max_epochs=2, runner_cls=GALDDCRunner,
        train_dataloader=_persistent_loader(),
        val_dataloader=_persistent_loader(),
        test_dataloader=_persistent_loader(),
        train_cfg=dict(by_epoch=True, max_epochs=2, val_interval=1),
        custom_hooks=[hook], **kwargs)


def test_stop_loader_workers_stops_and_the_loader_restarts():
    loader = DataLoader(ToySet(), batch_size=4, num_workers=2,
                        persistent_workers=True)
    first = [b for b in loader]
    workers = list(loader._iterator._workers)
    assert all(w.is_alive() for w in workers)  # persistent: kept alive

    assert stop_loader_workers([loader]) == 2
    assert not any(w.is_alive() for w in workers)
    assert loader._iterator is None
    assert stop_loader_workers([loader]) == 0  # nothing left to stop

    # The loader starts new workers and reads the same batches.
    again = [b for b in loader]
    assert len(again) == len(first) == 2
    assert all((a['inputs'] == b['inputs']).all()
               for a, b in zip(first, again))
    new_workers = loader._iterator._workers
    assert all(w.is_alive() for w in new_workers)
    stop_loader_workers([loader])


def test_loaders_without_kept_iterators_are_left_alone():
    plain = DataLoader(ToySet(), batch_size=4, num_workers=2)
    in_process = DataLoader(ToySet(), batch_size=4)
    for loader in (plain, in_process):
        list(loader)
    assert stop_loader_workers([plain, in_process]) == 0


def test_train_then_test_leaves_no_worker_alive(tmp_path):
    hook = RecordWorkers()
    runner = _runner(tmp_path, hook)
    runner.train()
    # Training (2 per loader) and validation (2) started workers; all
    # stopped when train() returned.
    assert len(hook.workers) == 4
    assert not any(w.is_alive() for w in hook.workers)
    assert len(runner_dataloaders(runner)) == 2  # train, val: test unbuilt

    runner.test()
    assert len(hook.workers) == 6
    assert not any(w.is_alive() for w in hook.workers)
    assert all(loader._iterator is None
               for loader in runner_dataloaders(runner))


def test_a_failed_run_stops_its_workers_and_keeps_its_error(tmp_path):
    hook = RecordWorkers(fail_at_epoch=1)
    runner = _runner(tmp_path, hook)
    with pytest.raises(RuntimeError, match='planned failure'):
        runner.train()
    assert hook.workers
    assert not any(w.is_alive() for w in hook.workers)
