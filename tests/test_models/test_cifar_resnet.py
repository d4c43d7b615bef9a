# Copyright (c) galddc_mm contributors. All rights reserved.
from unittest import TestCase

import torch
from mmpretrain.registry import MODELS

from galddc_mm.models.backbones import CifarResNet

DEFAULT_ARGS = dict(type='CifarResNet', depth=20)


def param_count(depth, shortcut):
    """ResNet-(6n+2) parameters counted by hand: 3x3 convs without bias,
    BN with weight + bias, option B adds a 1x1 conv + BN per transition."""
    n = (depth - 2) // 6
    total = 3 * 16 * 9 + 2 * 16  # stem
    c_in = 16
    for c in (16, 32, 64):
        for _ in range(n):
            total += c_in * c * 9 + c * c * 9 + 2 * 2 * c
            if c_in != c and shortcut == 'B':
                total += c_in * c + 2 * c
            c_in = c
    return total


def num_params(model):
    return sum(p.numel() for p in model.parameters())


class TestCifarResNet(TestCase):

    def test_param_count(self):
        model_a = MODELS.build(dict(DEFAULT_ARGS, depth=32, shortcut='A'))
        model_b = MODELS.build(dict(DEFAULT_ARGS, depth=32))
        # The well-known 0.46M of ResNet-32 (He et al.): 464,154 including
        # the 64x10 FC + bias (650).
        self.assertEqual(num_params(model_a) + 64 * 10 + 10, 464154)
        self.assertEqual(num_params(model_a), param_count(32, 'A'))
        self.assertEqual(num_params(model_b), 466256)
        self.assertEqual(num_params(model_b), param_count(32, 'B'))
        for depth in (20, 44, 56, 110):
            model = CifarResNet(depth)
            self.assertEqual(num_params(model), param_count(depth, 'B'))
            self.assertEqual(len(model.layer1), (depth - 2) // 6)

    def test_output_shapes(self):
        x = torch.randn(2, 3, 32, 32)
        for shortcut in ('A', 'B'):
            model = CifarResNet(20, shortcut=shortcut, out_indices=(0, 1, 2))
            outs = model(x)
            self.assertIsInstance(outs, tuple)
            self.assertEqual([tuple(o.shape) for o in outs],
                             [(2, 16, 32, 32), (2, 32, 16, 16),
                              (2, 64, 8, 8)])
        model = CifarResNet(20, in_channels=1, out_indices=-1)
        outs = model(torch.randn(1, 1, 8, 8))
        self.assertEqual(len(outs), 1)
        self.assertEqual(tuple(outs[0].shape), (1, 64, 2, 2))
        self.assertEqual(model.feat_dim, 64)

    def test_pad_shortcut(self):
        # Option A: the identity of a transition block is the strided input
        # zero-padded on both sides of the channel axis (16 -> 32: 8 + 8).
        model = CifarResNet(20, shortcut='A')
        shortcut = model.layer2[0].downsample
        x = torch.randn(1, 16, 8, 8)
        y = shortcut(x)
        self.assertEqual(tuple(y.shape), (1, 32, 4, 4))
        torch.testing.assert_close(y[:, 8:24], x[:, :, ::2, ::2])
        self.assertEqual(y[:, :8].abs().sum().item(), 0)
        self.assertEqual(y[:, 24:].abs().sum().item(), 0)

    def test_with_classifier(self):
        model = MODELS.build(
            dict(
                type='ImageClassifier',
                backbone=dict(DEFAULT_ARGS),
                neck=dict(type='GlobalAveragePooling'),
                head=dict(
                    type='LinearClsHead', num_classes=10, in_channels=64)))
        feats = model.extract_feat(torch.randn(3, 3, 32, 32))
        self.assertEqual(tuple(feats[-1].shape), (3, 64))
        self.assertEqual(tuple(model(torch.randn(3, 3, 32, 32)).shape),
                         (3, 10))

    def test_frozen_stages_and_norm_eval(self):
        model = CifarResNet(20, frozen_stages=1, norm_eval=True)
        model.train()
        for p in list(model.conv1.parameters()) + list(
                model.layer1.parameters()):
            self.assertFalse(p.requires_grad)
        for p in model.layer2.parameters():
            self.assertTrue(p.requires_grad)
        self.assertFalse(model.norm1.training)
        self.assertFalse(model.layer1[0].norm1.training)
        # norm_eval keeps every BN in eval mode, frozen or not.
        self.assertFalse(model.layer3[0].norm1.training)
        self.assertTrue(model.layer3[0].conv1.training)
        before = model.layer3[0].norm1.running_mean.clone()
        model(torch.randn(2, 3, 32, 32))
        torch.testing.assert_close(model.layer3[0].norm1.running_mean,
                                   before)

        model = CifarResNet(20, frozen_stages=0)
        model.train()
        self.assertFalse(model.conv1.weight.requires_grad)
        self.assertTrue(model.layer1[0].conv1.weight.requires_grad)
        self.assertTrue(model.layer1[0].norm1.training)

    def test_zero_init_residual(self):
        model = CifarResNet(20, zero_init_residual=True)
        model.init_weights()
        for layer in (model.layer1, model.layer2, model.layer3):
            for block in layer:
                self.assertEqual(block.norm2.weight.abs().sum().item(), 0)
        self.assertGreater(model.conv1.weight.abs().sum().item(), 0)

    def test_errors(self):
        with self.assertRaisesRegex(KeyError, 'Invalid depth 18'):
            CifarResNet(18)
        with self.assertRaisesRegex(ValueError, 'shortcut'):
            CifarResNet(20, shortcut='C')
        with self.assertRaisesRegex(ValueError, 'out_indices'):
            CifarResNet(20, out_indices=(3, ))
        with self.assertRaisesRegex(ValueError, 'frozen_stages'):
            CifarResNet(20, frozen_stages=4)
