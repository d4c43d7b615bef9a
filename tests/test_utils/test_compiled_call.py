# Copyright (c) galddc_mm contributors. All rights reserved.
"""CompiledCall: compiled on the chosen devices, eager elsewhere."""
import copy
from unittest import TestCase

import torch
import torch.nn as nn
from data_utils import CountingBackend
from mmengine.logging import MMLogger

from galddc_mm.utils.compiled_call import CompiledCall


class _Net(nn.Module):
    flag = 'read through'

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        if x.shape[0] == 0:
            raise ValueError('empty batch')
        return self.fc(x).relu()


class TestCompiledCall(TestCase):

    def setUp(self):
        torch._dynamo.reset()
        torch.manual_seed(0)
        self.net = _Net()
        self.x = torch.randn(4, 3)

    def test_compiled_on_the_chosen_devices_only(self):
        backend = CountingBackend()
        eager_here = CompiledCall(self.net, dict(backend=backend))
        torch.testing.assert_close(eager_here(self.x), self.net(self.x))
        self.assertEqual(backend.calls, 0)  # CPU is not in ('cuda', )
        compiled = CompiledCall(self.net, dict(backend=backend), ('cpu', ))
        for x in (self.x, self.x, torch.randn(5, 3)):
            torch.testing.assert_close(compiled(x), self.net(x))
        self.assertGreaterEqual(backend.calls, 1)
        self.assertEqual(compiled.flag, 'read through')
        self.assertIsNone(CompiledCall(self.net).compiled)

    def test_a_failed_compilation_falls_back_and_says_so(self):
        backend = CountingBackend(fail=True)
        call = CompiledCall(self.net, dict(backend=backend), ('cpu', ),
                            name='the net')
        logger = MMLogger.get_current_instance()
        with self.assertLogs(logger, level='WARNING') as logs:
            out = call(self.x)
        self.assertIn('the net: torch.compile failed', logs.output[0])
        torch.testing.assert_close(out, self.net(self.x))
        self.assertIsNone(call.compiled)
        call(self.x)
        self.assertEqual(backend.calls, 1)  # not tried again

    def test_copies(self):
        call = CompiledCall(self.net, None, name='the net')
        copied = copy.deepcopy(call)
        self.assertEqual(copied.flag, 'read through')
        torch.testing.assert_close(copied(self.x), self.net(self.x))

    def test_errors_of_the_call_itself_propagate_and_keep_compiling(self):
        backend = CountingBackend()
        call = CompiledCall(self.net, dict(backend=backend), ('cpu', ))
        torch.testing.assert_close(call(self.x), self.net(self.x))
        self.assertEqual(backend.calls, 1)
        logger = MMLogger.get_current_instance()
        with self.assertNoLogs(logger, level='WARNING'):
            # A shape error, which dynamo reports as its own error type
            # (TorchRuntimeError), then an error raised by fn's code.
            with self.assertRaisesRegex(RuntimeError, 'shape'):
                call(torch.randn(4, 5))
            with self.assertRaisesRegex(ValueError, 'empty batch'):
                call(torch.randn(0, 3))
        # Not switched off: the compiled path is still taken.
        self.assertIsNotNone(call.compiled)
        torch.testing.assert_close(call(self.x), self.net(self.x))
