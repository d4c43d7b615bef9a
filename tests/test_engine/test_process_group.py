# Copyright (c) galddc_mm contributors. All rights reserved.
"""The process group's start (gloo on CPU) and end (threads joined)."""
import datetime
import json
import os
import subprocess
import sys
import textwrap
from unittest import TestCase, mock

import torch
import torch.nn as nn
from conftest import free_port, tool_env
from mmengine.model import MMSeparateDistributedDataParallel
from torch import distributed as torch_dist
from torch.nn.parallel import DistributedDataParallel

from galddc_mm.engine.runner import process_group


def _single_process_env():
    return dict(
        RANK='0',
        LOCAL_RANK='0',
        WORLD_SIZE='1',
        MASTER_ADDR='127.0.0.1',
        MASTER_PORT=str(free_port()))


class TestInitProcessGroup(TestCase):

    def test_cpu_uses_gloo_without_set_device(self):
        with mock.patch.object(process_group, 'accelerator_available',
                               return_value=False), \
                mock.patch('torch.cuda.set_device') as set_device, \
                mock.patch.object(process_group.torch_dist,
                                  'init_process_group') as init_pg, \
                mock.patch.object(process_group, '_register_shutdown'):
            process_group.init_process_group('pytorch', 'nccl', timeout=5)
        init_pg.assert_called_once_with(
            backend='gloo', timeout=datetime.timedelta(seconds=5))
        set_device.assert_not_called()

    def test_accelerator_keeps_mmengine_behaviour(self):
        with mock.patch.object(process_group, 'accelerator_available',
                               return_value=True), \
                mock.patch.object(process_group.mmengine_dist,
                                  'init_dist') as init_dist, \
                mock.patch.object(process_group, '_register_shutdown'):
            process_group.init_process_group('pytorch', 'nccl', timeout=5)
        init_dist.assert_called_once_with(
            'pytorch', backend='nccl', init_backend='torch', timeout=5)


class TestShutdown(TestCase):
    """A real one-process gloo group: the shutdown joins its threads."""

    def test_wrapped_model_released_and_threads_joined(self):
        # Groups of other tests in this process may have left threads.
        before = process_group.gloo_worker_threads()
        with mock.patch.dict(os.environ, _single_process_env()), \
                mock.patch.object(process_group, 'accelerator_available',
                                  return_value=False):
            process_group.init_process_group('pytorch', 'nccl')
        try:
            # Imported before the group existed: its default arguments do
            # not hold the group.
            self.assertIn('torch.distributed.nn', sys.modules)
            self.assertEqual(torch_dist.get_backend(), 'gloo')

            class Owner:
                pass

            owner = Owner()
            model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))
            owner.model = DistributedDataParallel(model)
            owner.model(torch.randn(4, 3)).sum().backward()
            process_group.track_model_owner(owner)
            # The group's worker threads run (the test is not vacuous).
            self.assertGreater(process_group.gloo_worker_threads(), before)
        except BaseException:
            torch_dist.destroy_process_group()
            raise
        process_group.shutdown_process_group()
        self.assertFalse(torch_dist.is_initialized())
        self.assertIs(owner.model, model)
        self.assertEqual(process_group.gloo_worker_threads(), before)
        # Nothing to do a second time (the exit handler's call).
        process_group.shutdown_process_group()


class TestReleaseModelWrappers(TestCase):

    def test_whole_and_per_child_wrappers(self):
        # A group started by hand, as the docstring of
        # import_modules_binding_world asks.
        process_group.import_modules_binding_world()
        with mock.patch.dict(os.environ, _single_process_env()):
            torch_dist.init_process_group('gloo')
        try:
            inner = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 1))
            whole = DistributedDataParallel(inner)
            self.assertIs(process_group.release_model_wrappers(whole), inner)

            model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 1))
            first = model[0]
            separate = MMSeparateDistributedDataParallel(model)
            self.assertIsInstance(model._modules['0'], DistributedDataParallel)
            released = process_group.release_model_wrappers(separate)
            self.assertIs(released, model)
            self.assertIs(model[0], first)
            self.assertFalse(
                any(
                    isinstance(m, DistributedDataParallel)
                    for m in model.modules()))
        finally:
            torch_dist.destroy_process_group()


class TestModulesBindingWorld(TestCase):
    """Modules imported after the group starts do not keep it alive."""

    def test_late_imports_leave_no_thread(self):
        # A fresh interpreter: in this one the modules are long imported.
        code = textwrap.dedent("""
            import json, sys
            from galddc_mm.engine.runner import process_group as pg
            not_yet = [m for m in pg.MODULES_BINDING_WORLD
                       if m not in sys.modules]
            pg.init_process_group('pytorch', 'gloo')
            # What user code, or mmengine's AmpOptimWrapper(use_fsdp=True),
            # may import once the group runs.
            import torch.distributed.fsdp.sharded_grad_scaler
            import torch.distributed.nn
            import torch.distributed.optim
            # A collective: the worker that runs it has named its thread
            # (a thread just started may not have yet).
            import torch
            torch.distributed.all_reduce(torch.ones(1))
            running = pg.gloo_worker_threads()
            pg.shutdown_process_group()
            print(json.dumps(dict(not_yet=not_yet, running=running,
                                  left=pg.gloo_worker_threads())))
            """)
        proc = subprocess.run([sys.executable, '-c', code],
                              env=tool_env(_single_process_env()),
                              capture_output=True,
                              text=True,
                              timeout=300)
        self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        self.assertGreater(result['running'], 0)
        self.assertEqual(result['left'], 0, proc.stderr[-3000:])
        # init_process_group had at least one of them still to import.
        self.assertTrue(result['not_yet'])
