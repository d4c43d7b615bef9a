# Copyright (c) galddc_mm contributors. All rights reserved.
"""Measuring a step: median time, host-device syncs and a profile.

Each function takes the :class:`~benchmarks.common.BenchmarkContext` for
its device, process group and settings.
"""
import os
import os.path as osp
import statistics
import time
import warnings
from collections import Counter

import torch
import torch.distributed as torch_dist

from .common import ROOT

#: Host calls that launch GPU work, counted per profiled step.
LAUNCH_KEYS = ('cudaLaunchKernel', 'cudaLaunchKernelExC', 'cuLaunchKernel',
               'cuLaunchKernelEx', 'cudaGraphLaunch')


def short_path(path: str) -> str:
    """A source path relative to the repo or to site-packages."""
    path = osp.abspath(path)
    if path.startswith(ROOT + os.sep):
        return osp.relpath(path, ROOT)
    marker = 'site-packages' + os.sep
    return path.split(marker, 1)[1] if marker in path else path


def time_loop(ctx, fn, get_batch, warmup, iters):
    """Median seconds of ``fn(batch)`` (and of fetching the batch)."""
    for i in range(warmup):
        fn(get_batch(i))
    ctx.sync()
    if ctx.distributed:
        torch_dist.barrier()
    times, waits = [], []
    for i in range(iters):
        start = time.perf_counter()
        batch = get_batch(warmup + i)
        fetched = time.perf_counter()
        fn(batch)
        ctx.sync()
        times.append(time.perf_counter() - fetched)
        waits.append(fetched - start)
    seconds = statistics.median(times)
    if ctx.distributed:
        # The slowest rank sets the pace of a synchronous step.
        t = torch.tensor([seconds], device=ctx.device)
        torch_dist.all_reduce(t, op=torch_dist.ReduceOp.MAX)
        seconds = float(t)
    return seconds, statistics.median(waits)


def count_syncs(ctx, fn, batch):
    """Host-device synchronisations of one ``fn(batch)`` and their sites.

    ``torch.cuda.set_sync_debug_mode('warn')`` makes every synchronising
    CUDA call (``.item()``, ``bool()`` of a CUDA tensor, a blocking
    copy, ``nonzero`` ...) warn from the Python line that issued it.
    """
    if not ctx.cuda or ctx.args.no_sync_check:
        return None, []
    ctx.sync()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        torch.cuda.set_sync_debug_mode('warn')
        try:
            fn(batch)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    sites = [
        f'{short_path(w.filename)}:{w.lineno}' for w in caught
        if 'synchroniz' in str(w.message)
    ]
    return len(sites), [
        f'{site} x{n}' for site, n in Counter(sites).most_common(8)
    ]


def profile(ctx, name, fn, get_batch, steps=3):
    """torch.profiler's top ops and kernel launches of ``steps`` steps.

    The summary goes to ``ctx.profiles[name]`` (the JSON's ``profiles``).
    """
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as profiler
    activities = [ProfilerActivity.CPU]
    if ctx.cuda:
        activities.append(ProfilerActivity.CUDA)
    ctx.sync()
    with profiler(activities=activities) as prof:
        for i in range(steps):
            fn(get_batch(i))
        ctx.sync()
    events = prof.key_averages()
    launches = sum(e.count for e in events if e.key in LAUNCH_KEYS)
    gpu_us = 0.0
    for e in events:
        if getattr(e, 'device_type', None) == \
                torch.autograd.DeviceType.CUDA:
            gpu_us += getattr(e, 'self_device_time_total',
                              getattr(e, 'self_cuda_time_total', 0))
    table = None
    keys = (('self_device_time_total', 'self_cuda_time_total')
            if ctx.cuda else ('self_cpu_time_total', ))
    for key in keys:
        try:
            table = events.table(sort_by=key, row_limit=12)
            break
        except (AttributeError, KeyError, ValueError):
            continue
    ctx.profiles[name] = dict(
        kernel_launches_per_step=launches / steps,
        gpu_kernel_ms_per_step=gpu_us / 1e3 / steps,
        top_ops=table)
    if ctx.rank == 0:
        print(f'\n--- profile of {name} ({steps} steps): '
              f'{launches / steps:.0f} kernel launches/step, '
              f'{gpu_us / 1e3 / steps:.2f} ms of kernels/step')
        print(table)


def timeit(fn, device, repeats, warmup):
    """Median milliseconds of ``fn()``, synchronised around every run.

    The timer of the geometry micro-benchmark, whose steps take no batch.
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)
