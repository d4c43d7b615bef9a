# Copyright (c) galddc_mm contributors. All rights reserved.
"""Numerical faults: a NaN/Inf loss stops the run, huge latents are clamped.

The end-to-end side (a NaN injected into stage 2 of a real run, the last
good checkpoint left intact) is in
``test_tools/test_interruption_and_resume.py``.
"""
import math
from types import SimpleNamespace
from unittest import TestCase

import torch
from data_utils import TINY_DIM as DIM
from data_utils import TINY_GALDDC_MODEL as MODEL
from data_utils import TINY_NUM_CLASSES as NUM_CLASSES
from mmengine.hooks import RuntimeInfoHook
from mmengine.logging import MessageHub
from mmpretrain.registry import HOOKS, MODELS

import galddc_mm  # noqa: F401
from galddc_mm.engine.hooks import NonFiniteLossError
from galddc_mm.engine.loops.stage import Stage
from galddc_mm.models.classifiers.galddc import GALDDCClassifier


def _fake_runner(stage, hub_name):
    """Just what the hooks read from a runner."""
    loop = SimpleNamespace(current_stage=stage, dataloader=[0] * 6)
    return SimpleNamespace(
        message_hub=MessageHub.get_instance(hub_name),
        hooks=[RuntimeInfoHook()],
        train_loop=loop,
        model=GALDDCClassifier,  # only trainable_parts() is used
        epoch=3,
        iter=20)


class TestNumericalGuardHook(TestCase):

    def _check(self, stage, outputs, last_ckpt='/w/epoch_3.pth',
               runtime_info=True):
        runner = _fake_runner(stage, f'guard_{self.id()}')
        if last_ckpt:
            runner.message_hub.update_info('last_ckpt', last_ckpt)
        if runtime_info:
            runner.hooks[0].after_train_iter(runner, 1, outputs=outputs)
        else:
            runner.hooks = []
        hook = HOOKS.build(dict(type='NumericalGuardHook'))
        hook.before_train(runner)
        hook.after_train_iter(runner, 1, outputs=outputs)

    def test_finite_losses_pass(self):
        outputs = dict(loss=torch.tensor(1.5), loss_ldm=torch.tensor(1.0),
                       loss_proto=torch.tensor(0.5))
        self._check(Stage('diffusion', epochs=2, begin=2), outputs)

    def test_nan_in_stage2_names_loss_stage_and_checkpoint(self):
        outputs = dict(loss=torch.tensor(math.nan),
                       loss_ldm=torch.tensor(1.0),
                       loss_proto=torch.tensor(math.nan))
        with self.assertRaisesRegex(
                NonFiniteLossError,
                r"^Non-finite loss in stage 'diffusion', epoch 4, iteration "
                r'2/6 \(global iteration 21\): loss=nan, loss_proto=nan\. '
                r'Training stops before this epoch is checkpointed\. The '
                r'last checkpoint written, /w/epoch_3\.pth, predates the '
                r'fault.*This stage trains diffusion.*'
                r'model\.diffusion_head\.feature_clamp_max'):
            self._check(Stage('diffusion', epochs=2, begin=2), outputs)

    def test_inf_in_stage1_and_stage3(self):
        with self.assertRaisesRegex(
                NonFiniteLossError,
                r"stage 'representation', .*: loss=inf\. .*No checkpoint "
                r'had been written yet\. This stage trains encoder, head'):
            self._check(
                Stage('representation', epochs=2, begin=0),
                dict(loss=torch.tensor(math.inf)),
                last_ckpt=None)
        with self.assertRaisesRegex(
                NonFiniteLossError,
                r"stage 'finetune' \(mode 'hybrid'\), .*loss_pseudo=-inf"):
            self._check(
                Stage('finetune', epochs=2, begin=4, mode='hybrid'),
                dict(loss=torch.tensor(1.0), loss_cls=torch.tensor(1.0),
                     loss_pseudo=torch.tensor(-math.inf)))

    def test_only_loss_keys_and_without_runtime_info_hook(self):
        stage = Stage('representation', epochs=2, begin=0)
        # A logged non-loss value may be NaN (e.g. an accuracy of an empty
        # batch): not a training fault.
        self._check(stage, dict(loss=torch.tensor(1.0),
                                accuracy=torch.tensor(math.nan)))
        with self.assertRaisesRegex(NonFiniteLossError, 'loss=nan'):
            self._check(stage, dict(loss=torch.tensor(math.nan)),
                        runtime_info=False)


class TestHugeLatents(TestCase):
    """``feature_clamp_max`` keeps stage 2 finite on outlier latents."""

    def _losses_and_grads(self, clamp, scale):
        torch.manual_seed(0)
        model = MODELS.build(
            dict(
                MODEL,
                diffusion_head=dict(
                    MODEL['diffusion_head'], feature_clamp_max=clamp)))
        g = torch.Generator().manual_seed(1)
        # Normaliser and geometry fitted on ordinary latents ...
        labels = torch.tensor([0] * 10 + [1] * 8 + [2] * 4 + [3] * 2)
        latents = torch.randn(24, DIM, generator=g)
        model.fit_latent_statistics(latents, labels)
        model.set_stage('diffusion')
        model.train()
        # ... then a batch of outlier latents.
        huge = torch.randn(8, DIM, generator=g) * scale
        losses = model.loss_latents(huge, torch.arange(8) % NUM_CLASSES)
        sum(losses.values()).backward()
        # The EMA, as ClassGeometryHook applies it after the step.
        batch = model.take_geometry_batch()
        model.geometry.ema_update(batch.latents, batch.labels)
        grads = [
            p.grad for p in model.diffusion_head.parameters()
            if p.grad is not None
        ]
        return losses, grads, model.geometry

    def test_unclamped_geometry_losses_overflow(self):
        # The fault is real: without the clamp, squared distances of 1e19
        # overflow float32.
        losses, grads, _ = self._losses_and_grads(None, 1e19)
        self.assertFalse(math.isfinite(losses['loss_proto'].item()))
        self.assertFalse(all(torch.isfinite(g).all() for g in grads))

    def test_clamp_keeps_losses_gradients_and_geometry_finite(self):
        clamp = 10.0
        for scale in (1e3, 1e10, 1e19):
            losses, grads, geometry = self._losses_and_grads(clamp, scale)
            for key, value in losses.items():
                self.assertTrue(math.isfinite(value.item()), (scale, key))
            self.assertTrue(grads)
            for grad in grads:
                self.assertTrue(torch.isfinite(grad).all(), scale)
            # Clamped estimates and prototypes lie in [-c, c]^D: a squared
            # distance is at most D (2c)^2, times the weight eta_p = 0.1.
            bound = 0.1 * DIM * (2 * clamp)**2
            self.assertLessEqual(losses['loss_proto'].item(), bound)
            # The EMA saw clamped estimates only.
            self.assertLessEqual(
                float(geometry.prototypes.abs().max()), clamp + 1e-3)
            self.assertTrue(torch.isfinite(geometry.r_obs).all())
