# Copyright (c) galddc_mm contributors. All rights reserved.
"""Crash-safe checkpoint files: atomic writes, integrity, resume fallback.

The writes are tested where they happen: mmengine's ``save_checkpoint``
with the atomic file backend, and ``AtomicCheckpointHook`` (checkpoints,
``best_*`` files and the ``last_checkpoint`` pointer) on a tiny Runner;
the fallback through ``GALDDCRunner``'s auto resume. The end-to-end side
(a process SIGKILLed while writing a checkpoint, a truncated latest
checkpoint and ``--resume``) is in
``test_tools/test_interruption_and_resume.py``.
"""
import glob
import io
import os
import os.path as osp
import stat
import tempfile
from collections import OrderedDict
from unittest import TestCase, mock

import mmengine.runner.checkpoint as mmengine_checkpoint
import torch
from mmengine.fileio import LocalBackend
from mmengine.logging import MMLogger
from mmengine.runner.checkpoint import _load_checkpoint
from toy_runner import toy_runner

import galddc_mm  # noqa: F401  (registers the backend, hooks and loaders)
from galddc_mm.engine import AtomicCheckpointHook, GALDDCRunner
from galddc_mm.utils import (
    DamagedCheckpointError,
    atomic_destination,
    atomic_torch_save,
    checkpoint_damage,
    find_resumable_checkpoint,
)
from galddc_mm.utils.checkpoint_safety import ATOMIC_LOCAL_BACKEND

# What the hook passes to ``Runner.save_checkpoint`` for a local out_dir.
ATOMIC = dict(backend=ATOMIC_LOCAL_BACKEND)

REAL_SAVE = torch.save


def _write_half_then_fail(data, f):
    if isinstance(f, str):
        f = open(f, 'wb')
    f.write(data[:len(data) // 2])
    f.flush()
    raise KeyboardInterrupt('killed while writing')


def _save_half_then_fail(obj, f, *args, **kwargs):
    """torch.save that dies half-way through writing a file."""
    buf = io.BytesIO()
    REAL_SAVE(obj, buf, *args, **kwargs)
    if isinstance(f, io.BytesIO):  # mmengine serialises to memory first
        f.write(buf.getvalue())
        return
    _write_half_then_fail(buf.getvalue(), f)


def _dying_writes():
    """Any write of checkpoint bytes to disk dies half-way."""
    return mock.patch.multiple(
        'torch', save=_save_half_then_fail), mock.patch.object(
            LocalBackend, 'put',
            lambda self, obj, filepath: _write_half_then_fail(obj, filepath))


def _ckpt(value):
    return {'meta': {'epoch': value}, 'state_dict': OrderedDict(
        w=torch.full((64, ), float(value)))}


def _flip_tensor_byte(path):
    """Change one byte of a tensor record, leaving the zip readable."""
    with open(path, 'rb') as f:
        data = bytearray(f.read())
    marker = torch.full((64, ), 3.0).numpy().tobytes()[:8]
    pos = bytes(data).find(marker)
    assert pos > 0
    data[pos + 3] ^= 0xFF
    with open(path, 'wb') as f:
        f.write(data)


def _truncate(path, keep=0.5):
    size = osp.getsize(path)
    with open(path, 'r+b') as f:
        f.truncate(int(size * keep))


class TestAtomicWrites(TestCase):

    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory()
        self.tmp = self._tmp.name

    def tearDown(self):
        self._tmp.cleanup()

    def _temp_files(self):
        return glob.glob(osp.join(self.tmp, '.*.tmp'))

    def test_save_checkpoint_round_trip(self):
        path = osp.join(self.tmp, 'sub', 'epoch_1.pth')
        mmengine_checkpoint.save_checkpoint(_ckpt(1), path,
                                            backend_args=ATOMIC)
        self.assertEqual(_load_checkpoint(path)['meta']['epoch'], 1)
        self.assertEqual(self._temp_files(), [])
        # Permissions follow the umask, as a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode),
                         0o666 & ~umask)

    def test_interrupted_save_keeps_the_old_file(self):
        path = osp.join(self.tmp, 'epoch_1.pth')
        mmengine_checkpoint.save_checkpoint(_ckpt(1), path,
                                            backend_args=ATOMIC)
        with open(path, 'rb') as f:
            before = f.read()
        patch_save, patch_put = _dying_writes()
        with patch_save, patch_put, self.assertRaises(KeyboardInterrupt):
            mmengine_checkpoint.save_checkpoint(_ckpt(2), path,
                                                backend_args=ATOMIC)
        with open(path, 'rb') as f:
            self.assertEqual(f.read(), before)
        self.assertEqual(self._temp_files(), [])
        # A new file that never completed does not appear at all.
        fresh = osp.join(self.tmp, 'epoch_2.pth')
        patch_save, patch_put = _dying_writes()
        with patch_save, patch_put, self.assertRaises(KeyboardInterrupt):
            atomic_torch_save(_ckpt(2), fresh)
        self.assertFalse(osp.exists(fresh))

    def test_text_written_atomically(self):
        pointer = osp.join(self.tmp, 'last_checkpoint')
        with atomic_destination(pointer) as tmp, open(tmp, 'w') as f:
            f.write('/a/epoch_1.pth')
        with self.assertRaises(KeyboardInterrupt):
            with atomic_destination(pointer) as tmp, open(tmp, 'w') as f:
                f.write('/a/epoch_2')  # killed mid-write
                raise KeyboardInterrupt
        with open(pointer) as f:
            self.assertEqual(f.read(), '/a/epoch_1.pth')
        self.assertEqual(self._temp_files(), [])

    def test_mmengine_writer_unchanged(self):
        # Only the backend asked for by name writes atomically: mmengine's
        # save_checkpoint without it still writes in place.
        path = osp.join(self.tmp, 'epoch_1.pth')
        patch_save, patch_put = _dying_writes()
        with patch_save, patch_put, self.assertRaises(KeyboardInterrupt):
            mmengine_checkpoint.save_checkpoint(_ckpt(1), path)
        self.assertTrue(osp.exists(path))


class TestAtomicCheckpointHook(TestCase):
    """The registered hook on a tiny Runner: 2 epochs, best by top-1."""

    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory()
        self.tmp = self._tmp.name

    def tearDown(self):
        self._tmp.cleanup()

    def _train(self, epochs=1, **hook_args):
        hook = dict(type='AtomicCheckpointHook', interval=1, **hook_args)
        runner = toy_runner(
            self.tmp,
            max_epochs=epochs,
            default_hooks=dict(checkpoint=hook))
        runner.train()
        hook = [h for h in runner.hooks
                if isinstance(h, AtomicCheckpointHook)][0]
        return runner, hook

    def _pointer(self):
        with open(osp.join(self.tmp, 'last_checkpoint')) as f:
            return osp.basename(f.read())

    def _temp_files(self):
        return glob.glob(osp.join(self.tmp, '.*.tmp'))

    def test_writes_checkpoints_best_and_pointer(self):
        _, hook = self._train(
            epochs=2, save_best='accuracy/top1', rule='greater')
        self.assertEqual(hook.backend_args, ATOMIC)
        self.assertEqual(self._pointer(), 'epoch_2.pth')
        for name in ('epoch_1.pth', 'epoch_2.pth',
                     'best_accuracy_top1_epoch_1.pth'):
            ckpt = _load_checkpoint(osp.join(self.tmp, name))
            self.assertIn('linear.weight', ckpt['state_dict'])
        self.assertEqual(self._temp_files(), [])

    def test_interrupted_writes_keep_the_previous_files(self):
        runner, hook = self._train(save_best='accuracy/top1', rule='greater')
        with open(osp.join(self.tmp, 'epoch_1.pth'), 'rb') as f:
            before = f.read()
        # The next epoch's checkpoint dies while its bytes are written.
        patch_save, patch_put = _dying_writes()
        with patch_save, patch_put, self.assertRaises(KeyboardInterrupt):
            hook._save_checkpoint_with_step(runner, 2, dict(epoch=2))
        self.assertFalse(osp.exists(osp.join(self.tmp, 'epoch_2.pth')))
        self.assertEqual(self._pointer(), 'epoch_1.pth')
        # So does a best checkpoint. (mmengine removes the previous best
        # file before it writes the new one, under a new name; here the
        # name is the same, epoch 1's, to see that it survives.)
        best = osp.join(self.tmp, 'best_accuracy_top1_epoch_1.pth')
        with open(best, 'rb') as f:
            best_before = f.read()
        hook.best_ckpt_path = None
        runner.message_hub.update_info('best_score', 0.)
        patch_save, patch_put = _dying_writes()
        with patch_save, patch_put, self.assertRaises(KeyboardInterrupt):
            hook.after_val_epoch(runner, {'accuracy/top1': 80.})
        with open(best, 'rb') as f:
            self.assertEqual(f.read(), best_before)
        with open(osp.join(self.tmp, 'epoch_1.pth'), 'rb') as f:
            self.assertEqual(f.read(), before)
        self.assertEqual(self._temp_files(), [])

    def test_pointer_replaced_only_when_complete(self):
        runner, hook = self._train()
        real_replace = os.replace

        def killed_before_pointer_rename(src, dst):
            if osp.basename(dst) == 'last_checkpoint':
                raise KeyboardInterrupt('killed')
            return real_replace(src, dst)

        with mock.patch('os.replace', killed_before_pointer_rename), \
                self.assertRaises(KeyboardInterrupt):
            hook._save_checkpoint_with_step(runner, 2, dict(epoch=2))
        # The checkpoint is complete, the pointer still names the old one.
        self.assertTrue(osp.exists(osp.join(self.tmp, 'epoch_2.pth')))
        self.assertEqual(self._pointer(), 'epoch_1.pth')

    def test_explicit_backend_keeps_mmengine_writer(self):
        _, hook = self._train(backend_args=dict(backend='local'))
        self.assertEqual(hook.backend_args, dict(backend='local'))
        self.assertIs(type(hook.file_backend), LocalBackend)
        self.assertEqual(self._pointer(), 'epoch_1.pth')


class TestCheckpointIntegrity(TestCase):

    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory()
        self.tmp = self._tmp.name
        self.path = osp.join(self.tmp, 'epoch_3.pth')
        torch.save(_ckpt(3), self.path)

    def tearDown(self):
        self._tmp.cleanup()

    def test_intact_file(self):
        self.assertIsNone(checkpoint_damage(self.path))
        # torch's legacy (non-zip) format cannot be checked: passed on.
        legacy = osp.join(self.tmp, 'legacy.pth')
        torch.save(_ckpt(1), legacy, _use_new_zipfile_serialization=False)
        self.assertIsNone(checkpoint_damage(legacy))

    def test_damage_reasons(self):
        self.assertEqual(checkpoint_damage(osp.join(self.tmp, 'no.pth')),
                         'it does not exist')
        empty = osp.join(self.tmp, 'empty.pth')
        open(empty, 'wb').close()
        self.assertEqual(checkpoint_damage(empty), 'it is empty (0 bytes)')
        _truncate(self.path)
        self.assertRegex(checkpoint_damage(self.path),
                         r'^it is truncated or corrupted \(\d+ bytes')

    def test_truncated_file_refused_by_loaders(self):
        _truncate(self.path)
        with self.assertRaisesRegex(
                DamagedCheckpointError,
                r"Checkpoint '.*epoch_3\.pth' is damaged: it is truncated.*"
                r'nothing from it was loaded'):
            _load_checkpoint(self.path, map_location='cpu')

    def test_bit_flip_detected(self):
        _flip_tensor_byte(self.path)
        self.assertRegex(checkpoint_damage(self.path),
                         r"member '.*data/0' fails its CRC-32 check")
        # torch.load itself does not notice: it returns wrong values.
        loaded = torch.load(self.path)['state_dict']['w']
        self.assertFalse(torch.equal(loaded, torch.full((64, ), 3.0)))
        with self.assertRaisesRegex(DamagedCheckpointError, 'CRC-32'):
            _load_checkpoint(self.path, map_location='cpu')


class TestResumeFallback(TestCase):

    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory()
        self.tmp = self._tmp.name
        self.ckpts = []
        for epoch in (1, 2, 3):
            path = osp.join(self.tmp, f'epoch_{epoch}.pth')
            torch.save(_ckpt(epoch), path)
            self.ckpts.append(path)
        torch.save(_ckpt(9), osp.join(self.tmp, 'best_acc_epoch_9.pth'))
        self._point_to(self.ckpts[-1])

    def tearDown(self):
        self._tmp.cleanup()

    def _point_to(self, text):
        with open(osp.join(self.tmp, 'last_checkpoint'), 'w') as f:
            f.write(text)

    def _find(self):
        logger = MMLogger.get_current_instance()
        with self.assertLogs(logger, 'INFO') as logs:
            found = find_resumable_checkpoint(self.tmp)
            logger.info('done')  # assertLogs needs one record at least
        return found, '\n'.join(logs.output)

    def test_latest_intact(self):
        found, log = self._find()
        self.assertEqual(found, self.ckpts[-1])
        self.assertNotIn('WARNING', log)

    def test_no_pointer_trains_from_scratch(self):
        os.unlink(osp.join(self.tmp, 'last_checkpoint'))
        found, log = self._find()
        self.assertIsNone(found)
        self.assertIn('Did not find last_checkpoint', log)

    def test_truncated_latest_falls_back_to_previous(self):
        _truncate(self.ckpts[-1])
        found, log = self._find()
        self.assertEqual(found, self.ckpts[1])
        self.assertRegex(
            log, r'WARNING.*Cannot resume from the latest checkpoint: '
            r'.*epoch_3\.pth: it is truncated.*Resuming from the previous '
            r'checkpoint .*epoch_2\.pth instead')

    def test_missing_latest_and_damaged_previous(self):
        os.unlink(self.ckpts[-1])
        _truncate(self.ckpts[1], keep=0.01)
        found, log = self._find()
        self.assertEqual(found, self.ckpts[0])
        self.assertRegex(log, r'epoch_3\.pth: it does not exist; .*'
                         r'epoch_2\.pth: it is truncated')

    def test_empty_pointer_uses_newest_intact(self):
        self._point_to('')
        found, log = self._find()
        self.assertEqual(found, self.ckpts[-1])
        self.assertIn('last_checkpoint is empty', log)

    def test_nothing_intact_is_an_error(self):
        for path in self.ckpts:
            _truncate(path)
        with self.assertRaisesRegex(
                DamagedCheckpointError,
                r'no intact checkpoint to resume from .*epoch_3\.pth.*'
                r'epoch_1\.pth.*Delete .*last_checkpoint to train from '
                r'scratch'):
            find_resumable_checkpoint(self.tmp)

    def test_stale_temp_files_removed(self):
        stale = osp.join(self.tmp, '.epoch_4.pth.0123abcd.tmp')
        with open(stale, 'wb') as f:
            f.write(b'PK\x03\x04half')
        keep = osp.join(self.tmp, '.notes.tmp')  # not one of ours
        open(keep, 'w').close()
        found, log = self._find()
        self.assertEqual(found, self.ckpts[-1])
        self.assertFalse(osp.exists(stale))
        self.assertTrue(osp.exists(keep))
        self.assertIn('a checkpoint write interrupted by a kill', log)


class TestRunnerAutoResume(TestCase):
    """``GALDDCRunner`` with ``resume=True`` and no ``load_from``."""

    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory()
        self.tmp = self._tmp.name
        toy_runner(
            self.tmp, max_epochs=3, runner_cls=GALDDCRunner,
            default_hooks=dict(checkpoint=dict(
                type='AtomicCheckpointHook', interval=1))).train()

    def tearDown(self):
        self._tmp.cleanup()

    def _resume(self):
        runner = toy_runner(
            self.tmp, max_epochs=3, runner_cls=GALDDCRunner, resume=True)
        with self.assertLogs(runner.logger, 'INFO') as logs:
            runner.load_or_resume()
        return runner, '\n'.join(logs.output)

    def test_falls_back_past_a_truncated_latest_checkpoint(self):
        _truncate(osp.join(self.tmp, 'epoch_3.pth'))
        runner, log = self._resume()
        self.assertRegex(
            log, r'WARNING.*Cannot resume from the latest checkpoint: '
            r'.*epoch_3\.pth: it is truncated.*Resuming from the previous '
            r'checkpoint .*epoch_2\.pth instead')
        self.assertEqual(runner.epoch, 2)

    def test_intact_latest_checkpoint(self):
        runner, log = self._resume()
        self.assertNotIn('Cannot resume', log)
        self.assertIn('Auto resumed from the latest checkpoint', log)
        self.assertEqual(runner.epoch, 3)

    def test_mmengine_runner_unchanged(self):
        # Plain mmengine Runner: the truncated file goes to the loader,
        # which refuses it (no fallback without GALDDCRunner).
        _truncate(osp.join(self.tmp, 'epoch_3.pth'))
        runner = toy_runner(self.tmp, max_epochs=3, resume=True)
        with self.assertRaisesRegex(DamagedCheckpointError, 'epoch_3'):
            runner.load_or_resume()
