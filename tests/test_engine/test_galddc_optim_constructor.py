# Copyright (c) galddc_mm contributors. All rights reserved.
"""GALDDCOptimWrapperConstructor: one optimiser wrapper per model part."""
from unittest import TestCase

import torch
from data_utils import TINY_GALDDC_MODEL
from mmengine.optim import OptimWrapperDict
from mmpretrain.registry import MODELS, OPTIM_WRAPPER_CONSTRUCTORS

import galddc_mm  # noqa: F401

DEFAULT_ARGS = dict(
    encoder=dict(optimizer=dict(type='SGD', lr=0.1)),
    head=dict(optimizer=dict(type='SGD', lr=0.2)),
    diffusion=dict(optimizer=dict(type='AdamW', lr=1e-3)))


def _build(cfg):
    return OPTIM_WRAPPER_CONSTRUCTORS.build(
        dict(type='GALDDCOptimWrapperConstructor', optim_wrapper_cfg=cfg))


class TestGALDDCOptimWrapperConstructor(TestCase):

    def setUp(self):
        self.model = MODELS.build(TINY_GALDDC_MODEL)

    def test_one_wrapper_per_part_over_its_modules(self):
        wrappers = _build(dict(DEFAULT_ARGS, accumulative_counts=2))(
            self.model)
        self.assertIsInstance(wrappers, OptimWrapperDict)
        self.assertEqual(sorted(wrappers.keys()),
                         ['diffusion', 'encoder', 'head'])
        for part, modules in self.model.part_modules().items():
            expected = {
                id(p)
                for m in modules.values() for p in m.parameters()
            }
            got = {
                id(p)
                for group in wrappers[part].param_groups
                for p in group['params']
            }
            self.assertEqual(got, expected, part)
        self.assertEqual(wrappers['head'].param_groups[0]['lr'], 0.2)
        # Top-level keys are every part's default.
        self.assertEqual(wrappers['diffusion']._accumulative_counts, 2)

    def test_paramwise_keys_see_the_model_names(self):
        cfg = dict(
            DEFAULT_ARGS,
            encoder=dict(
                optimizer=dict(type='SGD', lr=0.1),
                paramwise_cfg=dict(
                    custom_keys={'backbone.conv1': dict(lr_mult=0.0)})))
        wrapper = _build(cfg)(self.model)['encoder']
        conv1 = self.model.backbone.conv1.weight
        lrs = [
            g['lr'] for g in wrapper.param_groups
            if any(p is conv1 for p in g['params'])
        ]
        self.assertEqual(lrs, [0.0])

    def test_bad_configs(self):
        with self.assertRaisesRegex(KeyError, r"Unknown optim_wrapper part"):
            _build(dict(DEFAULT_ARGS, decoder=dict(optimizer=dict())))
        with self.assertRaisesRegex(KeyError, 'has no `optimizer`'):
            _build(dict(DEFAULT_ARGS, head=dict(lr=0.1)))
        # E and G step together in stages 1 and hybrid 3.
        with self.assertRaisesRegex(ValueError,
                                    r"same number of iterations.*"
                                    r"'encoder': 2, 'head': 1"):
            _build(
                dict(
                    DEFAULT_ARGS,
                    encoder=dict(
                        optimizer=dict(type='SGD', lr=0.1),
                        accumulative_counts=2)))
        with self.assertRaisesRegex(TypeError, 'part_modules'):
            _build(DEFAULT_ARGS)(torch.nn.Linear(2, 2))

    def test_dropped_part_is_left_out(self):
        wrappers = _build(dict(DEFAULT_ARGS, diffusion=None))(self.model)
        self.assertEqual(sorted(wrappers.keys()), ['encoder', 'head'])
