# Copyright (c) galddc_mm contributors. All rights reserved.
"""Bad configurations fail with a clear error before any epoch runs.

Each case builds the Digits-LT GALD-DC runner in-process with one bad
setting and calls ``runner.train()``: the error must name the config key
and what is allowed, and no iteration may have run (no checkpoint, no
logged training scalar). One case goes through ``tools/train.py``.
"""
import copy
import glob
import os
import os.path as osp
import tempfile
from unittest import TestCase

from conftest import REPO_ROOT, run_tool
from mmengine.config import Config
from mmengine.runner import Runner

import galddc_mm  # noqa: F401

CONFIG = osp.join(REPO_ROOT, 'configs', 'galddc', 'r20_digitslt.py')
TINY = {
    'train_cfg.stages.0.epochs': 1,
    'train_cfg.stages.1.epochs': 1,
    'train_cfg.stages.2.epochs': 1,
    'model.diffusion_head.denoiser.hidden_dim': 32,
    'model.diffusion_head.sampler.num_steps': 5,
    'custom_hooks.0.num_per_class': 4,
}


class TestBadConfiguration(TestCase):

    @classmethod
    def setUpClass(cls):
        cls._tmp = tempfile.TemporaryDirectory()
        cls.base = Config.fromfile(CONFIG)
        cls.base.merge_from_dict(TINY)
        cls.count = 0

    @classmethod
    def tearDownClass(cls):
        cls._tmp.cleanup()

    def _runner(self, options=None, edit=None):
        cfg = copy.deepcopy(self.base)
        cfg.merge_from_dict(options or {})
        if edit is not None:
            edit(cfg)
        type(self).count += 1
        cfg.work_dir = osp.join(self._tmp.name, f'run{self.count}')
        cfg.experiment_name = f'bad_cfg_{os.getpid()}_{self.count}'
        return Runner.from_cfg(cfg)

    @staticmethod
    def _check(runner):
        """What runner.train() checks before the first epoch."""
        hook = next(h for h in runner.hooks
                    if type(h).__name__ == 'GALDDCCheckHook')
        hook.before_train(runner)

    def _assert_refused(self, error, regex, options=None, edit=None):
        """The error is raised by building or starting the runner, and
        nothing was trained."""
        work_dir = None
        with self.assertRaisesRegex(error, regex):
            runner = self._runner(options, edit)
            work_dir = runner.work_dir
            runner.train()
        if work_dir is not None:
            self.assertEqual(glob.glob(osp.join(work_dir, '*.pth')), [])
            self.assertFalse(osp.exists(osp.join(work_dir,
                                                 'last_checkpoint')))
            scalars = runner.message_hub.log_scalars
            self.assertFalse(
                any(k.startswith('train/loss') for k in scalars), scalars)

    def test_unknown_stage_name(self):
        self._assert_refused(
            ValueError, r"train_cfg\.stages\[1\]\.name='diffuse' is "
            r"unknown; stage names are \('representation', 'diffusion', "
            r"'finetune'\)", {'train_cfg.stages.1.name': 'diffuse'})

    def test_unknown_finetune_mode(self):
        self._assert_refused(
            ValueError, r"train_cfg\.stages\[2\]\.mode='frozen' is unknown; "
            r"finetune modes are 'stable' and 'hybrid'",
            {'train_cfg.stages.2.mode': 'frozen'})

    def test_epochs_disagree_with_max_epochs(self):
        self._assert_refused(
            ValueError, r'train_cfg\.max_epochs=10 but the stages add up '
            r'to 3 epochs', {'train_cfg.max_epochs': 10})

    def test_tau_above_every_class_count(self):
        # Digits-LT train counts range over [5, 110].
        self._assert_refused(
            ValueError, r'model\.geometry\.tau=111 is above every class '
            r'count of the training set \(counts range over \[5, 110\]\): '
            r'no head class.*Use model\.geometry\.tau <= 110',
            {'model.geometry.tau': 111})

    def test_tau_below_every_class_count_warns(self):
        # No tail class is a legal (balanced) setting: a warning, and the
        # geometry itself warns the same way at stage-2 entry.
        runner = self._runner({'model.geometry.tau': 5})
        with self.assertLogs(runner.logger, 'WARNING') as logs:
            self._check(runner)
        self.assertRegex(
            '\n'.join(logs.output), r'model\.geometry\.tau=5 is at or below '
            r'every non-empty class count \(smallest 5\): no tail class')

    def test_class_without_training_samples_warns(self):
        # IF 200: n_y = floor(110 * 200 ** (-y / 9)) is 0 for y = 8, 9.
        options = {
            f'{split}_dataloader.dataset.imbalance_factor': 200
            for split in ('train', 'val', 'test')
        }
        runner = self._runner(options)
        with self.assertLogs(runner.logger, 'WARNING') as logs:
            self._check(runner)
        self.assertRegex('\n'.join(logs.output),
                         r'2 class\(es\) have no training sample: \[8, 9\]\. '
                         r'The geometry marks them invalid')

    def test_num_classes_disagrees_with_dataset(self):
        self._assert_refused(
            ValueError, r'model\.head\.num_classes=12 disagrees with the '
            r'training set DigitsLT, which has 10 classes.*Set '
            r'model\.head\.num_classes=10', {
                'model.head.num_classes': 12,
                'model.data_preprocessor.num_classes': 12
            })

    def test_latent_dim_disagrees_with_encoder(self):
        # The ResNet-20 pools to 64 channels; the head (and so the
        # diffusion head and the geometry) is told 32.
        self._assert_refused(
            ValueError, r'turns a training sample into a latent of shape '
            r'\(1, 64\), but the model expects \(1, 32\).*Set '
            r'model\.head\.in_channels', {'model.head.in_channels': 32})

    def test_latent_dim_disagrees_between_heads(self):
        self._assert_refused(
            ValueError, r'diffusion_head\.latent_dim=32 disagrees with the '
            r'cls head \(latent_dim=64, from head\.in_channels',
            {'model.diffusion_head.latent_dim': 32})

    def test_ddim_steps_above_timesteps(self):
        self._assert_refused(
            ValueError, r'model\.diffusion_head\.sampler\.num_steps=2000 '
            r'exceeds the T=1000 training timesteps',
            {'model.diffusion_head.sampler.num_steps': 2000})
        self._assert_refused(
            ValueError, r'model\.pseudo_sampling\.num_steps=50 exceeds the '
            r'T=20 training timesteps', {
                'model.diffusion_head.schedule.num_timesteps': 20,
                'model.pseudo_sampling': dict(num_steps=50)
            })

    def test_negative_loss_weight(self):
        self._assert_refused(
            ValueError, r'radius_loss\.loss_weight must be >= 0, got -0\.5',
            {'model.diffusion_head.radius_loss.loss_weight': -0.5})

    def test_missing_optimizer_wrapper(self):

        def drop_diffusion(cfg):
            del cfg.optim_wrapper['diffusion']
            del cfg.param_scheduler['diffusion']

        self._assert_refused(
            KeyError, r"trains the 'diffusion' part but optim_wrapper has "
            r"no 'diffusion' entry; add optim_wrapper\.diffusion=",
            edit=drop_diffusion)
        self._assert_refused(
            KeyError, r"trains the 'encoder' part but optim_wrapper has no "
            r"'encoder' entry", {'optim_wrapper.encoder': None})


class TestBadConfigurationThroughTools(TestCase):

    def test_tau_error_before_any_epoch(self):
        with tempfile.TemporaryDirectory() as work_dir:
            proc = run_tool([
                'tools/train.py', CONFIG, '--work-dir', work_dir,
                '--cfg-options', 'model.geometry.tau=500'
            ],
                            check=False)
            self.assertNotEqual(proc.returncode, 0)
            self.assertRegex(proc.stderr,
                             r'ValueError: model\.geometry\.tau=500 is above '
                             r'every class count')
            self.assertNotIn('Epoch(train)', proc.stdout + proc.stderr)
            self.assertEqual(glob.glob(osp.join(work_dir, '*.pth')), [])
