# Copyright (c) galddc_mm contributors. All rights reserved.
"""Distributed faults (2 gloo processes): a dead or hung rank ends the job.

A SIGKILLed rank closes its sockets: the survivors' next collective fails
at once and torchrun stops the group. A rank that hangs (alive, but no
longer taking part) is only noticed through the collective timeout,
``env_cfg.dist_cfg.timeout``. Either way the job must exit non-zero; the
subprocess limit of 120 s (``run_tool``'s timeout) fails the test if it
hangs instead. (That a run which succeeded exits 0 even when its last
collective ends late is checked by the 2-process runs of
``test_dist_tools.py``.)
"""
import os.path as osp
import tempfile
from unittest import TestCase

from conftest import REPO_ROOT, hook_config, hook_env, run_tool, torchrun

CONFIG = 'configs/galddc/r20_digitslt.py'
TINY = [
    'train_cfg.stages.0.epochs=2',
    'train_cfg.stages.1.epochs=1',
    'train_cfg.stages.2.epochs=1',
    'model.diffusion_head.denoiser.hidden_dim=32',
    'model.diffusion_head.sampler.num_steps=5',
]


def _fault_config(folder, fault):
    return hook_config(folder, fault, osp.join(REPO_ROOT, CONFIG), [
        dict(type='FaultInjectionHook', fault=fault, epoch=1, iter=1, rank=1)
    ])


def _torchrun(config, work_dir, *options):
    return run_tool([
        'tools/train.py', config, '--work-dir', work_dir, '--launcher',
        'pytorch', '--cfg-options', *TINY, *options
    ],
                    check=False,
                    env=hook_env(),
                    python=torchrun(2),
                    timeout=120)


class TestRankFailure(TestCase):

    def test_killed_rank_ends_the_job(self):
        with tempfile.TemporaryDirectory() as tmp:
            proc = _torchrun(
                _fault_config(tmp, 'kill_at_iter'), osp.join(tmp, 'wd'))
        log = proc.stdout + proc.stderr
        self.assertNotEqual(proc.returncode, 0)
        # torchrun names the rank that died first.
        self.assertRegex(
            log, r'Root Cause \(first observed failure\):\n\[0\]:\n(.*\n)*?'
            r'\s+rank\s+: 1 .*\n\s+exitcode\s+: -9')

    def test_hung_rank_times_out(self):
        with tempfile.TemporaryDirectory() as tmp:
            proc = _torchrun(
                _fault_config(tmp, 'hang_at_iter'), osp.join(tmp, 'wd'),
                'env_cfg.dist_cfg.timeout=10')
        log = proc.stdout + proc.stderr
        self.assertNotEqual(proc.returncode, 0)
        # Rank 0 gave up on its collective after the timeout (gloo's
        # message), then torchrun stopped the sleeping rank 1.
        self.assertRegex(log, r'\[rank0\]:.*Timed out waiting 10000ms')
