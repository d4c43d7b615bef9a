# Copyright (c) galddc_mm contributors. All rights reserved.
"""Crash-safe checkpoint files: atomic writes, integrity checks, fallback.

A training process can be killed at any instant, also while it writes a
checkpoint. mmengine 0.10.7 writes checkpoints and the ``last_checkpoint``
pointer in place (``open(path, 'wb')`` then ``write``), so a kill at the
wrong moment leaves a truncated file under the final name, and
``--resume`` then fails on it. This module provides the pieces that the
registered :class:`~galddc_mm.engine.hooks.AtomicCheckpointHook` and
:class:`~galddc_mm.engine.runner.GALDDCRunner` use:

- :func:`atomic_destination`: a temporary file in the folder of the
  destination that, once written, is ``fsync``-ed and renamed over the
  final name (``os.replace`` is atomic on POSIX and Windows), then the
  folder is synced. A reader sees the old file or the complete new one,
  never a part. :func:`atomic_torch_save` and :class:`AtomicLocalBackend`
  write through it.
- :class:`AtomicLocalBackend`: mmengine's ``LocalBackend`` whose ``put``
  goes through :func:`atomic_destination`, registered as the file backend
  ``'galddc_atomic_local'``; the checkpoint hook selects it for a local
  ``out_dir`` (mmengine's ``save_checkpoint`` writes through the backend
  that ``backend_args`` names).
- :func:`checkpoint_damage`: a cheap integrity check of a checkpoint
  without unpickling it (safe on untrusted files): ``torch.save`` writes a
  zip archive with a CRC-32 per member; a truncated file has no central
  directory and a damaged one fails a CRC. ``torch.load`` verifies
  neither: it fails obscurely on the first and silently loads wrong
  tensors from the second.
- :func:`find_resumable_checkpoint`: what auto ``--resume`` uses instead
  of mmengine's ``find_latest_checkpoint``: it falls back to the previous
  checkpoint, with a warning naming both files, when the latest one is
  damaged.
"""
import glob
import logging
import os
import os.path as osp
import re
import uuid
import zipfile
import zlib
from contextlib import contextmanager
from typing import Iterator, List, Optional, Tuple, Union

import torch
from mmengine.fileio import LocalBackend, register_backend
from mmengine.logging import print_log

__all__ = [
    'ATOMIC_LOCAL_BACKEND', 'AtomicLocalBackend', 'DamagedCheckpointError',
    'atomic_destination', 'atomic_torch_save', 'checkpoint_damage',
    'find_resumable_checkpoint'
]

#: The name of mmengine's pointer to the latest checkpoint of a work dir.
POINTER_NAME = 'last_checkpoint'
#: The name :class:`AtomicLocalBackend` is registered under, for
#: ``backend_args=dict(backend=ATOMIC_LOCAL_BACKEND)``.
ATOMIC_LOCAL_BACKEND = 'galddc_atomic_local'
# Regular checkpoints of the CheckpointHook (``best_*`` files are chosen
# on a metric, not on progress, and are never resumed from implicitly).
_CKPT_RE = re.compile(r'^(epoch|iter)_(\d+)\.pth$')
_TMP_RE = re.compile(r'^\..+\.[0-9a-f]{8}\.tmp$')
_ZIP_MAGIC = b'PK\x03\x04'


class DamagedCheckpointError(RuntimeError):
    """A checkpoint file is truncated or corrupted (it is not unpickled).

    Args:
        filename (str): The damaged file.
        reason (str): What is wrong with it.
    """

    def __init__(self, filename: str, reason: str):
        self.filename = filename
        self.reason = reason
        super().__init__(
            f'Checkpoint {filename!r} is damaged: {reason}. It was probably '
            'being written when the process was killed, or was copied '
            'incompletely; nothing from it was loaded. Use an earlier '
            'checkpoint (auto --resume does so by itself).')


def _temp_name(path: str) -> str:
    """``<folder>/.<name>.<8 hex>.tmp``: hidden, unique, same folder."""
    folder, name = osp.split(osp.abspath(path))
    return osp.join(folder, f'.{name}.{uuid.uuid4().hex[:8]}.tmp')


def _fsync_file(path: str) -> None:
    """Flush a closed file's data to disk (whoever wrote it)."""
    # fsync acts on the file, not on the descriptor that wrote it; a
    # writable descriptor because Windows' fsync needs one.
    fd = os.open(path, os.O_RDWR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: str) -> None:
    """Make a rename in ``folder`` durable (no-op where unsupported)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open a directory
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_destination(path: Union[str, os.PathLike]) -> Iterator[str]:
    """A temporary path to write, renamed over ``path`` when complete.

    ``with atomic_destination(path) as tmp:`` yields a new, hidden file
    name in the folder of ``path`` (same file system, so the rename is
    atomic). When the block ends without an error, the file written there
    is ``fsync``-ed, renamed over ``path`` with :func:`os.replace` and the
    folder is synced. On any error (or a kill) before the rename, ``path``
    keeps its previous content (or stays absent); after an error the
    temporary file is removed, after a kill it stays behind, hidden, until
    :func:`find_resumable_checkpoint` removes it on resume.

    Args:
        path (str | PathLike): The local destination file.

    Yields:
        str: The temporary file to write (it does not exist yet; whoever
        writes it creates it, so its mode follows the umask).
    """
    path = str(path)
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = _temp_name(path)
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        if osp.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(folder)


def atomic_torch_save(obj, path: str) -> None:
    """``torch.save(obj, path)`` that never leaves a partial ``path``.

    Args:
        obj (Any): What to save.
        path (str): The local destination file.
    """
    with atomic_destination(path) as tmp:
        torch.save(obj, tmp)


@register_backend(ATOMIC_LOCAL_BACKEND)
class AtomicLocalBackend(LocalBackend):
    """mmengine's ``LocalBackend`` whose writes replace files atomically.

    ``put`` and ``put_text`` write through :func:`atomic_destination`;
    reading, listing and removing are ``LocalBackend``'s. Registered as the
    file backend ``'galddc_atomic_local'`` (a new name: the ``'local'``
    backend and the prefix look-up of mmengine are unchanged), so it is
    used only where ``backend_args=dict(backend='galddc_atomic_local')``
    asks for it.
    """

    def put(self, obj: bytes, filepath: Union[str, os.PathLike]) -> None:
        with atomic_destination(filepath) as tmp:
            super().put(obj, tmp)

    def put_text(self,
                 obj: str,
                 filepath: Union[str, os.PathLike],
                 encoding: str = 'utf-8') -> None:
        with atomic_destination(filepath) as tmp:
            super().put_text(obj, tmp, encoding=encoding)


def checkpoint_damage(filename: str) -> Optional[str]:
    """Say what is wrong with a checkpoint file, without unpickling it.

    ``torch.save`` (since torch 1.6) writes a zip archive whose members
    (the pickle and one record per storage) each carry a CRC-32; reading
    every member checks them all. Files in torch's legacy (non-zip) format
    cannot be checked this way and are reported as fine.

    Args:
        filename (str): A local file.

    Returns:
        str | None: The problem (``'it does not exist'``, ``'it is empty
        (0 bytes)'``, ``'it is truncated ...'``, ``'member ... fails its
        CRC-32 check ...'``), or None when the file looks intact.
    """
    if not osp.isfile(filename):
        return 'it does not exist'
    size = osp.getsize(filename)
    if size == 0:
        return 'it is empty (0 bytes)'
    with open(filename, 'rb') as f:
        magic = f.read(4)
    if magic != _ZIP_MAGIC:
        return None  # legacy torch format (or not a checkpoint at all)
    try:
        with zipfile.ZipFile(filename) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as err:
        return (f'it is truncated or corrupted ({size} bytes; the zip '
                f'archive cannot be read: {err})')
    if bad is not None:
        return (f'member {bad!r} fails its CRC-32 check (the bytes changed '
                'after torch.save wrote them)')
    return None


def _step(path: str) -> Optional[Tuple[str, int]]:
    match = _CKPT_RE.match(osp.basename(path))
    return (match.group(1), int(match.group(2))) if match else None


def _older_checkpoints(folder: str, latest: str) -> List[str]:
    """Regular checkpoints of ``folder`` before ``latest``, newest first."""
    latest_step = _step(latest) if latest else None
    found = []
    for path in glob.glob(osp.join(folder, '*.pth')):
        step = _step(path)
        if step is None or osp.abspath(path) == osp.abspath(latest or ''):
            continue
        if latest_step is not None and (step[0] != latest_step[0]
                                        or step[1] >= latest_step[1]):
            continue
        found.append((step[1], path))
    return [path for _, path in sorted(found, reverse=True)]


def _remove_stale_temp_files(folder: str) -> None:
    """Remove the temporary files of writes that a kill interrupted.

    Only files named like :func:`_temp_name` makes them; called when a run
    resumes, i.e. when no other process writes to the folder.
    """
    for path in glob.glob(osp.join(folder, '.*.tmp')):
        if _TMP_RE.match(osp.basename(path)):
            try:
                os.unlink(path)
            except OSError:
                continue
            print_log(
                f'Removed {path}, a checkpoint write interrupted by a kill.',
                logger='current')


def find_resumable_checkpoint(path: str) -> Optional[str]:
    """The newest intact checkpoint of a work dir, for auto ``--resume``.

    Used by :meth:`GALDDCRunner.load_or_resume
    <galddc_mm.engine.runner.GALDDCRunner.load_or_resume>` where mmengine
    calls ``find_latest_checkpoint``: reads the
    ``last_checkpoint`` pointer of ``path`` (None, as mmengine, when there
    is none: the run starts from scratch). If the checkpoint it names is
    missing or damaged (:func:`checkpoint_damage`), the regular checkpoints
    (``epoch_N.pth`` / ``iter_N.pth``) before it in the same folder are
    tried, newest first, and a warning names the damaged file and the one
    used instead. A checkpoint refused as unsafe is not skipped this way:
    the integrity check does not unpickle, so such a file is handed to the
    loader, which refuses it.

    Args:
        path (str): The work dir.

    Returns:
        str | None: The checkpoint to resume from.

    Raises:
        DamagedCheckpointError: The pointer exists but no checkpoint it
            leads to is intact.
    """
    pointer = osp.join(path, POINTER_NAME)
    if not osp.exists(pointer):
        print_log('Did not find last_checkpoint to be resumed.',
                  logger='current')
        return None
    with open(pointer, encoding='utf-8') as f:
        latest = f.read().strip()
    folder = osp.dirname(latest) if latest else path
    _remove_stale_temp_files(folder)
    candidates = ([latest] if latest else []) + _older_checkpoints(
        folder, latest)
    problems = [] if latest else [f'{pointer} is empty']
    for candidate in candidates:
        reason = checkpoint_damage(candidate)
        if reason is None:
            if problems:
                print_log(
                    'Cannot resume from the latest checkpoint: '
                    f'{"; ".join(problems)}. Resuming from the previous '
                    f'checkpoint {candidate} instead; the epochs after it '
                    'are trained again.',
                    logger='current',
                    level=logging.WARNING)
            return candidate
        problems.append(f'{candidate}: {reason}')
    raise DamagedCheckpointError(
        latest or pointer,
        'no intact checkpoint to resume from (' + '; '.join(problems) +
        f'). Delete {pointer} to train from scratch')
