# Copyright (c) galddc_mm contributors. All rights reserved.
"""Shared helpers of the test suite.

The end-to-end tests run the tools as a user would, each in a process of
its own (forked from a warm interpreter, ``tests/tool_server.py``, to save
the imports; ``GALDDC_TESTS_TOOL_SERVER=0`` starts a fresh interpreter for
each):

    from conftest import REPO_ROOT, run_tool, read_final_metrics
    proc = run_tool(['tools/train.py', 'configs/baselines/ce_digits_lt.py',
                     '--work-dir', work_dir])

``run_tool`` is also available as a pytest fixture for function-style
tests.
"""
import atexit
import glob
import importlib.util
import json
import os
import os.path as osp
import re
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence

import pytest

#: The tests folder: on PYTHONPATH of tool subprocesses that load test-only
#: hooks (``crash_hook``) through ``custom_imports``.
TESTS_DIR = osp.dirname(osp.abspath(__file__))
REPO_ROOT = osp.dirname(TESTS_DIR)
DIGITS_CONFIG = osp.join(REPO_ROOT, 'configs', 'baselines', 'ce_digits_lt.py')


def tool_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """Environment of a tool subprocess: one thread, the repo importable."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')
    env['PYTHONPATH'] = os.pathsep.join(
        p for p in (REPO_ROOT, env.get('PYTHONPATH')) if p)
    # Never pick up a GPU in these CPU tests, even on a GPU machine.
    env['CUDA_VISIBLE_DEVICES'] = ''
    env.update(extra or {})
    return env


class _ToolServer:
    """Client of ``tests/tool_server.py``: the tools in forked children of
    one warm interpreter (see there), ~6 s of imports saved per run."""

    _instance = None

    @staticmethod
    def enabled() -> bool:
        return (os.environ.get('GALDDC_TESTS_TOOL_SERVER', '1') != '0'
                and hasattr(os, 'fork'))

    @classmethod
    def get(cls) -> '_ToolServer':
        if cls._instance is None or cls._instance.proc.poll() is not None:
            cls._instance = cls()
        return cls._instance

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, osp.join(TESTS_DIR, 'tool_server.py')],
            cwd=REPO_ROOT,
            env=tool_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            bufsize=0)
        self._buffer = b''  # read from the reply pipe, not yet a line
        self._last_start = 0.0
        atexit.register(self.close)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)

    def _reply(self, timeout: float) -> Optional[dict]:
        """The next reply line, or None after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b'\n' not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                raise RuntimeError(
                    'tests/tool_server.py ended unexpectedly; set '
                    'GALDDC_TESTS_TOOL_SERVER=0 to run the tools without it')
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b'\n', 1)
        return json.loads(line)

    def run(self, args: List[str], env: Dict[str, str],
            timeout: float) -> subprocess.CompletedProcess:
        # mmengine names a run's folder by the second it starts: keep two
        # runs (into one work dir) in different seconds, as the imports of
        # a fresh interpreter did.
        time.sleep(max(0.0, self._last_start + 1.1 - time.time()))
        self._last_start = time.time()
        with tempfile.TemporaryDirectory() as tmp:
            out, err = osp.join(tmp, 'stdout'), osp.join(tmp, 'stderr')
            request = dict(args=args, env=env, cwd=REPO_ROOT, stdout=out,
                           stderr=err)
            self.proc.stdin.write(json.dumps(request).encode() + b'\n')
            pid = self._reply(60)['pid']
            reply = self._reply(timeout)
            timed_out = reply is None
            if timed_out:
                os.kill(pid, signal.SIGKILL)
                reply = self._reply(60)

            def read(path):
                with open(path, errors='replace') as f:
                    return f.read()

            stdout, stderr = read(out), read(err)
        cmd = [sys.executable] + args
        if timed_out:
            raise subprocess.TimeoutExpired(cmd, timeout, stdout, stderr)
        return subprocess.CompletedProcess(cmd, reply['returncode'], stdout,
                                           stderr)


def run_tool(
        args: Sequence[str],
        check: bool = True,
        timeout: float = 300,
        env: Optional[Dict[str, str]] = None,
        python: Optional[List[str]] = None) -> subprocess.CompletedProcess:
    """Run ``python <args>`` from the repo root and return the process.

    Args:
        args (Sequence[str]): The script and its arguments, e.g.
            ``['tools/train.py', cfg, '--work-dir', d]``.
        check (bool): Fail the test (with the output's tail) on a non-zero
            exit status. Defaults to True.
        timeout (float): Seconds before the run is killed. Defaults to 300.
        env (dict, optional): Extra environment variables.
        python (list[str], optional): The command before ``args``.
            Defaults to ``[sys.executable]``; e.g.
            ``[sys.executable, '-m', 'torch.distributed.run', ...]``.

    Returns:
        subprocess.CompletedProcess: With ``stdout`` and ``stderr`` text.
    """
    cmd = list(python or [sys.executable]) + [str(a) for a in args]
    if (python is None and str(args[0]).endswith('.py')
            and _ToolServer.enabled()):
        proc = _ToolServer.get().run([str(a) for a in args], tool_env(env),
                                     timeout)
    else:
        proc = subprocess.run(
            cmd,
            cwd=REPO_ROOT,
            env=tool_env(env),
            capture_output=True,
            text=True,
            timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f'{" ".join(cmd)} exited with {proc.returncode}\n'
            f'--- stdout (tail) ---\n{proc.stdout[-4000:]}\n'
            f'--- stderr (tail) ---\n{proc.stderr[-4000:]}')
    return proc


def hook_env(**extra: str) -> Dict[str, str]:
    """Extra environment of a tool run whose config loads test-only hooks
    (``tests/crash_hook.py``): the tests folder importable."""
    return dict(PYTHONPATH=os.pathsep.join([REPO_ROOT, TESTS_DIR]), **extra)


def hook_config(folder: str, name: str, base: str, hooks: List[dict]) -> str:
    """Write ``<folder>/<name>.py``: the config ``base`` with ``hooks`` as
    its ``custom_hooks`` and ``tests/crash_hook.py`` imported (run it with
    :func:`hook_env`). Returns the path."""
    path = osp.join(folder, f'{name}.py')
    with open(path, 'w') as f:
        f.write(f'''_base_ = [{base!r}]
custom_imports = dict(
    imports=['galddc_mm', 'crash_hook'], allow_failed_imports=False)
custom_hooks = {hooks!r}
''')
    return path


def torchrun(nproc: int = 2) -> List[str]:
    """The ``python`` of :func:`run_tool` for ``nproc`` processes started
    by torchrun on a free port."""
    return [
        sys.executable, '-m', 'torch.distributed.run',
        f'--nproc_per_node={nproc}', f'--master_port={free_port()}'
    ]


def run_dirs(work_dir: str) -> List[str]:
    """The ``<work_dir>/<timestamp>`` folders of the runs, oldest first."""
    return sorted(
        d for d in glob.glob(osp.join(work_dir, '*')) if osp.isdir(d)
        and osp.basename(d)[:8].isdigit())


def read_final_metrics(work_dir: str, run: int = -1) -> dict:
    """``final_metrics.json`` written by ``tools/train.py``/``test.py``.

    Args:
        work_dir (str): The work dir of the run(s).
        run (int): Which run, by time order. Defaults to -1 (the latest).

    Returns:
        dict: ``{'metrics': {split: {key: value}}, ...}``.
    """
    runs = [
        d for d in run_dirs(work_dir)
        if osp.isfile(osp.join(d, 'final_metrics.json'))
    ]
    if not runs:
        raise AssertionError(f'no final_metrics.json under {work_dir}')
    with open(osp.join(runs[run], 'final_metrics.json')) as f:
        return json.load(f)


def read_scalars(work_dir: str, run: int = -1) -> List[dict]:
    """The ``vis_data/scalars.json`` records (one dict per logged step)."""
    path = osp.join(run_dirs(work_dir)[run], 'vis_data', 'scalars.json')
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def free_port() -> int:
    """A TCP port that is free right now (for torchrun / gloo)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def start_gloo_group(rank: int,
                     world_size: int,
                     port: int,
                     timeout_s: float = 60) -> None:
    """Start a gloo group in a process of ``torch.multiprocessing.spawn``.

    The torch modules that bind the group as a default argument are
    imported first. Imported after the group exists (importing mmengine's
    model or optim package does that), they keep the group to the end of
    the process, gloo's worker threads with it, and a thread still alive
    at interpreter exit can abort a rank that passed (``terminate called
    without an active exception``, SIGABRT). See
    ``galddc_mm/engine/runner/process_group.py``.

    Args:
        rank (int): This process's rank.
        world_size (int): The number of processes.
        port (int): A free port on 127.0.0.1 (:func:`free_port`), the same
            for every rank.
        timeout_s (float): The collective timeout in seconds. Defaults to
            60.
    """
    from datetime import timedelta

    import torch.distributed as torch_dist

    from galddc_mm.engine.runner import import_modules_binding_world
    import_modules_binding_world()
    torch_dist.init_process_group(
        'gloo',
        init_method=f'tcp://127.0.0.1:{port}',
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=timeout_s))


def end_gloo_group() -> Optional[int]:
    """End the group of :func:`start_gloo_group`; say whether it is gone.

    Destroys the default group and collects garbage, as the runner does at
    exit. Drop every ``DistributedDataParallel`` first: each one holds the
    group.

    Returns:
        int | None: The gloo worker threads still alive, which must be 0
        for the process to exit safely (None where threads cannot be
        listed). Workers hand it to the test, which asserts it.
    """
    from galddc_mm.engine.runner.process_group import (
        gloo_worker_threads,
        shutdown_process_group,
    )
    shutdown_process_group()
    return gloo_worker_threads()


def load_tool(name: str):
    """Import ``tools/<name>.py`` as a module (to call its functions)."""
    path = osp.join(REPO_ROOT, 'tools', f'{name}.py')
    spec = importlib.util.spec_from_file_location(f'galddc_tool_{name}',
                                                  path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_metric_tables(text: str) -> List[Dict[str, Dict[str, float]]]:
    """Parse the final-metrics tables the tools log, in order of appearance.

    Args:
        text (str): A log or captured stdout.

    Returns:
        list[dict]: One ``{split: {column: value}}`` per table, e.g.
        ``[{'val': {'top1': 85.0, 'many': 97.5, ...}}]``.
    """
    tables = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if not re.search(r'metrics \(%\).*:$', line):
            continue
        header = [c.strip() for c in lines[i + 1].strip('| ').split('|')]
        table = {}
        for row in lines[i + 3:]:
            if not row.startswith('|'):
                break
            cells = [c.strip() for c in row.strip('| ').split('|')]
            table[cells[0]] = {
                col: float(val)
                for col, val in zip(header[1:], cells[1:]) if val != '-'
            }
        tables.append(table)
    return tables


#: The tiny 3-stage GALD-DC run on Digits-LT of the end-to-end tests
#: (representation epochs 1-2, diffusion 3-4, finetune 5-6).
TINY_GALDDC_CONFIG = 'configs/galddc/r20_digitslt.py'
TINY_GALDDC = [
    'train_cfg.stages.0.epochs=2',
    'train_cfg.stages.1.epochs=2',
    'train_cfg.stages.1.repeat=2',
    'train_cfg.stages.2.epochs=2',
    'train_cfg.val_interval=1',
    'model.diffusion_head.denoiser.hidden_dim=64',
    'model.diffusion_head.sampler.num_steps=5',
    'custom_hooks.0.num_per_class=4',
    # A tiny stage 2 samples poor latents: report, but go on to stage 3.
    'custom_hooks.0.gate=warn',
    'default_hooks.checkpoint.max_keep_ckpts=-1',
    'default_hooks.logger.interval=5',
]


@pytest.fixture(scope='session')
def tiny_galddc_reference(tmp_path_factory):
    """One uninterrupted ``TINY_GALDDC`` run, trained once per session for
    the modules that compare their runs against it (they only read it).

    Returns:
        tuple: ``(work_dir, log)``: the run's folder and its output.
    """
    work_dir = str(tmp_path_factory.mktemp('tiny_galddc_reference'))
    proc = run_tool([
        'tools/train.py', TINY_GALDDC_CONFIG, '--work-dir', work_dir,
        '--cfg-options', *TINY_GALDDC
    ],
                    env=hook_env(),
                    timeout=600)
    return work_dir, proc.stdout + proc.stderr


@pytest.fixture(name='run_tool')
def run_tool_fixture():
    """:func:`run_tool` as a fixture."""
    return run_tool


@pytest.fixture(name='repo_root')
def repo_root_fixture():
    """The repository root."""
    return REPO_ROOT
