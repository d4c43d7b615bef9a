# Copyright (c) galddc_mm contributors. All rights reserved.
"""End-to-end GALD-DC training through tools/train.py on Digits-LT.

One uninterrupted tiny 3-stage run is the reference; the resume tests kill
a run (SIGKILL, right after a checkpoint) inside stage 2 and inside stage 3
and check that ``--resume`` ends with the same geometry and metrics; the
gloo tests run 2 processes.
"""
import json
import os.path as osp
import re

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
    torchrun,
)

CONFIG = TINY_GALDDC_CONFIG
# Stages: representation epochs 1-2, diffusion 3-4, finetune 5-6.
TINY = TINY_GALDDC
GEOMETRY_KEYS = ('geometry.counts', 'geometry.prototypes', 'geometry.r_obs',
                 'geometry.r_real', 'geometry.real_prototypes',
                 'geometry.r_prior', 'geometry.initialized')


def _train(work_dir, *extra, config=CONFIG, options=(), check=True,
           python=None):
    args = [
        'tools/train.py', config, '--work-dir', work_dir, *extra,
        '--cfg-options', *TINY, *options
    ]
    return run_tool(args, check=check, env=hook_env(), python=python,
                    timeout=600)


def _crash_config(folder, epoch):
    """The main config plus a hook that SIGKILLs after epoch ``epoch``."""
    return hook_config(folder, f'crash_after_{epoch}',
                       osp.join(REPO_ROOT, CONFIG), [
                           dict(type='GenerationReportHook', num_per_class=4,
                                gate='warn'),
                           dict(type='RankConsistencyHook'),
                           dict(type='CrashAfterEpochHook', epoch=epoch),
                       ])


def _state(path):
    import galddc_mm  # noqa: F401  (safe checkpoint loading)
    return torch.load(path, map_location='cpu')['state_dict']


def _test_metrics(work_dir):
    return read_final_metrics(work_dir)['metrics']['test']


@pytest.fixture
def reference(tiny_galddc_reference):
    """The uninterrupted tiny 3-stage run (conftest): (work_dir, log)."""
    return tiny_galddc_reference


class TestStagedTraining:

    def test_three_stages_run_and_report(self, reference):
        work_dir, log = reference
        for stage in ('representation', 'diffusion', 'finetune'):
            assert f'Entering stage {stage}' in log
        assert 'Latent cache: 369 latents of dim 64' in log
        metrics = _test_metrics(work_dir)
        for key in ('accuracy/top1', 'accuracy/many', 'accuracy/medium',
                    'accuracy/few', 'accuracy/head', 'accuracy/tail'):
            assert 0 <= metrics[key] <= 100, key
        with open(osp.join(work_dir, 'generation_report.json')) as f:
            report = json.load(f)
        assert report['epoch'] == 4  # the end of the diffusion stage
        assert len(report['per_class']) == 10
        assert {'many', 'medium', 'few', 'head', 'tail'} <= set(
            report['summary'])
        for row in report['per_class']:
            assert row['gen_radius'] > 0 and 0 <= row['gen_acc'] <= 100
        with open(osp.join(work_dir, 'rank_consistency.json')) as f:
            assert json.load(f)['identical']

    def test_stage_parts_train_and_freeze(self, reference):
        work_dir, _ = reference
        s2, s4, s6 = (_state(osp.join(work_dir, f'epoch_{e}.pth'))
                      for e in (2, 4, 6))
        # Stage 2 (epochs 3-4): E and G frozen, theta and geometry move.
        for key in s2:
            if key.startswith(('backbone.', 'head.')):
                assert torch.equal(s2[key], s4[key]), key
        assert not torch.equal(s2['geometry.prototypes'],
                               s4['geometry.prototypes'])
        # E^(0) is the encoder at the end of stage 1.
        for key in s2:
            if key.startswith('backbone.'):
                assert torch.equal(s2[key], s4['frozen_encoder.' + key])
        # Stage 3 (hybrid): E and G move, theta and E^(0) do not.
        assert not torch.equal(s4['head.fc.weight'], s6['head.fc.weight'])
        assert not torch.equal(s4['backbone.conv1.weight'],
                               s6['backbone.conv1.weight'])
        for key in s4:
            if key.startswith(('diffusion_head.', 'frozen_encoder.')):
                assert torch.equal(s4[key], s6[key]), key

    def test_resume_inside_stage2_and_stage3(self, reference, tmp_path):
        ref_dir, _ = reference
        work_dir = str(tmp_path / 'run')
        # Killed right after epoch 3 (inside the diffusion stage) ...
        proc = _train(
            work_dir, config=_crash_config(tmp_path, 3), check=False)
        assert proc.returncode != 0
        assert not osp.exists(osp.join(work_dir, 'epoch_4.pth'))
        # ... resumed, killed again after epoch 5 (inside finetune) ...
        proc = _train(
            work_dir, '--resume', config=_crash_config(tmp_path, 5),
            check=False)
        assert proc.returncode != 0
        assert 'Entering stage diffusion' in proc.stdout + proc.stderr
        assert not osp.exists(osp.join(work_dir, 'epoch_6.pth'))
        # ... and resumed to the end.
        proc = _train(work_dir, '--resume')
        assert 'Entering stage finetune' in proc.stdout + proc.stderr
        ref = _state(osp.join(ref_dir, 'epoch_6.pth'))
        got = _state(osp.join(work_dir, 'epoch_6.pth'))
        for key in GEOMETRY_KEYS + ('diffusion_head.normalizer.mean', ):
            torch.testing.assert_close(got[key], ref[key], msg=key)
        for key in ref:
            if key.startswith(('frozen_encoder.', 'head.')):
                torch.testing.assert_close(got[key], ref[key], msg=key)
        assert _test_metrics(work_dir) == _test_metrics(ref_dir)

    def test_cuda_graph_step_falls_back_on_cpu(self, reference, tmp_path):
        """``model.cuda_graph_step=True`` on CPU: said once, same run."""
        ref_dir, _ = reference
        work_dir = str(tmp_path / 'graph_step')
        proc = _train(work_dir, options=['model.cuda_graph_step=True'])
        log = proc.stdout + proc.stderr
        assert log.count('model.cuda_graph_step: eager train step, because '
                         'the batch is not on a CUDA device') == 1
        assert 'captured as a CUDA graph' not in log
        ref = _state(osp.join(ref_dir, 'epoch_6.pth'))
        got = _state(osp.join(work_dir, 'epoch_6.pth'))
        assert set(got) == set(ref)
        for key in ref:
            torch.testing.assert_close(got[key], ref[key], msg=key)
        assert _test_metrics(work_dir) == _test_metrics(ref_dir)


class TestGenerationGate:
    """Stage 2 cut to one iteration: its latents must not reach stage 3."""

    ONE_STEP = ['train_cfg.stages.1.epochs=1', 'train_cfg.stages.1.repeat=1',
                'train_cfg.stages.1.batch_size=512',
                'train_cfg.stages.2.epochs=1', 'custom_hooks.0.gate=error']

    def test_gate_stops_then_warn_resumes(self, tmp_path):
        work_dir = str(tmp_path)
        proc = _train(work_dir, options=self.ONE_STEP, check=False)
        log = proc.stdout + proc.stderr
        assert proc.returncode != 0
        assert re.search(
            r'GenerationGateError: Generation gate: the latents stage 2 '
            r"generates are unfit to train stage 3 on: .*band '\w+'.*"
            r'outside \[0\.25, 4\].*The stage-2 checkpoint \S*epoch_3\.pth '
            r'is kept', log), log[-3000:]
        assert 'Entering stage finetune' not in log
        # Epochs 1-2: stage 1, epoch 3: the single stage-2 iteration.
        assert osp.isfile(osp.join(work_dir, 'epoch_3.pth'))
        with open(osp.join(work_dir, 'generation_report.json')) as f:
            report = json.load(f)
        assert not report['gate']['passed'] and report['gate']['problems']
        # A warning instead: --resume continues into stage 3 and says why
        # it should not have.
        proc = _train(
            work_dir, '--resume',
            options=self.ONE_STEP + ['custom_hooks.0.gate=warn'])
        log = proc.stdout + proc.stderr
        assert 'Entering stage finetune' in log
        assert re.search(r'WARNING - Generation gate: the latents', log)
        assert osp.isfile(osp.join(work_dir, 'epoch_4.pth'))

class TestDistributedTraining:

    def test_two_gloo_processes_three_stages(self, tmp_path):
        """A 3-stage run on 2 processes; then its geometry initialisation
        against 1 process starting stage 2 from its stage-1 checkpoint."""
        two = str(tmp_path / 'two')
        proc = _train(two, '--launcher', 'pytorch', python=torchrun(2))
        log = proc.stdout + proc.stderr
        assert 'bit-identical across 2 rank(s)' in log
        with open(osp.join(two, 'rank_consistency.json')) as f:
            verdict = json.load(f)
        assert verdict['world_size'] == 2 and verdict['identical']
        assert verdict['num_tensors'] > 100  # geometry + E^(0) + normaliser
        metrics = _test_metrics(two)
        assert 0 <= metrics['accuracy/few'] <= 100

        one = str(tmp_path / 'one')
        _train(one, options=[
            f'load_from={osp.join(two, "epoch_2.pth")}',  # end of stage 1
            'train_cfg.stages.0.epochs=0', 'train_cfg.stages.1.epochs=1',
            'train_cfg.stages.2.epochs=0'
        ])
        # After one stage-2 epoch in both runs.
        a = _state(osp.join(one, 'epoch_1.pth'))
        b = _state(osp.join(two, 'epoch_3.pth'))
        # Quantities fixed at initialisation (the EMA then sees different
        # batches in the two runs).
        torch.testing.assert_close(a['geometry.counts'], b['geometry.counts'])
        for key in ('geometry.real_prototypes', 'geometry.r_real',
                    'geometry.r_prior', 'diffusion_head.normalizer.mean',
                    'diffusion_head.normalizer.std'):
            torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


class TestKnownAnswerTestbed:
    """The testbed config through tools/train.py: the identity encoder
    (LatentPassThrough), the latent cache, stage 2 and a stable stage 3,
    and the known-answer report against the true distributions."""

    def test_identity_encoder_through_all_stages(self, tmp_path):
        work_dir = str(tmp_path / 'testbed')
        args = [
            'tools/train.py', 'configs/galddc/mechanism/gaussian_lt_galddc.py',
            '--work-dir', work_dir, '--cfg-options',
            'train_cfg.stages.1.epochs=1', 'train_cfg.stages.1.repeat=2',
            'train_cfg.stages.2.epochs=1', 'train_cfg.stages.2.repeat=1',
            'train_cfg.val_interval=1',
            'model.diffusion_head.sampler.num_steps=5',
            'custom_hooks.1.num_per_class=20',
            'custom_hooks.1.true_per_class=20'
        ]
        run_tool(args, timeout=600)
        with open(osp.join(work_dir, 'known_answer.json')) as f:
            report = json.load(f)
        assert report['true_radius'] == pytest.approx(
            # sigma * sqrt(2) * Gamma(32.5) / Gamma(32), sigma = 1, D = 64.
            7.9687, abs=1e-3)
        for band in ('head', 'tail', 'all'):
            summary = report['summary'][band]
            assert summary['radius_to_true'] > 0
            assert 0 <= summary['recall'] <= 1
        counts = [c['train_count'] for c in report['per_class']]
        assert counts[0] == 200 and counts[-1] == 10  # IF 20
        # G was trained in stage 3 on the 500-per-class test split.
        test = _test_metrics(work_dir)
        assert 'accuracy/top1' in test
        state = _state(osp.join(work_dir, 'epoch_2.pth'))
        # The identity encoder has no parameters; stage 3 trained G.
        assert not any(k.startswith('backbone.') for k in state)
        assert any(k.startswith('head.') for k in state)
