# Copyright (c) galddc_mm contributors. All rights reserved.
"""Checkpoint loading under torch>=2.6's ``weights_only=True``.

``galddc_mm.utils.safe_loading``: the allow-list of mmengine's checkpoint
content, the clear refusal of anything else (directly, through mmengine's
loaders, ``Pretrained`` init and the tools), and the warning filters.
"""
import os
import os.path as osp
import pickle
import tempfile
import zipfile
from collections import OrderedDict
from unittest import TestCase, mock

import numpy as np
import torch
import torch.nn as nn
from conftest import DIGITS_CONFIG, run_tool
from mmengine.logging import HistoryBuffer
from mmengine.runner import Runner
from mmengine.runner.checkpoint import _load_checkpoint, load_checkpoint
from toy_runner import ToyModel, ToySet

import galddc_mm  # noqa: F401  (registers the safe loaders)
from galddc_mm.utils import (
    UnsafeCheckpointError,
    safe_torch_load,
    silence_known_warnings,
)
from galddc_mm.utils.safe_loading import _history_buffer_getattr


class _Payload:
    """Pickles as ``os.system('touch <marker>')``: runs when unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}', ))


class _GetattrPayload:
    """Pickles as ``getattr(HistoryBuffer, '__init__')``."""

    def __reduce__(self):
        return (getattr, (HistoryBuffer, '__init__'))


def save_malicious(path, marker):
    """A checkpoint-looking file whose ``meta`` runs a shell command."""
    torch.save(
        {
            'meta': _Payload(marker),
            'state_dict': OrderedDict(w=torch.ones(2))
        }, path)


def write_runner_checkpoint(work_dir):
    """Train a toy model 1 epoch with mmengine's Runner; return the ckpt."""
    runner = Runner(
        model=ToyModel(),
        work_dir=work_dir,
        train_dataloader=dict(
            dataset=ToySet(),
            sampler=dict(type='DefaultSampler', shuffle=True),
            batch_size=4,
            num_workers=0),
        optim_wrapper=dict(
            optimizer=dict(type='SGD', lr=0.01, momentum=0.9)),
        param_scheduler=dict(type='MultiStepLR', milestones=[1]),
        train_cfg=dict(by_epoch=True, max_epochs=1),
        default_hooks=dict(
            logger=dict(type='LoggerHook', interval=1),
            checkpoint=dict(type='CheckpointHook', interval=1)),
        randomness=dict(seed=0),
        default_scope='mmpretrain',
        experiment_name=f'compat_{os.getpid()}')
    runner.train()
    return osp.join(work_dir, 'epoch_1.pth')


class TestSafeCheckpointLoading(TestCase):

    @classmethod
    def setUpClass(cls):
        cls._tmp = tempfile.TemporaryDirectory()
        cls.tmp = cls._tmp.name
        cls.ckpt = write_runner_checkpoint(osp.join(cls.tmp, 'runner'))

    @classmethod
    def tearDownClass(cls):
        cls._tmp.cleanup()

    def test_runner_checkpoint_needs_only_allowed_globals(self):
        # The allow-list covers everything mmengine puts in a checkpoint:
        # the static scan (no unpickling) finds nothing left.
        self.assertEqual(
            torch.serialization.get_unsafe_globals_in_checkpoint(self.ckpt),
            [])

    def test_runner_checkpoint_loads_with_torch_defaults(self):
        ckpt = torch.load(self.ckpt)  # weights_only=True by default
        self.assertEqual(ckpt['meta']['epoch'], 1)
        self.assertIn('linear.weight', ckpt['state_dict'])
        buffer = ckpt['message_hub']['log_scalars']['train/loss']
        self.assertIsInstance(buffer, HistoryBuffer)
        # The statistics methods came back through the restricted getattr.
        losses = buffer.data[0]
        self.assertAlmostEqual(buffer.statistics('mean'), losses.mean())
        self.assertAlmostEqual(buffer.max(), losses.max())
        self.assertIsInstance(ckpt['message_hub']['runtime_info']['eta'],
                              np.floating)

    def test_mmengine_load_path_and_runner_resume(self):
        ckpt = _load_checkpoint(self.ckpt, map_location='cpu')
        self.assertEqual(ckpt['meta']['iter'], 2)
        runner = Runner(
            model=ToyModel(),
            work_dir=osp.join(self.tmp, 'resume'),
            train_dataloader=dict(
                dataset=ToySet(),
                sampler=dict(type='DefaultSampler', shuffle=True),
                batch_size=4,
                num_workers=0),
            optim_wrapper=dict(
                optimizer=dict(type='SGD', lr=0.01, momentum=0.9)),
            param_scheduler=dict(type='MultiStepLR', milestones=[1]),
            train_cfg=dict(by_epoch=True, max_epochs=1),
            default_scope='mmpretrain',
            experiment_name=f'compat_resume_{os.getpid()}')
        runner.resume(self.ckpt)
        self.assertEqual(runner.epoch, 1)
        self.assertEqual(runner.iter, 2)
        torch.testing.assert_close(runner.model.linear.weight.cpu(),
                                   ckpt['state_dict']['linear.weight'])

    def test_plain_state_dict_loads(self):
        # A torchvision-style weight file: an OrderedDict of tensors.
        from mmpretrain.models import ResNet
        src = nn.Sequential(OrderedDict(conv1=nn.Conv2d(3, 64, 7, 2, 3)))
        with torch.no_grad():
            src.conv1.weight.copy_(
                torch.arange(src.conv1.weight.numel()).view_as(
                    src.conv1.weight) / 1000.)
        path = osp.join(self.tmp, 'plain.pth')
        torch.save(src.state_dict(), path)
        self.assertIsInstance(torch.load(path), OrderedDict)
        model = ResNet(depth=18)
        load_checkpoint(model, path, map_location='cpu')
        torch.testing.assert_close(model.conv1.weight, src.conv1.weight)

    def test_refuses_and_does_not_execute_payload(self):
        marker = osp.join(self.tmp, 'pwned_direct')
        path = osp.join(self.tmp, 'evil.pth')
        save_malicious(path, marker)
        for load in (lambda: _load_checkpoint(path),
                     lambda: safe_torch_load(path)):
            with self.assertRaisesRegex(
                    UnsafeCheckpointError,
                    r'Refused to load checkpoint .*evil\.pth.*'
                    r'posix\.system.*Nothing from the file was executed'):
                load()
        self.assertFalse(osp.exists(marker))
        # The payload is real: an unsafe load would have run it.
        torch.load(path, weights_only=False)
        self.assertTrue(osp.exists(marker))

    def test_restricted_getattr(self):
        path = osp.join(self.tmp, 'getattr.pth')
        torch.save({'x': _GetattrPayload()}, path)
        # The scan cannot see it (``builtins.getattr`` is allow-listed by
        # name), the restricted stand-in refuses it.
        with self.assertRaisesRegex(UnsafeCheckpointError,
                                    r"getattr\(.*HistoryBuffer.*'__init__'\)"
                                    r' is not allowed'):
            _load_checkpoint(path)
        self.assertIs(_history_buffer_getattr(HistoryBuffer, 'mean'),
                      HistoryBuffer.mean)
        with self.assertRaisesRegex(pickle.UnpicklingError,
                                    'is not allowed'):
            _history_buffer_getattr(os, 'system')

    def test_numpy1_module_paths(self):
        # numpy<2 wrote ``numpy.core.multiarray``; the aliases accept it.
        src = osp.join(self.tmp, 'np2.pth')
        torch.save({'a': np.arange(3.), 's': np.float64(2.5)}, src)
        dst = osp.join(self.tmp, 'np1.pth')
        with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, 'w') as zout:
            for item in zin.infolist():
                data = zin.read(item.filename)
                if item.filename.endswith('data.pkl'):
                    self.assertIn(b'numpy._core.multiarray', data)
                    data = data.replace(b'numpy._core.multiarray',
                                        b'numpy.core.multiarray')
                zout.writestr(item, data)
        loaded = torch.load(dst)
        np.testing.assert_array_equal(loaded['a'], np.arange(3.))
        self.assertEqual(loaded['s'], 2.5)

    def test_damaged_file_is_not_called_unsafe(self):
        path = osp.join(self.tmp, 'damaged.pth')
        with open(path, 'wb') as f:
            f.write(b'not a checkpoint')
        with self.assertRaisesRegex(
                pickle.UnpicklingError,
                r'Cannot load checkpoint .*damaged\.pth.*is damaged') as ctx:
            _load_checkpoint(path)
        self.assertNotIsInstance(ctx.exception, UnsafeCheckpointError)

    def test_error_lists_refused_globals(self):
        err = UnsafeCheckpointError('x.pth', ['posix.system', 'a.b'], 'why')
        self.assertEqual(err.refused, ['posix.system', 'a.b'])
        self.assertIn('posix.system, a.b', str(err))
        self.assertNotIn('weights_only=False', str(err))
        self.assertIsInstance(err, pickle.UnpicklingError)


class TestOtherLoadPaths(TestCase):
    """Refusal through ``Pretrained`` init and the other URI schemes."""

    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory()
        self.tmp = self._tmp.name
        self.marker = osp.join(self.tmp, 'pwned')
        self.evil = osp.join(self.tmp, 'evil.pth')
        save_malicious(self.evil, self.marker)

    def tearDown(self):
        self._tmp.cleanup()

    def test_pretrained_init_cfg(self):
        from mmengine.model import BaseModule

        class Net(BaseModule):

            def __init__(self, init_cfg):
                super().__init__(init_cfg=init_cfg)
                self.linear = nn.Linear(2, 2)

        net = Net(init_cfg=dict(type='Pretrained', checkpoint=self.evil))
        with self.assertRaisesRegex(
                UnsafeCheckpointError,
                r'evil\.pth.*posix\.system.*Nothing from the file was '
                r'executed'):
            net.init_weights()
        self.assertFalse(osp.exists(self.marker))

    def test_refusal_of_another_scheme_is_translated(self):
        # ``open-mmlab://NAME`` resolves NAME through the user's
        # ``$MMENGINE_HOME/open_mmlab.json``; a relative path there is a
        # file of that folder, which mmengine's handler ``torch.load``s
        # itself (torch's own message would advise weights_only=False).
        home = osp.join(self.tmp, 'home')
        os.makedirs(home)
        os.rename(self.evil, osp.join(home, 'evil.pth'))
        with open(osp.join(home, 'open_mmlab.json'), 'w') as f:
            f.write('{"evil_net": "evil.pth"}')
        with mock.patch.dict(os.environ, MMENGINE_HOME=home), \
                self.assertRaisesRegex(
                    UnsafeCheckpointError,
                    r"'open-mmlab://evil_net'.*posix\.system.*Nothing from "
                    r'the file was executed') as ctx:
            _load_checkpoint('open-mmlab://evil_net')
        self.assertNotIn('weights_only=False', str(ctx.exception))
        self.assertFalse(osp.exists(self.marker))

    def _hub_cache(self):
        """``$TORCH_HOME`` whose torch.hub cache holds ``evil.pth``."""
        home = osp.join(self.tmp, 'torch_home')
        os.makedirs(osp.join(home, 'hub', 'checkpoints'))
        os.rename(self.evil,
                  osp.join(home, 'hub', 'checkpoints', 'evil.pth'))
        return mock.patch.dict(os.environ, TORCH_HOME=home)

    def test_download_is_loaded_weights_only(self):
        # mmengine loads http:// (and torchvision://, mmcls://) downloads
        # with torch.hub.load_state_dict_from_url, weights_only=False by
        # default. A file already in the hub cache is not downloaded again,
        # so the test needs no network.
        url = 'http://example.invalid/evil.pth'
        before = os.environ.get('TORCH_FORCE_WEIGHTS_ONLY_LOAD')
        with self._hub_cache(), self.assertRaisesRegex(
                UnsafeCheckpointError,
                r"'http://example\.invalid/evil\.pth'.*posix\.system.*"
                r'Nothing from the file was executed'):
            _load_checkpoint(url)
        self.assertFalse(osp.exists(self.marker))
        # The override lasted for the load only.
        self.assertEqual(os.environ.get('TORCH_FORCE_WEIGHTS_ONLY_LOAD'),
                         before)

    def test_user_opt_out_of_weights_only(self):
        # The user's TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD wins (torch would
        # refuse both variables at once): the trusted download loads.
        torch.save({'state_dict': OrderedDict(w=torch.ones(2))}, self.evil)
        with self._hub_cache(), mock.patch.dict(
                os.environ, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD='1'):
            ckpt = _load_checkpoint('https://example.invalid/evil.pth')
        torch.testing.assert_close(ckpt['state_dict']['w'], torch.ones(2))


class TestMaliciousCheckpointThroughTools(TestCase):
    """``load_from`` and ``--resume`` of tools/train.py refuse the file."""

    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory()
        self.tmp = self._tmp.name
        self.marker = osp.join(self.tmp, 'pwned')
        self.evil = osp.join(self.tmp, 'evil.pth')
        save_malicious(self.evil, self.marker)

    def tearDown(self):
        self._tmp.cleanup()

    def _check_refused(self, proc):
        self.assertNotEqual(proc.returncode, 0)
        self.assertRegex(
            proc.stderr, r'UnsafeCheckpointError: Refused to load checkpoint'
            r' .*evil\.pth.*posix\.system.*Nothing from the file was '
            r'executed')
        self.assertFalse(osp.exists(self.marker))

    def test_load_from(self):
        proc = run_tool([
            'tools/train.py', DIGITS_CONFIG, '--work-dir',
            osp.join(self.tmp, 'wd'), '--cfg-options',
            f'load_from={self.evil}', 'train_cfg.max_epochs=1'
        ],
                        check=False)
        self._check_refused(proc)

    def test_resume(self):
        proc = run_tool([
            'tools/train.py', DIGITS_CONFIG, '--work-dir',
            osp.join(self.tmp, 'wd'), '--resume', self.evil,
            '--cfg-options', 'train_cfg.max_epochs=1'
        ],
                        check=False)
        self._check_refused(proc)


class TestWarningFilter(TestCase):

    def test_only_the_known_warnings_are_filtered(self):
        import warnings
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            silence_known_warnings()
            # Same text, from the module that issues it: filtered.
            warnings.warn_explicit(
                'Fail to import ``MultiScaleDeformableAttention`` from '
                '``mmcv.ops.multi_scale_deform_attn``',
                UserWarning,
                'transformer.py',
                1,
                module='mmcv.cnn.bricks.transformer')
            # Any other warning of that module still shows.
            warnings.warn_explicit(
                'something else',
                UserWarning,
                'transformer.py',
                2,
                module='mmcv.cnn.bricks.transformer')
            warnings.warn_explicit(
                'pkg_resources is deprecated as an API. See ...', UserWarning,
                'package_utils.py', 17, module='mmengine.utils.package_utils')
        self.assertEqual([str(w.message) for w in caught], ['something else'])
