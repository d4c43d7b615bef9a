# Copyright (c) galddc_mm contributors. All rights reserved.
"""Stop the worker processes of persistent dataloaders when a run ends.

A ``DataLoader`` with ``persistent_workers=True`` keeps its iterator, and
so its worker processes, for as long as the loader lives, and the runner's
loops keep their loaders to the end of the process. torch (2.11 here, and
the versions before it back to pytorch/pytorch#72269 of 2022; the wait is
pytorch/pytorch#81794) registers one exit handler per worker of a
persistent, pinned-memory iterator that joins the worker with a 5-second
timeout and only then terminates it; nothing told the worker to stop, so
every join runs into its timeout. With the ResNet-50 recipes' 8 workers
for the training, validation and test loaders that is 24 x 5 = 120 s
after the last log line, on every rank (measured on one H200 with torch
2.11: 121.2 s between the end of ``main()`` and the last exit handler,
docs/benchmarks.md). Newer torch (2.14) shuts such iterators down at
exit itself.

:func:`stop_loader_workers` shuts the iterators down the way their own
``__del__`` does (the pin-memory thread first, then each worker through
its index queue) and drops them, so the loader starts new workers if it is
iterated again. The runner calls it when ``train``, ``val`` or ``test``
returns or raises.
"""
import logging
from typing import Iterable, List

from mmengine.logging import print_log
from torch.utils.data import DataLoader

__all__ = [
    'runner_dataloaders', 'stop_loader_workers', 'stop_runner_loader_workers'
]

#: The runner's attributes that hold its loops once they are built.
_LOOP_ATTRS = ('_train_loop', '_val_loop', '_test_loop')


def runner_dataloaders(runner) -> List[DataLoader]:
    """The ``DataLoader``s held by the runner's built loops, each once.

    A loop that is still a config dict is not built (and has no loader). A
    loop may hold more than one loader (the GALD-DC loop keeps its image
    loader while a stage reads cached latents).

    Args:
        runner (mmengine.runner.Runner): The runner.

    Returns:
        list[DataLoader]: The loaders, in loop order.
    """
    loaders, seen = [], set()
    for attr in _LOOP_ATTRS:
        loop = getattr(runner, attr, None)
        if loop is None or isinstance(loop, dict):
            continue
        for value in vars(loop).values():
            if isinstance(value, DataLoader) and id(value) not in seen:
                seen.add(id(value))
                loaders.append(value)
    return loaders


def stop_loader_workers(loaders: Iterable[DataLoader]) -> int:
    """Shut down the live worker processes of persistent loaders.

    Loaders without workers, or whose iterator is not kept
    (``persistent_workers=False``), are left alone.

    Args:
        loaders (Iterable[DataLoader]): The loaders.

    Returns:
        int: How many worker processes were stopped.
    """
    stopped = 0
    for loader in loaders:
        iterator = getattr(loader, '_iterator', None)
        if iterator is None or not hasattr(iterator, '_shutdown_workers'):
            continue
        stopped += sum(w.is_alive() for w in getattr(iterator, '_workers', ()))
        # What the iterator's __del__ does; a no-op when it already ran.
        iterator._shutdown_workers()
        loader._iterator = None
    return stopped


def stop_runner_loader_workers(runner) -> None:
    """:func:`stop_loader_workers` on the runner's loaders, said in its log.

    An error is logged, not raised: this runs in a ``finally`` block and
    must not hide the error of the run.

    Args:
        runner (mmengine.runner.Runner): The runner.
    """
    try:
        stopped = stop_loader_workers(runner_dataloaders(runner))
    except Exception as error:  # noqa: BLE001 (logged, see the docstring)
        print_log(
            f'Could not stop the dataloader workers ({type(error).__name__}:'
            f' {error}); they end with the process.',
            logger='current', level=logging.WARNING)
        return
    if stopped:
        print_log(
            f'Stopped the {stopped} worker processes of the persistent '
            'dataloaders.', logger='current')
