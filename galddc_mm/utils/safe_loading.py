# Copyright (c) galddc_mm contributors. All rights reserved.
"""Safe checkpoint loading under ``torch.load(weights_only=True)``.

Since torch 2.6 ``torch.load`` defaults to ``weights_only=True``, and
mmengine's checkpoints hold more than tensors: the message hub pickles
``mmengine.logging.HistoryBuffer`` objects, whose state holds numpy
arrays, numpy scalars (e.g. the ``eta`` runtime value) and the buffer's
statistics methods, pickled as ``getattr(HistoryBuffer, 'mean')``.
``torch.serialization.get_unsafe_globals_in_checkpoint`` on a checkpoint
written by mmengine 0.10.7's ``Runner`` lists exactly::

    mmengine.logging.history_buffer.HistoryBuffer
    numpy._core.multiarray._reconstruct, numpy.ndarray, numpy.dtype
    numpy._core.multiarray.scalar, builtins.getattr

(and the numpy dtype classes, e.g. ``numpy.dtypes.Float64DType``, are
needed to restore a dtype's state).

:func:`register_safe_loading`, called once when :mod:`galddc_mm` is
imported, extends torch and mmengine through their registries only; no
attribute of mmengine is rebound:

1. ``torch.serialization.add_safe_globals`` allow-lists exactly these
   globals. ``builtins.getattr`` is not allowed as such: the name is bound
   to :func:`_history_buffer_getattr`, which only hands out
   ``HistoryBuffer``'s registered statistics methods. Loading never falls
   back to ``weights_only=False``.
2. ``CheckpointLoader.register_scheme`` replaces the handler of local
   files (prefix ``''``) by :func:`load_from_local`: an integrity check
   (:func:`~galddc_mm.utils.checkpoint_safety.checkpoint_damage`, no
   unpickling) raising :class:`DamagedCheckpointError`, then the safe load
   raising :class:`UnsafeCheckpointError`, which names the refused globals
   and states that nothing from the file was executed.
3. The handlers of the other schemes registered at that moment
   (``http://``, ``torchvision://``, ``open-mmlab://``, ...; they call
   ``torch.load`` themselves) are registered again, wrapped so that their
   loads are weights-only too and the same refusal raises
   :class:`UnsafeCheckpointError` instead of torch's message, which
   advises ``weights_only=False``. (mmengine downloads ``http://``,
   ``torchvision://``, ``mmcls://`` and URL ``open-mmlab://`` checkpoints
   with ``torch.hub.load_state_dict_from_url``, whose ``weights_only``
   defaults to False: unwrapped, a malicious download runs on load. The
   wrapper sets torch's ``TORCH_FORCE_WEIGHTS_ONLY_LOAD`` for the call,
   unless the user opted out with ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``.)

``load_from``, ``--resume`` and ``init_cfg=dict(type='Pretrained')`` all
load through ``CheckpointLoader``, so all three refuse a malicious file
without running any of it.
"""
import functools
import os
import os.path as osp
import pickle
import re
from contextlib import contextmanager
from typing import Any, Callable, Iterator, List, Optional

import numpy as np
import torch
from mmengine.logging import HistoryBuffer, print_log
from mmengine.runner.checkpoint import CheckpointLoader

from .checkpoint_safety import DamagedCheckpointError, checkpoint_damage

try:  # numpy>=2 moved ``numpy.core`` to ``numpy._core``
    from numpy._core import multiarray as _np_multiarray
except ImportError:  # pragma: no cover - numpy<2
    from numpy.core import multiarray as _np_multiarray

__all__ = [
    'UnsafeCheckpointError', 'checkpoint_safe_globals', 'load_from_local',
    'register_safe_loading', 'safe_torch_load'
]

_WEIGHTS_ONLY_FAILURE = 'Weights only load failed'
_HAS_SAFE_GLOBALS = hasattr(torch.serialization, 'add_safe_globals')
_REGISTERED = False


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint was refused because its pickle carries disallowed objects.

    Raised instead of torch's generic ``UnpicklingError`` when
    ``torch.load(weights_only=True)`` meets a global (a class or function)
    that is not on the allow-list. The unpickler stops *before* calling or
    building anything it refuses, so no code from the file has run.

    Args:
        filename (str): The checkpoint that was refused.
        refused (list[str]): The refused globals, e.g. ``['posix.system']``.
        detail (str): What the weights-only unpickler reported.
    """

    def __init__(self, filename: str, refused: List[str], detail: str):
        self.filename = filename
        self.refused = refused
        what = (f'refers to {", ".join(refused)}, which is not'
                if refused else 'asks for an object that is not')
        super().__init__(
            f'Refused to load checkpoint {filename!r}: its pickle {what} on '
            'the allow-list of galddc_mm (tensors, containers, numpy '
            'arrays/scalars and mmengine\'s HistoryBuffer). Nothing from the '
            'file was executed: torch.load(weights_only=True) stops at the '
            'first disallowed object. If you trust the file and the object '
            'is harmless, allow-list it with '
            'torch.serialization.add_safe_globals([...]) before loading. '
            f'Unpickler said: {detail}')


def _history_buffer_getattr(obj: Any, name: str) -> Callable:
    """Restricted ``getattr`` for unpickling ``HistoryBuffer``.

    ``HistoryBuffer.__getstate__`` stores its statistics methods, which
    pickle writes as ``getattr(HistoryBuffer, 'mean')``. Allow-listing the
    real ``builtins.getattr`` would let a pickle reach any attribute of any
    object it can build (``__globals__``, ``__init__``, ...), so this
    stand-in is bound to the name ``builtins.getattr`` instead and answers
    only ``getattr(HistoryBuffer, <registered statistics method>)``.

    Args:
        obj (Any): Must be the ``HistoryBuffer`` class.
        name (str): A registered statistics method (``min``, ``max``,
            ``current``, ``mean`` or one added by ``register_statistics``).

    Returns:
        Callable: The statistics method.
    """
    allowed = set(HistoryBuffer._statistics_methods) | {
        'min', 'max', 'current', 'mean'
    }
    if obj is HistoryBuffer and isinstance(name, str) and name in allowed:
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(
        f'getattr({obj!r}, {name!r}) is not allowed: checkpoints may only '
        'refer to the statistics methods of HistoryBuffer '
        f'({sorted(allowed)})')


def checkpoint_safe_globals() -> list:
    """Return the globals allow-listed for ``torch.load(weights_only=True)``.

    Returns:
        list: Classes/functions, or ``(object, 'full.path')`` pairs where the
        path a pickle uses differs from the object's own (numpy 1.x paths and
        the restricted ``getattr``).
    """
    safe = [
        HistoryBuffer,
        np.ndarray,
        np.dtype,
        _np_multiarray._reconstruct,
        _np_multiarray.scalar,
        # Checkpoints written with numpy<2 name the same functions by their
        # old module path.
        (_np_multiarray._reconstruct, 'numpy.core.multiarray._reconstruct'),
        (_np_multiarray.scalar, 'numpy.core.multiarray.scalar'),
        (_history_buffer_getattr, 'builtins.getattr'),
    ]
    # A pickled dtype is rebuilt with ``numpy.dtype(code)`` and then its
    # state is set, which torch only allows for allow-listed types: the
    # concrete dtype classes (``numpy.dtypes.Float64DType``, ...). Numeric
    # and bool dtypes only; object arrays are not needed by any checkpoint.
    safe += [type(np.dtype(code)) for code in '?bBhHiIlLqQefdgFDG']
    return safe


def _refused_globals(filename: str, err: Exception) -> List[str]:
    """Name the globals behind a weights-only refusal, without unpickling.

    ``get_unsafe_globals_in_checkpoint`` only disassembles the pickle, so it
    is safe on a hostile file. It lists every global not allow-listed; when
    it cannot tell (e.g. a legacy, non-zip file) the names are parsed from
    the unpickler's message.
    """
    names: List[str] = []
    scan = getattr(torch.serialization, 'get_unsafe_globals_in_checkpoint',
                   None)
    if scan is not None:
        try:
            names = sorted(scan(filename))
        except Exception:  # fall back to the message
            names = []
    if not names:
        names = re.findall(r'GLOBAL (\S+) ', str(err))
    return names


def _unpickler_detail(err: Exception) -> str:
    """Keep the unpickler's own reason, drop torch's generic advice.

    torch's message suggests retrying with ``weights_only=False``, which is
    exactly what must not be done with an untrusted file.
    """
    boilerplate = ('Weights only load failed', 'Please file an issue',
                   'Check the documentation', '(1)', '(2)')
    lines = []
    for line in str(err).splitlines():
        line = line.strip()
        if not line or line.startswith(boilerplate):
            continue
        lines.append(line.replace('WeightsUnpickler error:', '').strip())
    return ' '.join(line for line in lines if line)


def _translate_refusal(filename: str, err: pickle.UnpicklingError,
                       scan: bool) -> pickle.UnpicklingError:
    """Turn torch's weights-only failure into a clear error.

    Args:
        filename (str): The file being loaded.
        err (UnpicklingError): What ``torch.load`` raised.
        scan (bool): Whether ``filename`` is a local file whose pickle may
            be scanned for its globals.

    Returns:
        UnpicklingError: :class:`UnsafeCheckpointError` for a refused
        object, a plain ``UnpicklingError`` saying the file is damaged for
        an unknown opcode, or ``err`` itself for any other failure.
    """
    if _WEIGHTS_ONLY_FAILURE not in str(err):
        return err  # not a weights-only refusal
    detail = _unpickler_detail(err)
    if detail.startswith('Unsupported operand'):
        return pickle.UnpicklingError(
            f'Cannot load checkpoint {filename!r}: it is damaged, not a '
            'torch.save file, or uses a pickle opcode the safe loader does '
            f'not support ({detail}). Nothing from the file was executed.')
    refused = (_refused_globals(filename, err) if scan else re.findall(
        r'GLOBAL (\S+) ', str(err)))
    return UnsafeCheckpointError(filename, refused, detail)


def safe_torch_load(filename: str, map_location: Optional[Any] = None):
    """``torch.load(filename, weights_only=True)`` with a clear refusal.

    Args:
        filename (str): A local checkpoint file.
        map_location (Any, optional): Same as in :func:`torch.load`.
            Defaults to None.

    Returns:
        Any: The loaded object.

    Raises:
        UnsafeCheckpointError: If the pickle refers to a disallowed global.
        pickle.UnpicklingError: If the file is damaged (unknown opcode).
    """
    try:
        return torch.load(
            filename, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise _translate_refusal(str(filename), err, scan=True) from None


def load_from_local(filename: str, map_location: Optional[Any] = None):
    """The handler of local files registered with ``CheckpointLoader``.

    Checks the file's integrity (:func:`checkpoint_damage`, no unpickling)
    before the safe load.

    Args:
        filename (str): A local checkpoint file.
        map_location (Any, optional): Same as in :func:`torch.load`.
            Defaults to None.

    Returns:
        Any: The loaded checkpoint.

    Raises:
        FileNotFoundError: The file does not exist.
        DamagedCheckpointError: The file is truncated or fails a CRC.
        UnsafeCheckpointError: The pickle refers to a disallowed global.
    """
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    reason = checkpoint_damage(filename)
    if reason is not None:
        raise DamagedCheckpointError(filename, reason)
    return safe_torch_load(filename, map_location=map_location)


_FORCE_WEIGHTS_ONLY = 'TORCH_FORCE_WEIGHTS_ONLY_LOAD'
_FORCE_NO_WEIGHTS_ONLY = 'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD'


@contextmanager
def _weights_only_forced() -> Iterator[None]:
    """Make every ``torch.load`` in the block weights-only.

    torch reads ``TORCH_FORCE_WEIGHTS_ONLY_LOAD`` at each ``torch.load``
    call and then ignores an explicit ``weights_only=False`` (torch.hub's
    default). The variable is restored afterwards. A user who set
    ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` has opted out: torch would refuse
    both at once, and the choice is theirs.
    """
    if os.environ.get(_FORCE_NO_WEIGHTS_ONLY, '0').lower() in ('1', 'y',
                                                               'yes', 'true'):
        yield
        return
    previous = os.environ.get(_FORCE_WEIGHTS_ONLY)
    os.environ[_FORCE_WEIGHTS_ONLY] = '1'
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(_FORCE_WEIGHTS_ONLY, None)
        else:
            os.environ[_FORCE_WEIGHTS_ONLY] = previous


def _translating_refusals(loader: Callable) -> Callable:
    """Wrap a scheme handler: weights-only loads and a clear refusal.

    Args:
        loader (Callable): A handler of ``CheckpointLoader``, called as
            ``loader(filename, map_location)``.

    Returns:
        Callable: The same handler, loading with ``weights_only=True`` even
        where it asks for less, and raising :class:`UnsafeCheckpointError`
        (or a plain ``UnpicklingError`` saying the file is damaged) instead
        of torch's weights-only failure. ``__name__`` is kept: mmengine
        logs it as the backend's name.
    """

    @functools.wraps(loader)
    def handler(filename, map_location=None, *args, **kwargs):
        try:
            with _weights_only_forced():
                return loader(filename, map_location, *args, **kwargs)
        except UnsafeCheckpointError:
            raise
        except pickle.UnpicklingError as err:
            # A downloaded file is not at ``filename``: no scan, the
            # refused names come from the unpickler's message.
            translated = _translate_refusal(str(filename), err, scan=False)
            if translated is err:
                raise
            raise translated from None

    handler._translates_refusals = True
    return handler


def register_safe_loading() -> None:
    """Allow-list mmengine's checkpoint content, register the handlers.

    Idempotent. Schemes registered later (by another plugin) keep their
    own handler.
    """
    global _REGISTERED
    if _REGISTERED:
        return
    _REGISTERED = True
    if not _HAS_SAFE_GLOBALS:
        # torch<2.4 cannot allow-list classes, so a weights-only load of an
        # mmengine checkpoint cannot work; mmengine's own loader stays.
        print_log(
            f'torch {torch.__version__} has no add_safe_globals; checkpoints '
            'are loaded by mmengine unchanged (torch>=2.4 is needed for the '
            'safe loader).',
            logger='current')
        return
    torch.serialization.add_safe_globals(checkpoint_safe_globals())
    # Reading the registry (a class attribute, no public accessor) to wrap
    # each handler in place; ``force`` replaces a prefix's handler.
    for prefix, loader in list(CheckpointLoader._schemes.items()):
        if prefix == '' or getattr(loader, '_translates_refusals', False):
            continue
        CheckpointLoader.register_scheme(
            prefixes=prefix, loader=_translating_refusals(loader), force=True)
    # ``''`` is the local-file scheme (the fallback of every path).
    CheckpointLoader.register_scheme(
        prefixes='', loader=load_from_local, force=True)
