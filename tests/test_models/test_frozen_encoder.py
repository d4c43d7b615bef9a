# Copyright (c) galddc_mm contributors. All rights reserved.
"""E^(0) folded and compiled equals E^(0) as it is (``fold_frozen_bn``,
``compile_frozen_encoder``)."""
import copy
import unittest
from unittest import TestCase

import torch
import torch.fx as fx
import torch.nn as nn
from data_utils import TINY_GALDDC_MODEL, CountingBackend
from mmengine.logging import MMLogger
from mmpretrain.registry import MODELS
from torch.nn.modules.batchnorm import _BatchNorm

import galddc_mm  # noqa: F401
from galddc_mm.models.classifiers.frozen_encoder import (
    FrozenEncoderRunner,
    fold_batch_norms,
)


def _scramble_batch_norms(module, seed=0):
    """Statistics and affine parameters far from the identity BN."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in module.modules():
            if isinstance(bn, _BatchNorm):
                n = bn.num_features
                bn.running_mean.copy_(torch.randn(n, generator=g))
                bn.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.2)
                bn.weight.copy_(torch.randn(n, generator=g))
                bn.bias.copy_(torch.randn(n, generator=g))
    return module


def _bn_reference(x, bn):
    """Eval BatchNorm written out: (x - mean) / sqrt(var + eps) * w + b."""
    shape = (1, -1) + (1, ) * (x.dim() - 2)
    return ((x - bn.running_mean.view(shape)) /
            torch.sqrt(bn.running_var.view(shape) + bn.eps) *
            bn.weight.view(shape) + bn.bias.view(shape))


def _num_batch_norms(module):
    return sum(isinstance(m, _BatchNorm) for m in module.modules())


class _SharedConv(nn.Module):
    """A conv whose output feeds a BN and a second branch, then a BN on a
    sum: neither BN may be folded."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(3, 4, 1)
        self.bn2 = nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y, self.bn2(self.conv2(x) + 1)


class _ReusedModules(_SharedConv):
    """A conv called twice, and a BN called twice: nothing may fold."""

    def forward(self, x):
        return (self.bn(self.conv(x)) + self.conv(x),
                self.bn2(self.conv2(x)) + self.bn2(self.conv2(2 * x)))


class TestFoldBatchNorms(TestCase):

    def _check_equal(self, cfg, size=32, expect_all=True):
        torch.manual_seed(0)
        model = _scramble_batch_norms(MODELS.build(cfg))
        model.eval()
        folded, count = fold_batch_norms(model)
        if expect_all:
            self.assertEqual(count, _num_batch_norms(model))
        self.assertEqual(_num_batch_norms(folded),
                         _num_batch_norms(model) - count)
        x = torch.randn(2, 3, size, size, generator=torch.Generator()
                        .manual_seed(1))
        with torch.no_grad():
            ref, got = model(x), folded(x)
        for r, o in zip(ref, got):
            scale = r.abs().max()
            self.assertGreater(scale, 0.1)
            torch.testing.assert_close(o, r, rtol=0, atol=1e-5 * scale)
        return model, folded

    def test_resnet50_every_batch_norm_is_folded(self):
        model, _ = self._check_equal(dict(type='ResNet', depth=50))
        self.assertEqual(_num_batch_norms(model), 53)

    def test_cifar_resnet_with_parameter_free_shortcuts(self):
        self._check_equal(
            dict(type='CifarResNet', depth=20, in_channels=3, shortcut='A'))

    def test_sync_batch_norm_is_folded_in_eval(self):
        # SyncBatchNorm branches on its input: traced as a leaf, it folds.
        self._check_equal(
            dict(type='ResNet', depth=18, norm_cfg=dict(type='SyncBN')))

    def test_a_bn_fed_by_a_shared_conv_or_a_sum_is_kept(self):
        model = _scramble_batch_norms(_SharedConv()).eval()
        folded, count = fold_batch_norms(model)
        self.assertEqual(count, 0)
        x = torch.randn(2, 3, 5, 5)
        with torch.no_grad():
            y = model.conv(x)
            ref = (_bn_reference(y, model.bn) + y,
                   _bn_reference(model.conv2(x) + 1, model.bn2))
            for r, o in zip(ref, folded(x)):
                torch.testing.assert_close(o, r, rtol=1e-5, atol=1e-5)

    def test_modules_called_twice_are_kept(self):
        model = _scramble_batch_norms(_ReusedModules()).eval()
        folded, count = fold_batch_norms(model)
        self.assertEqual(count, 0)
        x = torch.randn(2, 3, 5, 5)
        with torch.no_grad():
            for r, o in zip(model(x), folded(x)):
                torch.testing.assert_close(o, r)

    def test_folded_conv_is_the_bn_of_the_conv(self):
        conv_bn = _scramble_batch_norms(
            nn.Sequential(nn.Conv2d(3, 5, 3, bias=False),
                          nn.BatchNorm2d(5))).eval()
        folded, count = fold_batch_norms(conv_bn)
        self.assertEqual(count, 1)
        x = torch.randn(2, 3, 7, 7)
        with torch.no_grad():
            ref = _bn_reference(conv_bn[0](x), conv_bn[1])
            torch.testing.assert_close(folded(x), ref, rtol=1e-5, atol=1e-5)
        # The source is left as it was.
        self.assertIsInstance(conv_bn[1], nn.BatchNorm2d)

    def test_a_training_bn_is_not_folded(self):
        conv_bn = nn.Sequential(nn.Conv2d(3, 5, 3), nn.BatchNorm2d(5))
        self.assertEqual(fold_batch_norms(conv_bn)[1], 0)

    @unittest.skipUnless(torch.cuda.is_available(), 'needs CUDA')
    def test_resnet50_bf16_channels_last_on_cuda(self):
        # The recipe's setting: folded weights are cast to bf16 by autocast
        # as the unfolded ones are; the two differ by bf16 rounding only.
        torch.manual_seed(0)
        model = _scramble_batch_norms(
            MODELS.build(dict(type='ResNet', depth=50)))
        model.eval()
        model.cuda().to(memory_format=torch.channels_last)
        folded, count = fold_batch_norms(model)
        self.assertEqual(count, 53)
        x = torch.randn(4, 3, 64, 64, device='cuda').contiguous(
            memory_format=torch.channels_last)
        with torch.no_grad():
            exact = model(x)[-1]  # fp32, unfolded
            with torch.autocast('cuda', dtype=torch.bfloat16):
                plain, got = model(x)[-1].float(), folded(x)[-1].float()

        def rel(a):
            return ((a - exact).norm() / exact.norm()).item()

        # As close to the fp32 result as bf16 without folding is.
        self.assertLess(rel(plain), 3e-2)
        self.assertLess(rel(got), 2 * rel(plain) + 1e-3)

    def test_channels_last_weights_stay_channels_last(self):
        conv_bn = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)).eval()
        conv_bn.to(memory_format=torch.channels_last)
        folded, _ = fold_batch_norms(conv_bn)
        weight = folded.get_submodule('0').weight
        self.assertTrue(
            weight.is_contiguous(memory_format=torch.channels_last))


class _Untraceable(nn.Module):
    """A backbone whose forward branches on a tensor value."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 64, 3, padding=1)
        self.bn = nn.BatchNorm2d(64)

    def forward(self, x):
        if x.sum() > 0:
            x = -x
        return (self.bn(self.conv(x)), )


class TestFoldFrozenBNInTheClassifier(TestCase):

    def _pair(self, **overrides):
        """The same model with and without fold_frozen_bn."""
        models = []
        for fold in (False, True):
            cfg = copy.deepcopy(TINY_GALDDC_MODEL)
            cfg.update(overrides, fold_frozen_bn=fold)
            torch.manual_seed(0)
            model = MODELS.build(cfg)
            model.init_weights()
            _scramble_batch_norms(model.backbone)
            model.freeze_encoder_copy()
            model.train()  # E^(0) stays in eval mode regardless
            models.append(model)
        return models

    def _inputs(self, seed=3):
        return torch.randn(6, 3, 8, 8,
                           generator=torch.Generator().manual_seed(seed))

    def _assert_same_latents(self, plain, folded):
        x = self._inputs()
        ref = plain.encode_frozen(x)
        torch.testing.assert_close(
            folded.encode_frozen(x), ref, rtol=0,
            atol=1e-5 * ref.abs().max())

    def test_same_latents_and_no_extra_state(self):
        plain, folded = self._pair()
        # fast=False (a one-off shape check) builds nothing.
        x = self._inputs()
        torch.testing.assert_close(
            folded.encode_frozen(x, fast=False), plain.encode_frozen(x))
        self.assertIsNone(folded._frozen_runner._key)
        self._assert_same_latents(plain, folded)
        self.assertIsInstance(folded._frozen_runner._forward, fx.GraphModule)
        self.assertEqual(plain.state_dict().keys(),
                         folded.state_dict().keys())
        self.assertEqual(
            len(list(plain.parameters())), len(list(folded.parameters())))

    def test_follows_a_new_copy_of_the_encoder(self):
        plain, folded = self._pair()
        x = self._inputs()
        before = folded.encode_frozen(x)
        for model in (plain, folded):
            _scramble_batch_norms(model.backbone, seed=5)
            model.freeze_encoder_copy()
        self._assert_same_latents(plain, folded)
        self.assertFalse(torch.allclose(folded.encode_frozen(x), before))
        # A parameter replaced by a new one (same values elsewhere).
        for model in (plain, folded):
            conv = model.frozen_encoder['backbone'].conv1
            conv.weight = nn.Parameter(conv.weight.detach() * 2,
                                       requires_grad=False)
        self._assert_same_latents(plain, folded)

    def test_follows_a_checkpoint_load(self):
        plain, folded = self._pair()
        folded.encode_frozen(self._inputs())  # build the folded copy
        _scramble_batch_norms(plain.frozen_encoder, seed=7)
        folded.load_state_dict(plain.state_dict())
        self._assert_same_latents(plain, folded)

    def test_untraceable_encoder_runs_unfolded_and_says_so(self):
        plain, folded = self._pair()
        for model in (plain, folded):
            model.frozen_encoder['backbone'] = _Untraceable()
            model.frozen_encoder['backbone'].load_state_dict(
                plain.frozen_encoder['backbone'].state_dict()
                if model is folded else
                _scramble_batch_norms(_Untraceable()).state_dict())
            model.train()
        logger = MMLogger.get_current_instance()
        with self.assertLogs(logger, level='INFO') as logs:
            got = folded.encode_frozen(self._inputs())
        self.assertIn('runs unfolded', '\n'.join(logs.output))
        torch.testing.assert_close(got, plain.encode_frozen(self._inputs()))


class TestCompileFrozenEncoder(TestCase):

    def setUp(self):
        torch._dynamo.reset()

    def _model(self, **overrides):
        cfg = copy.deepcopy(TINY_GALDDC_MODEL)
        cfg.update(overrides)
        torch.manual_seed(0)
        model = MODELS.build(cfg)
        model.init_weights()
        _scramble_batch_norms(model.backbone)
        model.freeze_encoder_copy()
        model.train()
        return model

    def _inputs(self, n=6, seed=3):
        return torch.randn(n, 3, 8, 8,
                           generator=torch.Generator().manual_seed(seed))

    def test_compiled_forward_follows_shapes_and_new_weights(self):
        model = self._model()
        backend = CountingBackend()
        runner = FrozenEncoderRunner(
            fold_bn=True,
            compile_cfg=dict(backend=backend, dynamic=False),
            compile_devices=('cpu', ))

        def run(x):
            return runner.forward(model.frozen_encoder['backbone'],
                                  model.frozen_encoder['neck'], x)

        x6, x4 = self._inputs(6), self._inputs(4, seed=4)
        for x in (x6, x6, x4, x4):
            torch.testing.assert_close(
                run(x), model.encode_frozen(x), rtol=1e-5, atol=1e-5)
        self.assertEqual(backend.calls, 2)  # one per batch size
        _scramble_batch_norms(model.backbone, seed=9)
        model.freeze_encoder_copy()
        torch.testing.assert_close(
            run(x6), model.encode_frozen(x6), rtol=1e-5, atol=1e-5)
        self.assertEqual(backend.calls, 3)  # new weights, new copy

    def test_a_failed_compilation_runs_eagerly_and_says_so(self):
        model = self._model()
        runner = FrozenEncoderRunner(
            fold_bn=False,
            compile_cfg=dict(backend=CountingBackend(fail=True)),
            compile_devices=('cpu', ))
        x = self._inputs()
        logger = MMLogger.get_current_instance()
        with self.assertLogs(logger, level='INFO') as logs:
            got = runner.forward(model.frozen_encoder['backbone'],
                                 model.frozen_encoder['neck'], x)
        self.assertIn('torch.compile failed, it runs eagerly',
                      '\n'.join(logs.output))
        torch.testing.assert_close(got, model.encode_frozen(x))

    def test_the_model_compiles_on_cuda_only(self):
        backend = CountingBackend()
        model = self._model(compile_frozen_encoder=dict(backend=backend))
        plain = self._model()
        x = self._inputs()
        torch.testing.assert_close(model.encode_frozen(x),
                                   plain.encode_frozen(x))
        self.assertEqual(backend.calls, 0)
        with self.assertRaisesRegex(TypeError, 'bool or a dict'):
            self._model(compile_frozen_encoder='yes')

    @unittest.skipUnless(torch.cuda.is_available(), 'needs CUDA')
    def test_recipe_setting_on_cuda(self):
        # fold + inductor under bf16 and channels-last, as the GPU recipes.
        models = [
            self._model(channels_last=True, **extra).cuda()
            for extra in ({}, dict(fold_frozen_bn=True,
                                   compile_frozen_encoder=True))
        ]
        x = self._inputs(16).cuda()
        with torch.autocast('cuda', dtype=torch.bfloat16):
            plain, got = (m.encode_frozen(x).float() for m in models)
        exact = models[0].encode_frozen(x)
        ref = ((plain - exact).norm() / exact.norm()).item()
        err = ((got - exact).norm() / exact.norm()).item()
        self.assertLess(ref, 3e-2)
        self.assertLess(err, 2 * ref + 1e-3)
