# Copyright (c) galddc_mm contributors. All rights reserved.
"""The life of the default process group: start it on any machine, end it
before the interpreter does.

**Starting.** mmengine's ``init_dist`` binds a CUDA device unconditionally
and configs ask for NCCL; on a machine without an accelerator
:func:`init_process_group` starts a gloo group instead (``torchrun`` on a
CPU), otherwise it hands over to mmengine unchanged.

**Ending (why a run could abort at exit after succeeding).** A gloo
process group runs its collectives on worker threads (``pt_gloo_runloop``)
that live as long as the group object. A worker still holds the last
collective's work, and so its tensors, for a moment after the caller's
``wait()`` has returned. If the main thread reaches interpreter
finalization inside that moment, the worker's release of a tensor that
Python once owned must take the GIL; CPython answers a thread that asks for
the GIL during finalization with ``pthread_exit``, whose forced unwind
through a ``noexcept`` C++ destructor calls ``std::terminate``::

    terminate called without an active exception
    ... failed (exitcode: -6) local_rank: 1 ... SIGABRT

The window is short, so the abort needs a loaded machine (the full test
suite), but nothing closes it: ``destroy_process_group()`` drops
``torch.distributed``'s own references to the group, not the group. Two
things keep the group, and its workers, alive until the process dies:

1. every ``DistributedDataParallel`` (``process_group`` attribute and its
   C++ reducer), and the runner keeps its wrapped model to the end;
2. three torch modules bind ``group.WORLD`` as a *default argument* when
   they are first imported (:data:`MODULES_BINDING_WORLD`):
   ``torch.distributed.nn`` (ten collectives), ``torch.distributed.optim``
   (``ZeroRedundancyOptimizer``'s broadcast) and
   ``torch.distributed.fsdp.sharded_grad_scaler``. Imported once the group
   exists (DDP's constructor imports the first through ``torch._dynamo``;
   importing ``mmengine.model`` or ``mmengine.optim`` imports the second;
   ``AmpOptimWrapper(use_fsdp=True)`` the third), they hold the group
   until the process ends.

So :func:`init_process_group` imports these modules before the group
exists (:func:`import_modules_binding_world`; their defaults become
``None``, which means the default group anyway) and registers
:func:`shutdown_process_group` with :mod:`atexit`.
Exit handlers run while the interpreter is intact; the shutdown unwraps
the model wrappers of every runner it was told about
(:func:`track_model_owner`), destroys the group and collects it, so that
its destructor joins the worker threads (the binding releases the GIL
first) while a worker can still take the GIL. The runner also ends
``train``/``val``/``test`` with a barrier, so no rank tears down while a
peer is still inside a collective.
"""
import atexit
import datetime
import gc
import importlib
import logging
import os
import sys
import weakref
from typing import Iterable, List, Optional

import torch.nn as nn
from mmengine import dist as mmengine_dist
from mmengine.device import (
    is_cuda_available,
    is_mlu_available,
    is_musa_available,
    is_npu_available,
)
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from torch import distributed as torch_dist
from torch.nn.parallel import DistributedDataParallel

__all__ = [
    'MODULES_BINDING_WORLD', 'accelerator_available', 'gloo_worker_threads',
    'import_modules_binding_world', 'init_process_group', 'live_thread_names',
    'release_model_wrappers', 'shutdown_process_group', 'track_model_owner'
]

#: Name the gloo backend gives its collective worker threads.
GLOO_WORKER_THREAD = 'pt_gloo_runloop'

# Objects with a ``model`` attribute (runners) whose wrappers hold the group.
_owners: 'weakref.WeakSet' = weakref.WeakSet()
_shutdown_registered = False


def accelerator_available() -> bool:
    """Whether mmengine's ``init_dist`` can bind a device on this machine."""
    return (is_cuda_available() or is_npu_available() or is_mlu_available()
            or is_musa_available())


#: Modules whose functions take ``group.WORLD`` as a default argument,
#: evaluated at import: imported after the group exists, they hold it.
MODULES_BINDING_WORLD = (
    'torch.distributed.nn',
    'torch.distributed.optim',
    'torch.distributed.fsdp.sharded_grad_scaler',
)


def import_modules_binding_world() -> None:
    """Import :data:`MODULES_BINDING_WORLD` while no default group exists.

    Their functions take ``group=group.WORLD`` as a default argument,
    evaluated at import: imported after the group is created they would
    hold the group object for the life of the interpreter (see the module
    docstring). Imported first, the default is ``None`` (the default group
    at call time), which is what the functions mean. Call it before
    starting a group by hand (``torch.distributed.init_process_group``);
    :func:`init_process_group` calls it.
    """
    late = [name for name in MODULES_BINDING_WORLD if name not in sys.modules]
    if late and torch_dist.is_available() and torch_dist.is_initialized():
        print_log(
            f'{", ".join(late)} imported after the process group was '
            'created: their default arguments keep the group alive until '
            'the process ends, so its worker threads cannot be joined at '
            'exit.',
            logger='current',
            level=logging.WARNING)
    for name in late:
        try:
            importlib.import_module(name)
        except ImportError:  # a torch without it cannot bind the group
            continue


def init_process_group(launcher: str,
                       backend: str = 'nccl',
                       init_backend: str = 'torch',
                       **kwargs) -> None:
    """Start the default process group; see the module docstring.

    With the ``pytorch`` launcher (``torchrun``) on a machine without an
    accelerator, the group is started with gloo, whatever ``backend`` says
    (NCCL needs GPUs), and no device is bound. Everything else goes to
    :func:`mmengine.dist.init_dist` unchanged.

    Args:
        launcher (str): ``'pytorch'``, ``'slurm'`` or ``'mpi'``.
        backend (str): The backend asked for. Defaults to ``'nccl'``.
        init_backend (str): mmengine's ``init_backend``. Defaults to
            ``'torch'``.
        **kwargs: Passed on; ``timeout`` is in seconds, as in
            ``env_cfg.dist_cfg``.
    """
    import_modules_binding_world()
    if (launcher == 'pytorch' and init_backend == 'torch'
            and not accelerator_available()):
        if backend != 'gloo':
            print_log(
                f'CUDA is not available: using the gloo backend instead of '
                f'{backend!r}.',
                logger='current')
        timeout = kwargs.pop('timeout', None)
        if timeout is not None:
            kwargs['timeout'] = datetime.timedelta(seconds=timeout)
        torch_dist.init_process_group(backend='gloo', **kwargs)
    else:
        mmengine_dist.init_dist(
            launcher, backend=backend, init_backend=init_backend, **kwargs)
    _register_shutdown()


def _register_shutdown() -> None:
    global _shutdown_registered
    if not _shutdown_registered:
        # Registered after logging's own exit handler, so it runs first
        # (exit handlers run last-in, first-out) and can still log.
        atexit.register(shutdown_process_group)
        _shutdown_registered = True


def track_model_owner(owner) -> None:
    """Have :func:`shutdown_process_group` unwrap ``owner.model`` at exit.

    Args:
        owner: An object whose ``model`` attribute may be (or contain)
            ``DistributedDataParallel`` wrappers, e.g. a runner. Held
            weakly.
    """
    _owners.add(owner)
    _register_shutdown()


def release_model_wrappers(model: nn.Module) -> nn.Module:
    """Remove every ``DistributedDataParallel`` wrapper from ``model``.

    Handles a model wrapped as a whole (mmengine's
    ``MMDistributedDataParallel``) and a model whose children are wrapped
    one by one (``MMSeparateDistributedDataParallel``, ours). Without their
    wrappers the reducers, and the references they hold to the process
    group, can be freed.

    Args:
        model (nn.Module): A model, wrapped or not.

    Returns:
        nn.Module: The model without any DDP wrapper (the same object when
        only children were wrapped).
    """
    while is_model_wrapper(model):
        model = model.module
    for parent in list(model.modules()):
        for name, child in list(parent._modules.items()):
            if isinstance(child, DistributedDataParallel):
                parent._modules[name] = child.module
    return model


def live_thread_names() -> Optional[List[str]]:
    """Names of this process's native threads.

    Returns:
        list[str] | None: One name per thread, or None where threads cannot
        be listed (not Linux).
    """
    tasks = '/proc/self/task'
    if not os.path.isdir(tasks):
        return None
    names = []
    for tid in sorted(os.listdir(tasks)):
        try:
            with open(os.path.join(tasks, tid, 'comm')) as f:
                names.append(f.read().strip())
        except OSError:  # the thread ended meanwhile
            continue
    return names


def gloo_worker_threads() -> Optional[int]:
    """The number of live gloo collective threads of this process.

    A worker names itself when it starts to run, so right after a group
    starts its threads may still go unnamed and uncounted; once a
    collective has completed, the worker that ran it is counted.

    Returns:
        int | None: The count, or None where threads cannot be listed.
    """
    names = live_thread_names()
    return None if names is None else names.count(GLOO_WORKER_THREAD)


def _drop_last_exception() -> None:
    """Forget the uncaught exception the interpreter keeps for debuggers.

    Its traceback holds the frames of the failed call, and with them the
    model wrappers that would keep the group alive. At exit, after the
    traceback has been printed, nobody needs it any more.
    """
    for name in ('last_type', 'last_value', 'last_traceback', 'last_exc'):
        if hasattr(sys, name):
            setattr(sys, name, None)


def shutdown_process_group(owners: Optional[Iterable] = None) -> None:
    """End the default process group and join its worker threads.

    Runs at exit (registered by :func:`init_process_group` and
    :func:`track_model_owner`); calling it earlier is allowed, and it does
    nothing when no group is running. Steps: unwrap the model of every
    tracked owner (and of ``owners``), drop the kept uncaught exception,
    ``destroy_process_group()``, then a garbage collection, which frees the
    group and so joins its worker threads while the interpreter is alive.
    A warning names the case where something else still holds the group.

    Args:
        owners (Iterable, optional): More objects whose ``model`` attribute
            is to be unwrapped. Defaults to None.
    """
    if not (torch_dist.is_available() and torch_dist.is_initialized()):
        return
    for owner in list(_owners) + list(owners or []):
        model = getattr(owner, 'model', None)
        if isinstance(model, nn.Module):
            owner.model = release_model_wrappers(model)
    _drop_last_exception()
    torch_dist.destroy_process_group()
    gc.collect()
    left = gloo_worker_threads()
    if left:
        print_log(
            f'{left} gloo worker thread(s) are still running after the '
            'process group was destroyed: something still references the '
            'group (a DistributedDataParallel kept by user code, or one of '
            f'{", ".join(MODULES_BINDING_WORLD)} first imported after the '
            'group was created), so the process may abort at exit. Drop '
            'that reference before the program ends, or call '
            'import_modules_binding_world() before starting the group.',
            logger='current',
            level=logging.WARNING)

