# Copyright (c) galddc_mm contributors. All rights reserved.
"""Stress the end of 2-process runs: do successful runs always exit 0?

Runs, ``--runs`` times, under a parallel CPU load of ``--load`` busy
processes: a 2-process ``torchrun`` tiny 3-stage GALD-DC training on
Digits-LT (``tools/train.py``), then a 2-process test of its last
checkpoint (``tools/test.py``). Counts the runs that exited non-zero and
those that aborted at exit (``terminate called ...``, SIGABRT), and
prints one summary line per tool (also as JSON with ``--out``).

``--inject`` adds ``LateLastCollectiveHook`` (``tests/crash_hook.py``),
which makes rank 1's last collective end late on a gloo worker thread:
the rare interleaving a loaded machine produces at random, made certain.
``--repo`` runs another checkout (e.g. an older commit in a ``git
worktree``) with this script, for before/after figures. Not part of the
test suite; see docs/reliability.md for the figures.

Example::

    python tools/stress_clean_exit.py --runs 50 --load 2 --out stress.json
"""
import argparse
import json
import os
import os.path as osp
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG = 'configs/galddc/r20_digitslt.py'
TINY = [
    'train_cfg.stages.0.epochs=2',
    'train_cfg.stages.1.epochs=2',
    'train_cfg.stages.1.repeat=2',
    'train_cfg.stages.2.epochs=2',
    'train_cfg.val_interval=1',
    'model.diffusion_head.denoiser.hidden_dim=64',
    'model.diffusion_head.sampler.num_steps=5',
    'custom_hooks.0.num_per_class=4',
    'custom_hooks.0.gate=warn',
    'default_hooks.logger.interval=5',
]
ABORT = re.compile(r'terminate called|SIGABRT|exitcode\s*:\s*-6')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--runs', type=int, default=50)
    parser.add_argument(
        '--load',
        type=int,
        default=os.cpu_count() or 2,
        help='busy processes running beside the runs (default: one per '
        'core)')
    parser.add_argument(
        '--inject',
        action='store_true',
        help='make rank 1\'s last collective end late (LateLastCollective'
        'Hook of tests/crash_hook.py)')
    parser.add_argument(
        '--repo',
        default=REPO_ROOT,
        help='the checkout to run (default: this one)')
    parser.add_argument('--work-root', help='default: a temporary folder')
    parser.add_argument('--keep', action='store_true',
                        help='keep the work dirs (logs of failed runs are '
                        'always kept)')
    parser.add_argument('--out', help='write the summary here as JSON')
    return parser.parse_args(argv)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def config_for(repo: str, folder: str, inject: bool) -> str:
    config = osp.join(repo, CONFIG)
    if not inject:
        return config
    path = osp.join(folder, 'late_last_collective.py')
    with open(path, 'w') as f:
        f.write(f'''_base_ = [{config!r}]
custom_imports = dict(
    imports=['galddc_mm', 'crash_hook'], allow_failed_imports=False)
custom_hooks = [
    dict(type='GenerationReportHook', num_per_class=4, gate='warn'),
    dict(type='RankConsistencyHook'),
    dict(type='LateLastCollectiveHook', rank=1),
]
''')
    return path


def torchrun(repo: str, args, log_path: str) -> int:
    cmd = [
        sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2',
        f'--master_port={free_port()}'
    ] + args + ['--launcher', 'pytorch']
    env = dict(os.environ, OMP_NUM_THREADS='1', CUDA_VISIBLE_DEVICES='')
    env['PYTHONPATH'] = os.pathsep.join(
        [repo, osp.join(repo, 'tests'),
         env.get('PYTHONPATH', '')])
    with open(log_path, 'w') as log:
        return subprocess.run(
            cmd, cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT,
            timeout=900).returncode


def one_run(repo: str, folder: str, config: str) -> dict:
    work_dir = osp.join(folder, 'train')
    outcome = {}
    train_log = osp.join(folder, 'train.log')
    rc = torchrun(repo, [
        osp.join(repo, 'tools/train.py'), config, '--work-dir', work_dir,
        '--cfg-options', *TINY
    ], train_log)
    outcome['train'] = (rc, train_log)
    checkpoint = osp.join(work_dir, 'epoch_6.pth')
    if osp.isfile(checkpoint):
        test_log = osp.join(folder, 'test.log')
        rc = torchrun(repo, [
            osp.join(repo, 'tools/test.py'), config, checkpoint,
            '--work-dir', osp.join(folder, 'test')
        ], test_log)
        outcome['test'] = (rc, test_log)
    return outcome


def main(argv=None) -> dict:
    args = parse_args(argv)
    root = args.work_root or tempfile.mkdtemp(prefix='stress_clean_exit_')
    os.makedirs(root, exist_ok=True)
    load = [
        subprocess.Popen([sys.executable, '-c', 'while True: pass'])
        for _ in range(args.load)
    ]
    counts = {
        tool: dict(runs=0, nonzero=0, aborted=0, failed_logs=[])
        for tool in ('train', 'test')
    }
    start = time.time()
    try:
        for i in range(args.runs):
            folder = osp.join(root, f'run{i:03d}')
            os.makedirs(folder, exist_ok=True)
            config = config_for(args.repo, folder, args.inject)
            outcome = one_run(args.repo, folder, config)
            failed = False
            for tool, (rc, log_path) in outcome.items():
                c = counts[tool]
                c['runs'] += 1
                if rc != 0:
                    failed = True
                    c['nonzero'] += 1
                    c['failed_logs'].append(log_path)
                    with open(log_path, errors='replace') as f:
                        c['aborted'] += bool(ABORT.search(f.read()))
            if 'test' not in outcome:
                failed = True
            print(f'run {i + 1}/{args.runs}: ' + ', '.join(
                f'{tool} exit {rc}' for tool, (rc, _) in outcome.items()),
                  flush=True)
            if not failed and not args.keep:
                shutil.rmtree(folder, ignore_errors=True)
    finally:
        for proc in load:
            proc.kill()
    summary = dict(
        repo=args.repo,
        runs=args.runs,
        load=args.load,
        inject=args.inject,
        cpus=os.cpu_count(),
        minutes=round((time.time() - start) / 60, 1),
        tools=counts)
    for tool, c in counts.items():
        print(f'{tool}: {c["nonzero"]}/{c["runs"]} non-zero exits '
              f'({c["aborted"]} aborted at exit)')
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(summary, f, indent=2)
    return summary


if __name__ == '__main__':
    main()
