# Copyright (c) galddc_mm contributors. All rights reserved.
"""Crash-safe checkpoint files: atomic writes, integrity checks, fallback.

A training process can be killed at any instant, also while it writes a
checkpoint. mmengine 0.10.7 writes checkpoints and the ``last_checkpoint``
pointer in place (``open(path, 'wb')`` then ``write``), so a kill at the
wrong moment leaves a truncated file under the final name, and
``--resume`` then fails on it. This module provides the pieces that
:mod:`galddc_mm.utils.compat` installs into mmengine:

- :func:`atomic_save_checkpoint`: a drop-in for mmengine's
  ``save_checkpoint`` that writes a local checkpoint to a temporary file in
  the same folder, ``fsync``-s it and renames it over the final name
  (``os.replace`` is atomic on POSIX and Windows), then syncs the folder.
  A reader sees the old file or the complete new one, never a part.
- :class:`AtomicTextWriter` / :func:`checkpoint_hook_open`: the same for
  the ``last_checkpoint`` pointer the ``CheckpointHook`` writes.
- :func:`checkpoint_damage`: a cheap integrity check of a checkpoint
  without unpickling it (safe on untrusted files): ``torch.save`` writes a
  zip archive with a CRC-32 per member; a truncated file has no central
  directory and a damaged one fails a CRC. ``torch.load`` verifies
  neither: it fails obscurely on the first and silently loads wrong
  tensors from the second.
- :func:`find_resumable_checkpoint`: a drop-in for mmengine's
  ``find_latest_checkpoint`` (auto ``--resume``) that falls back to the
  previous checkpoint, with a warning naming both files, when the latest
  one is damaged.
"""
import glob
import logging
import os
import os.path as osp
import re
import uuid
import zipfile
import zlib
from typing import List, Optional, Tuple

import mmengine.runner.checkpoint as mmengine_checkpoint
import torch
from mmengine.fileio import LocalBackend, get_file_backend
from mmengine.logging import print_log

__all__ = [
    'AtomicTextWriter', 'DamagedCheckpointError', 'atomic_save_checkpoint',
    'atomic_torch_save', 'checkpoint_damage', 'checkpoint_hook_open',
    'find_resumable_checkpoint'
]

#: The name of mmengine's pointer to the latest checkpoint of a work dir.
POINTER_NAME = 'last_checkpoint'
# Regular checkpoints of the CheckpointHook (``best_*`` files are chosen
# on a metric, not on progress, and are never resumed from implicitly).
_CKPT_RE = re.compile(r'^(epoch|iter)_(\d+)\.pth$')
_TMP_RE = re.compile(r'^\..+\.[0-9a-f]{8}\.tmp$')
_ZIP_MAGIC = b'PK\x03\x04'
# Bound before compat replaces the name in mmengine's modules (compat
# imports this module first), so remote writes still reach mmengine's.
_mmengine_save_checkpoint = mmengine_checkpoint.save_checkpoint


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


def _open_new(path: str, mode: str, encoding: Optional[str] = None):
    """Create ``path`` (which must not exist) and open it with ``mode``."""
    # O_EXCL: never reuse another writer's file; mode 0o666 so that the
    # umask applies as for a plain ``open`` (mkstemp would force 0o600).
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    return os.fdopen(fd, mode, encoding=encoding)


def atomic_torch_save(obj, path: str) -> None:
    """``torch.save(obj, path)`` that never leaves a partial ``path``.

    Writes to a temporary file in the folder of ``path``, flushes and
    ``fsync``-s it, renames it over ``path`` with :func:`os.replace` and
    syncs the folder. On any error (or a kill) before the rename, ``path``
    keeps its previous content (or stays absent).

    Args:
        obj (Any): What to save.
        path (str): The local destination file.
    """
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = _temp_name(path)
    try:
        with _open_new(tmp, 'wb') as f:
            # Straight into the file: no second in-memory copy of a large
            # checkpoint (mmengine serialises to a BytesIO first).
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if osp.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(folder)


def _is_local(filename: str, backend_args: Optional[dict]) -> bool:
    if filename.startswith('pavi://'):
        return False
    try:
        backend = get_file_backend(filename, backend_args=backend_args)
    except Exception:  # unknown prefix: let mmengine report it
        return False
    return isinstance(backend, LocalBackend)


def atomic_save_checkpoint(checkpoint: dict,
                           filename: str,
                           file_client_args: Optional[dict] = None,
                           backend_args: Optional[dict] = None) -> None:
    """mmengine's ``save_checkpoint``, atomic for local files.

    Same arguments as :func:`mmengine.runner.checkpoint.save_checkpoint`;
    a local destination is written by :func:`atomic_torch_save`. Remote
    backends (petrel, http, pavi) and the deprecated ``file_client_args``
    keep mmengine's writer: an upload there is one request, not a stream
    into the final file.

    Args:
        checkpoint (dict): The checkpoint.
        filename (str): Destination, a local path or a backend URI.
        file_client_args (dict, optional): Deprecated mmengine argument.
            Defaults to None.
        backend_args (dict, optional): Arguments of the file backend.
            Defaults to None.
    """
    if file_client_args is not None or not _is_local(
            str(filename), backend_args):
        return _mmengine_save_checkpoint(
            checkpoint,
            filename,
            file_client_args=file_client_args,
            backend_args=backend_args)
    atomic_torch_save(checkpoint, str(filename))


class AtomicTextWriter:
    """A text file opened for writing that appears only when closed.

    ``with AtomicTextWriter(path) as f: f.write(...)`` writes a temporary
    file next to ``path`` and, when the block ends without an error,
    ``fsync``-s it and renames it over ``path``; after an error the
    temporary file is removed and ``path`` is untouched.

    Args:
        path (str): The destination file.
        encoding (str): Text encoding. Defaults to 'utf-8'.
    """

    def __init__(self, path: str, encoding: str = 'utf-8'):
        self.path = str(path)
        self._tmp = _temp_name(self.path)
        self._file = _open_new(self._tmp, 'w', encoding=encoding)

    def write(self, text: str) -> int:
        return self._file.write(text)

    def close(self, commit: bool = True) -> None:
        """Close; rename over the destination if ``commit``."""
        if self._file.closed:
            return
        try:
            if commit:
                self._file.flush()
                os.fsync(self._file.fileno())
        finally:
            self._file.close()
        if commit:
            os.replace(self._tmp, self.path)
            _fsync_dir(osp.dirname(osp.abspath(self.path)))
        elif osp.exists(self._tmp):
            os.unlink(self._tmp)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(commit=exc_type is None)


def checkpoint_hook_open(file, mode: str = 'r', *args, **kwargs):
    """``open`` for :mod:`mmengine.hooks.checkpoint_hook`.

    The ``CheckpointHook`` writes the ``last_checkpoint`` pointer with
    ``open(path, 'w')``, its only ``open`` call; bound as that module's
    global ``open``, this function turns exactly that write into an
    :class:`AtomicTextWriter` and hands anything else to :func:`open`.
    """
    if mode == 'w' and osp.basename(str(file)) == POINTER_NAME and not args \
            and set(kwargs) <= {'encoding'}:
        return AtomicTextWriter(file, **kwargs)
    return open(file, mode, *args, **kwargs)


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

    Drop-in for mmengine's ``find_latest_checkpoint``: reads the
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
