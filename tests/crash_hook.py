# Copyright (c) galddc_mm contributors. All rights reserved.
"""Test-only hooks that SIGKILL the training process or inject a fault.

Loaded by the resume and reliability tests with
``--cfg-options custom_imports.imports="[galddc_mm,crash_hook]"`` (the
tests folder on PYTHONPATH) and a ``custom_hooks`` entry.
"""
import io
import operator
import os
import signal
import time

import torch
from mmengine.dist import get_rank
from mmengine.fileio import LocalBackend
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmpretrain.registry import HOOKS


@HOOKS.register_module()
class CrashAfterEpochHook(Hook):
    """SIGKILL the process once epoch ``epoch`` (1-based) is checkpointed.

    Its priority is below the CheckpointHook's, so the epoch's checkpoint
    is on disk when the kill lands, as after a crash right after saving.
    """

    priority = 'LOWEST'

    def __init__(self, epoch: int):
        self.epoch = epoch

    def after_train_epoch(self, runner) -> None:
        if runner.epoch + 1 == self.epoch:
            os.kill(os.getpid(), signal.SIGKILL)


class _KillingLoader:
    """Iterates ``loader`` and SIGKILLs the process at batch ``at``."""

    def __init__(self, loader, at: int):
        self.loader = loader
        self.at = at

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for i, batch in enumerate(self.loader):
            if i == self.at:
                os.kill(os.getpid(), signal.SIGKILL)
            yield batch


@HOOKS.register_module()
class FaultInjectionHook(Hook):
    """Inject one fault at a chosen point of a run (test-only).

    Faults (``epoch`` is 1-based as in the checkpoint names, ``iter`` is
    the 0-based index of the batch within the epoch):

    - ``'kill_at_iter'``: SIGKILL before iteration ``iter`` of ``epoch``.
    - ``'hang_at_iter'``: sleep (an hour) before iteration ``iter`` of
      ``epoch``: a rank that is alive but stops taking part.
    - ``'kill_in_extraction'``: SIGKILL when the latent-cache extraction
      reaches batch ``iter`` (any epoch: extraction runs when a cached
      stage is entered, also after a resume).
    - ``'kill_in_save'``: SIGKILL while the checkpoint of ``epoch`` is
      being written: half of its bytes are on disk (flushed and synced) in
      whatever file they were going to, the rest never comes.
    - ``'nan_loss'``: from iteration ``iter`` of ``epoch`` on, the loss
      module at ``loss`` (an attribute path of the model, e.g.
      ``'diffusion_head.proto_loss'``) returns NaN.

    Args:
        fault (str): One of the faults above.
        epoch (int): The epoch of the fault. Defaults to 1.
        iter (int): The iteration / batch of the fault. Defaults to 0.
        loss (str): The loss module of ``'nan_loss'``. Defaults to ''.
        rank (int, optional): Only this rank injects the fault. Defaults
            to None (every rank).
    """

    priority = 'LOWEST'
    FAULTS = ('kill_at_iter', 'hang_at_iter', 'kill_in_extraction',
              'kill_in_save', 'nan_loss')

    def __init__(self, fault: str, epoch: int = 1, iter: int = 0,
                 loss: str = '', rank=None):
        if fault not in self.FAULTS:
            raise ValueError(f'fault must be one of {self.FAULTS}, got '
                             f'{fault!r}.')
        self.fault = fault
        self.epoch = epoch
        self.iter = iter
        self.loss = loss
        self.rank = rank

    def _armed(self) -> bool:
        return self.rank is None or get_rank() == self.rank

    def before_train(self, runner) -> None:
        if self.fault != 'kill_in_extraction' or not self._armed():
            return
        loop = runner.train_loop
        build = loop.build_extract_dataloader
        # An instance attribute shadows the method for this run only.
        loop.build_extract_dataloader = lambda: _KillingLoader(
            build(), self.iter)

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if runner.epoch + 1 != self.epoch or batch_idx != self.iter:
            return
        if not self._armed():
            return
        if self.fault == 'kill_at_iter':
            os.kill(os.getpid(), signal.SIGKILL)
        if self.fault == 'hang_at_iter':
            time.sleep(3600)
        if self.fault == 'nan_loss':
            model = runner.model
            model = model.module if is_model_wrapper(model) else model
            module = operator.attrgetter(self.loss)(model)
            forward = module.forward
            module.forward = lambda *a, **k: forward(*a, **k) * float('nan')

    def before_save_checkpoint(self, runner, checkpoint) -> None:
        if self.fault != 'kill_in_save' or not self._armed():
            return
        if checkpoint['meta']['epoch'] != self.epoch:
            return
        real_save = torch.save

        def write_half_then_die(data, f):
            if isinstance(f, (str, os.PathLike)):
                f = open(f, 'wb')
            f.write(data[:len(data) // 2])
            f.flush()
            os.fsync(f.fileno())
            os.kill(os.getpid(), signal.SIGKILL)

        def save(obj, f, *args, **kwargs):
            if isinstance(f, io.BytesIO):  # serialised first, written later
                return real_save(obj, f, *args, **kwargs)
            buf = io.BytesIO()
            real_save(obj, buf, *args, **kwargs)
            write_half_then_die(buf.getvalue(), f)

        # Whichever writes the bytes to disk dies half-way: torch.save
        # streaming into a file, or mmengine's LocalBackend.put of the
        # bytes it serialised into memory.
        torch.save = save
        LocalBackend.put = lambda self, obj, filepath: write_half_then_die(
            obj, filepath)


@HOOKS.register_module()
class LateLastCollectiveHook(Hook):
    """Rank ``rank``'s last collective ends late on a gloo worker thread.

    What a loaded machine does at random, made certain: after the run
    (``after_run``, so for ``train``, ``val`` and ``test``) every rank
    joins one more all-reduce; the other ranks join ``delay`` seconds late,
    so rank ``rank`` attaches a completion callback while the work is still
    pending. The callback then runs on the gloo worker thread and sleeps
    ``hold`` seconds with the GIL released; when it wakes it must take the
    GIL again. A process that reaches interpreter finalization meanwhile
    is aborted by the runtime (``terminate called without an active
    exception``, SIGABRT) after a successful run; one that joins the
    group's threads first is not.

    Args:
        rank (int): The late rank. Defaults to 1.
        delay (float): Seconds the other ranks wait. Defaults to 0.5.
        hold (float): Seconds the worker thread stays busy. Defaults to 1.5.
    """

    priority = 'LOWEST'

    def __init__(self, rank: int = 1, delay: float = 0.5, hold: float = 1.5):
        self.rank = rank
        self.delay = delay
        self.hold = hold
        self._pending = []

    def after_run(self, runner) -> None:
        import torch.distributed as torch_dist
        if not (torch_dist.is_available() and torch_dist.is_initialized()):
            return
        if get_rank() != self.rank:
            time.sleep(self.delay)
        work = torch_dist.all_reduce(torch.ones(1), async_op=True)
        if get_rank() == self.rank:
            hold = self.hold
            self._pending.append(
                work.get_future().then(lambda fut: time.sleep(hold)))
