# Copyright (c) galddc_mm contributors. All rights reserved.
"""Interrupted, damaged and poisoned GALD-DC runs, through tools/train.py.

One uninterrupted tiny 3-stage Digits-LT run is the reference. A second
run is SIGKILLed at seven points (inside each stage, at both stage
boundaries, during the latent-cache extraction and while a checkpoint is
being written) and resumed with ``--resume`` after each: it must end with
the reference's checkpoints and metrics. Further runs resume past a
truncated latest checkpoint, stop on a NaN loss without touching the
last good checkpoint, and load (or refuse) checkpoints of other origins.
Faults come from ``tests/crash_hook.py`` (test-only hooks).
"""
import os
import os.path as osp
import re
import shutil
from collections import OrderedDict

import pytest
import torch
from conftest import (
    REPO_ROOT,
    TINY_GALDDC,
    TINY_GALDDC_CONFIG,
    hook_config,
    hook_env,
    read_final_metrics,
    run_tool,
)

CONFIG = TINY_GALDDC_CONFIG
# Stages: representation epochs 1-2, diffusion 3-4, finetune 5-6.
TINY = TINY_GALDDC
STATE_PREFIXES = ('backbone.', 'neck.', 'head.', 'diffusion_head.',
                  'geometry.', 'frozen_encoder.')


def _train(work_dir, *extra, config=CONFIG, options=(), check=True):
    args = [
        'tools/train.py', config, '--work-dir', work_dir, *extra,
        '--cfg-options', *TINY, *options
    ]
    proc = run_tool(args, check=check, env=hook_env(), timeout=600)
    proc.log = proc.stdout + proc.stderr
    return proc


def _fault_config(folder, name, hook):
    """The main config plus one test-only fault hook."""
    return hook_config(folder, name, osp.join(REPO_ROOT, CONFIG), [
        dict(type='GenerationReportHook', num_per_class=4, gate='warn'),
        dict(type='RankConsistencyHook'),
        hook,
    ])


def _state(path):
    import galddc_mm  # noqa: F401  (safe checkpoint loading)
    return torch.load(path, map_location='cpu')


def _assert_same_state(got_path, ref_path):
    got, ref = _state(got_path), _state(ref_path)
    assert got['meta']['epoch'] == ref['meta']['epoch']
    got, ref = got['state_dict'], ref['state_dict']
    assert set(got) == set(ref)
    for key in ref:
        if key.startswith(STATE_PREFIXES):
            torch.testing.assert_close(
                got[key], ref[key], msg=f'{got_path}: {key}')


def _pointer(work_dir):
    path = osp.join(work_dir, 'last_checkpoint')
    if not osp.exists(path):
        return None
    with open(path) as f:
        return osp.basename(f.read().strip())


def _ckpts(work_dir):
    return sorted(f for f in os.listdir(work_dir)
                  if re.match(r'epoch_\d+\.pth$', f))


def _first_stage_entered(log):
    match = re.search(r'Entering stage (\w+)', log)
    return match and match.group(1)


def _test_metrics(work_dir):
    return read_final_metrics(work_dir)['metrics']['test']


@pytest.fixture
def reference(tiny_galddc_reference):
    """The uninterrupted tiny 3-stage run (conftest), shared with
    test_galddc_training.py."""
    return tiny_galddc_reference[0]


def _copy_checkpoints(ref_dir, work_dir, epochs):
    """Start a work dir from the reference's first checkpoints."""
    os.makedirs(work_dir, exist_ok=True)
    for epoch in epochs:
        shutil.copy(
            osp.join(ref_dir, f'epoch_{epoch}.pth'),
            osp.join(work_dir, f'epoch_{epoch}.pth'))
    with open(osp.join(work_dir, 'last_checkpoint'), 'w') as f:
        f.write(osp.join(work_dir, f'epoch_{epochs[-1]}.pth'))


class TestKillAndResume:

    def test_seven_kills_then_resume_equals_uninterrupted(
            self, reference, tmp_path):
        work_dir = str(tmp_path / 'run')
        cfg = str(tmp_path)

        def killed_run(name, hook, resume=True):
            extra = ('--resume', ) if resume else ()
            proc = _train(
                work_dir, *extra, config=_fault_config(cfg, name, hook),
                check=False)
            assert proc.returncode == -9, (name, proc.log[-3000:])
            return proc

        # 1. Stage 1, epoch 1, iteration 3: nothing saved yet.
        killed_run('s1_mid', dict(type='FaultInjectionHook',
                                  fault='kill_at_iter', epoch=1, iter=2),
                   resume=False)
        assert _ckpts(work_dir) == [] and _pointer(work_dir) is None

        # 2. --resume with no checkpoint starts from scratch; killed right
        # after the last epoch of stage 1 is checkpointed.
        proc = killed_run('s1_end', dict(type='CrashAfterEpochHook',
                                         epoch=2))
        assert 'Did not find last_checkpoint' in proc.log
        assert _ckpts(work_dir) == ['epoch_1.pth', 'epoch_2.pth']
        assert _pointer(work_dir) == 'epoch_2.pth'

        # 3. Resumed at the stage boundary: stage 2 starts by extracting
        # the latent cache, killed at its 3rd batch.
        proc = killed_run('extract', dict(type='FaultInjectionHook',
                                          fault='kill_in_extraction',
                                          iter=2))
        assert 'resumed epoch: 2, iter: 12' in proc.log
        assert _first_stage_entered(proc.log) == 'diffusion'
        assert 'Latent cache:' not in proc.log  # died before the end
        assert _ckpts(work_dir) == ['epoch_1.pth', 'epoch_2.pth']

        # 4. Killed while writing the checkpoint of epoch 3: half of it is
        # on disk, in a temporary file; epoch_3.pth and the pointer never
        # see it.
        proc = killed_run('save', dict(type='FaultInjectionHook',
                                       fault='kill_in_save', epoch=3))
        assert 'Latent cache: 369 latents' in proc.log
        assert _ckpts(work_dir) == ['epoch_1.pth', 'epoch_2.pth']
        assert _pointer(work_dir) == 'epoch_2.pth'
        partial = [f for f in os.listdir(work_dir) if f.endswith('.tmp')]
        assert len(partial) == 1 and partial[0].startswith('.epoch_3.pth.')
        assert osp.getsize(osp.join(work_dir, partial[0])) > 0

        # 5. Stage 2 again from epoch 3; killed inside epoch 4 (the cache
        # is extracted again on entry).
        proc = killed_run('s2_mid', dict(type='FaultInjectionHook',
                                         fault='kill_at_iter', epoch=4,
                                         iter=2))
        assert 'a checkpoint write interrupted by a kill' in proc.log
        assert not [f for f in os.listdir(work_dir) if f.endswith('.tmp')]
        assert _first_stage_entered(proc.log) == 'diffusion'
        assert _ckpts(work_dir)[-1] == 'epoch_3.pth'

        # 6. Resumed inside stage 2; killed right after the first epoch of
        # stage 3 is checkpointed.
        proc = killed_run('s3_first', dict(type='CrashAfterEpochHook',
                                           epoch=5))
        assert 'resumed epoch: 3' in proc.log
        assert _first_stage_entered(proc.log) == 'diffusion'
        assert _pointer(work_dir) == 'epoch_5.pth'

        # 7. Resumed in stage 3 (E^(0), geometry and theta come from the
        # checkpoint; no extraction); killed inside its last epoch.
        proc = killed_run('s3_mid', dict(type='FaultInjectionHook',
                                         fault='kill_at_iter', epoch=6,
                                         iter=1))
        assert _first_stage_entered(proc.log) == 'finetune'
        assert 'Latent cache:' not in proc.log
        assert _ckpts(work_dir)[-1] == 'epoch_5.pth'

        # 8. The last resume completes the run.
        proc = _train(work_dir, '--resume')
        assert 'resumed epoch: 5' in proc.log
        assert _first_stage_entered(proc.log) == 'finetune'
        for epoch in range(1, 7):
            _assert_same_state(
                osp.join(work_dir, f'epoch_{epoch}.pth'),
                osp.join(reference, f'epoch_{epoch}.pth'))
        assert _test_metrics(work_dir) == _test_metrics(reference)

    def test_truncated_latest_checkpoint_falls_back(self, reference,
                                                    tmp_path):
        work_dir = str(tmp_path)
        _copy_checkpoints(reference, work_dir, [1, 2, 3, 4, 5])
        latest = osp.join(work_dir, 'epoch_5.pth')
        with open(latest, 'r+b') as f:
            f.truncate(osp.getsize(latest) // 2)
        proc = _train(work_dir, '--resume')
        assert re.search(
            r'WARNING - Cannot resume from the latest checkpoint: \S*'
            r'epoch_5\.pth: it is truncated.*Resuming from the previous '
            r'checkpoint \S*epoch_4\.pth instead', proc.log)
        assert 'resumed epoch: 4' in proc.log
        for epoch in (5, 6):
            _assert_same_state(
                osp.join(work_dir, f'epoch_{epoch}.pth'),
                osp.join(reference, f'epoch_{epoch}.pth'))
        assert _test_metrics(work_dir) == _test_metrics(reference)

    def test_explicit_resume_of_damaged_file_is_refused(self, reference,
                                                        tmp_path):
        damaged = str(tmp_path / 'epoch_4.pth')
        shutil.copy(osp.join(reference, 'epoch_4.pth'), damaged)
        with open(damaged, 'r+b') as f:
            f.truncate(1000)
        proc = _train(
            str(tmp_path / 'wd'), '--resume', damaged, check=False)
        assert proc.returncode != 0
        assert re.search(
            r"DamagedCheckpointError: Checkpoint '\S*epoch_4\.pth' is "
            r'damaged: it is truncated', proc.stderr)
        assert 'Epoch(train)' not in proc.log


class TestNonFiniteLoss:

    def test_nan_in_stage2_stops_before_checkpoint(self, reference,
                                                   tmp_path):
        work_dir = str(tmp_path / 'run')
        _copy_checkpoints(reference, work_dir, [1, 2, 3])
        with open(osp.join(work_dir, 'epoch_3.pth'), 'rb') as f:
            good = f.read()
        hook = dict(type='FaultInjectionHook', fault='nan_loss', epoch=4,
                    iter=1, loss='diffusion_head.proto_loss')
        proc = _train(
            work_dir, '--resume',
            config=_fault_config(str(tmp_path), 'nan', hook), check=False)
        assert proc.returncode == 1
        assert re.search(
            r"NonFiniteLossError: Non-finite loss in stage 'diffusion', "
            r'epoch 4, iteration 2/\d+ \(global iteration \d+\): '
            r'loss=nan, .*loss_proto=nan.*The last checkpoint written, '
            r'\S*epoch_3\.pth, predates the fault', proc.stderr)
        # The last good checkpoint is untouched and still the latest.
        assert _ckpts(work_dir) == ['epoch_1.pth', 'epoch_2.pth',
                                    'epoch_3.pth']
        assert _pointer(work_dir) == 'epoch_3.pth'
        with open(osp.join(work_dir, 'epoch_3.pth'), 'rb') as f:
            assert f.read() == good


class TestCheckpointOrigins:

    def test_plain_state_dict_load_from(self, reference, tmp_path):
        # A bare state dict of the stage-1 model (no meta, no optimizer),
        # as a user converting CE weights would write: it skips stage 1.
        state = _state(osp.join(reference, 'epoch_2.pth'))['state_dict']
        plain = OrderedDict(
            (k, v) for k, v in state.items()
            if k.startswith(('backbone.', 'neck.', 'head.')))
        weights = str(tmp_path / 'ce_weights.pth')
        torch.save(plain, weights)
        work_dir = str(tmp_path / 'run')
        _train(work_dir, options=[
            f'load_from={weights}', 'train_cfg.stages.0.epochs=0',
            'train_cfg.stages.1.epochs=1', 'train_cfg.stages.2.epochs=0'
        ])
        got = _state(osp.join(work_dir, 'epoch_1.pth'))['state_dict']
        for key in plain:
            torch.testing.assert_close(got[key], plain[key], msg=key)
            # E^(0) is the loaded encoder.
            if key.startswith('backbone.'):
                torch.testing.assert_close(got['frozen_encoder.' + key],
                                           plain[key], msg=key)

    def test_malicious_latest_checkpoint_not_skipped(self, reference,
                                                     tmp_path):
        # The integrity check does not unpickle: an intact but malicious
        # latest checkpoint reaches the safe loader, which refuses it
        # (and auto --resume does not quietly fall back past it).
        work_dir = str(tmp_path)
        _copy_checkpoints(reference, work_dir, [1, 2])
        marker = str(tmp_path / 'pwned')
        payload = f'''
import os, torch
class P:
    def __reduce__(self):
        return (os.system, ('touch {marker}', ))
torch.save(dict(meta=P(), state_dict=dict()), {osp.join(
            work_dir, "epoch_3.pth")!r})
'''
        run_tool(['-c', payload])
        with open(osp.join(work_dir, 'last_checkpoint'), 'w') as f:
            f.write(osp.join(work_dir, 'epoch_3.pth'))
        proc = _train(work_dir, '--resume', check=False)
        assert proc.returncode != 0
        assert re.search(
            r'UnsafeCheckpointError: Refused to load checkpoint '
            r'\S*epoch_3\.pth.*posix\.system', proc.stderr)
        assert 'Resuming from the previous' not in proc.log
        assert not osp.exists(marker)
