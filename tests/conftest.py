# Copyright (c) galddc_mm contributors. All rights reserved.
"""Shared helpers of the test suite.

The end-to-end tests run the tools as a user would, in subprocesses:

    from conftest import REPO_ROOT, run_tool, read_final_metrics
    proc = run_tool(['tools/train.py', 'configs/baselines/ce_digits_lt.py',
                     '--work-dir', work_dir])

``run_tool`` is also available as a pytest fixture for function-style
tests.
"""
import glob
import importlib.util
import json
import os
import os.path as osp
import re
import socket
import subprocess
import sys
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


@pytest.fixture(name='run_tool')
def run_tool_fixture():
    """:func:`run_tool` as a fixture."""
    return run_tool


@pytest.fixture(name='repo_root')
def repo_root_fixture():
    """The repository root."""
    return REPO_ROOT
