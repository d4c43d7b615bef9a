# Copyright (c) galddc_mm contributors. All rights reserved.
"""GALDDCTrainLoop pieces: stage parsing, stage-relative schedules, the
latent cache and its loader."""
import os.path as osp
from unittest import TestCase

import torch
from conftest import REPO_ROOT
from mmengine.config import Config
from mmengine.runner import Runner

import galddc_mm  # noqa: F401
from galddc_mm.engine.loops.latent_cache import (
    LatentCache,
    LatentLoader,
    gather_latents,
)
from galddc_mm.engine.loops.stage import (
    parse_stages,
    resolve_stage_schedulers,
)

CONFIG = osp.join(REPO_ROOT, 'configs', 'galddc', 'r20_digitslt.py')


def _runner(tmp, stages):
    cfg = Config.fromfile(CONFIG)
    cfg.work_dir = tmp
    cfg.experiment_name = osp.basename(tmp)
    cfg.train_cfg.stages = stages
    return Runner.from_cfg(cfg)


class TestStageParsing(TestCase):

    def test_layout_and_lookup(self):
        stages = parse_stages([
            dict(name='representation', epochs=0),
            dict(name='diffusion', epochs=2),
            dict(name='finetune', epochs=3, mode='stable'),
        ])
        self.assertEqual([(s.name, s.begin, s.end) for s in stages],
                         [('diffusion', 0, 2), ('finetune', 2, 5)])
        self.assertEqual(stages[1].mode, 'stable')
        self.assertTrue(stages[0].cache_latents)
        self.assertFalse(stages[1].cache_latents)

    def test_bad_stages(self):
        cases = [
            ([dict(name='pretrain', epochs=1)], 'unknown'),
            ([dict(name='diffusion', epochs=1),
              dict(name='representation', epochs=1)], 'out of order'),
            ([dict(name='diffusion', epochs=-1)], 'integer >= 0'),
            ([dict(name='diffusion', epochs=1),
              dict(name='finetune', epochs=1, mode='hybird')],
             'finetune modes'),
            ([dict(name='diffusion', epochs=1),
              dict(name='finetune', epochs=1, cache_latents=True)],
             "mode='stable'"),
            ([dict(name='finetune', epochs=1)], 'needs a diffusion stage'),
            ([dict(name='diffusion', epochs=1, lr=0.1)], 'unknown keys'),
            ([dict(name='representation', epochs=1, repeat=2)],
             'unknown keys'),
            ([dict(name='diffusion', epochs=1, cache_latents=False,
                   repeat=2)], 'cache_latents'),
        ]
        for stages, message in cases:
            with self.assertRaisesRegex((ValueError, KeyError), message):
                parse_stages(stages)


class TestStageSchedules(TestCase):

    def test_resolve_is_relative_to_the_stage(self):
        stages = parse_stages([
            dict(name='representation', epochs=0),
            dict(name='diffusion', epochs=4),
            dict(name='finetune', epochs=6),
        ])
        names = ['representation', 'diffusion', 'finetune']
        schedulers = dict(
            encoder=[
                dict(type='CosineAnnealingLR', stage='representation'),
                dict(type='MultiStepLR', stage='finetune', begin=1,
                     milestones=[2, 4]),
            ],
            diffusion=dict(type='CosineAnnealingLR', stage='diffusion',
                           end=3),
            head=[dict(type='ConstantLR', begin=0, end=2)])
        out = resolve_stage_schedulers(schedulers, names, stages)
        self.assertEqual(out['encoder'], [
            dict(type='MultiStepLR', begin=5, end=10, milestones=[6, 8],
                 by_epoch=True)
        ])
        self.assertEqual(out['diffusion'], [
            dict(type='CosineAnnealingLR', begin=0, end=3, by_epoch=True)
        ])
        # Without `stage=` a scheduler keeps its global epochs.
        self.assertEqual(out['head'], schedulers['head'])
        # The input is left as it was (a pure function of the config).
        self.assertEqual(schedulers['diffusion']['stage'], 'diffusion')
        with self.assertRaisesRegex(ValueError, "stage 'pretrain'"):
            resolve_stage_schedulers(
                [dict(type='ConstantLR', stage='pretrain')], names, stages)

    def test_schedules_follow_skipped_stage(self):
        import tempfile
        with tempfile.TemporaryDirectory() as tmp:
            runner = _runner(tmp, [
                dict(name='representation', epochs=0),
                dict(name='diffusion', epochs=4, batch_size=128),
                dict(name='finetune', epochs=6, mode='hybrid'),
            ])
            loop = runner.train_loop  # builds the loop, resolving schedules
            self.assertEqual(loop.max_epochs, 10)
            scheds = runner.param_schedulers
            # Stage-1 schedulers are gone; stage 3's start at epoch 4.
            self.assertEqual([(s['begin'], s['end'])
                              for s in scheds['encoder']], [(4, 10)])
            self.assertEqual([(s['begin'], s['end'])
                              for s in scheds['diffusion']], [(0, 4)])

    def test_max_epochs_must_agree(self):
        import tempfile
        with tempfile.TemporaryDirectory() as tmp:
            cfg = Config.fromfile(CONFIG)
            cfg.work_dir = tmp
            cfg.train_cfg.max_epochs = 5
            runner = Runner.from_cfg(cfg)
            with self.assertRaisesRegex(ValueError, 'max_epochs=5'):
                _ = runner.train_loop


class TestLatentCache(TestCase):

    def test_gather_orders_and_dedupes_one_process(self):
        # A shard as the padded distributed sampler leaves it: out of order,
        # index 2 twice.
        shard = LatentCache(
            latents=torch.tensor([[2.], [0.], [1.], [2.]]),
            labels=torch.tensor([5, 3, 4, 5]),
            indices=torch.tensor([2, 0, 1, 2]))
        cache = gather_latents(shard)
        self.assertEqual(cache.indices.tolist(), [0, 1, 2])
        self.assertEqual(cache.labels.tolist(), [3, 4, 5])
        self.assertEqual(cache.latents.flatten().tolist(), [0., 1., 2.])


class TestLatentLoader(TestCase):

    def test_shards_cover_the_cache_once_per_pass(self):
        cache = LatentCache(
            latents=torch.arange(10.).view(10, 1),
            labels=torch.arange(10),
            indices=torch.arange(10))
        seen = []
        for rank in range(3):
            loader = LatentLoader(cache, batch_size=2, repeat=1, seed=0,
                                  epoch=4, rank=rank, world_size=3)
            batches = list(loader)
            self.assertEqual(len(batches), len(loader))
            seen += [int(i) for b in batches for i in b['labels']]
        # 12 slots for 10 samples: every sample once, two repeated (padding).
        self.assertEqual(set(seen), set(range(10)))
        self.assertEqual(len(seen), 12)

    def test_order_depends_on_epoch_only(self):
        cache = LatentCache(
            latents=torch.randn(16, 2),
            labels=torch.arange(16),
            indices=torch.arange(16))

        def order(epoch):
            loader = LatentLoader(cache, 4, repeat=2, seed=3, epoch=epoch)
            return torch.cat([b['labels'] for b in loader])

        self.assertTrue(torch.equal(order(1), order(1)))
        self.assertFalse(torch.equal(order(1), order(2)))
        self.assertEqual(order(1).numel(), 32)  # two passes
