# Copyright (c) galddc_mm contributors. All rights reserved.
"""A test-only hook that SIGKILLs the training process at a chosen point.

Loaded by the resume tests with
``--cfg-options custom_imports.imports="[galddc_mm,crash_hook]"`` (the
tests folder on PYTHONPATH) and a ``custom_hooks`` entry.
"""
import os
import signal

from mmengine.hooks import Hook
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
