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
    extract_dataloader_cfg,
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

    def test_real_only_finetune_needs_no_diffusion_stage(self):
        # cRT: stage 1, then G re-trained on cached real latents.
        stages = parse_stages([
            dict(name='representation', epochs=2),
            dict(name='diffusion', epochs=0),
            dict(name='finetune', epochs=3, mode='stable',
                 cache_latents=True, pseudo_latents=False,
                 sampler='class_balanced', reinit_head=True),
        ])
        self.assertEqual([(s.name, s.begin, s.end) for s in stages],
                         [('representation', 0, 2), ('finetune', 2, 5)])
        finetune = stages[1]
        self.assertEqual((finetune.sampler, finetune.pseudo_latents,
                          finetune.reinit_head),
                         ('class_balanced', False, True))
        self.assertIn('no pseudo-latents', repr(finetune))
        # With pseudo-latents the diffusion stage is still required.
        with self.assertRaisesRegex(ValueError, 'pseudo_latents=False'):
            parse_stages([dict(name='representation', epochs=2),
                          dict(name='finetune', epochs=3)])

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
            ([dict(name='diffusion', epochs=1, sampler='balanced')],
             'latent samplers'),
            ([dict(name='diffusion', epochs=1),
              dict(name='finetune', epochs=1, sampler='class_balanced')],
             'only applies to stages with cache_latents'),
            ([dict(name='diffusion', epochs=1),
              dict(name='finetune', epochs=1, pseudo_latents='no')],
             'True or False'),
            ([dict(name='representation', epochs=1, reinit_head=True)],
             'unknown keys'),
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


class TestExtractionLoaderConfig(TestCase):

    def test_eval_pipeline_and_its_collate(self):
        train = dict(
            batch_size=8, collate_fn=dict(type='pseudo_collate'),
            sampler=dict(type='DefaultSampler', shuffle=True),
            persistent_workers=True, drop_last=True,
            dataset=dict(type='X', pipeline=[dict(type='LoadImageBytes')]))
        val = dict(collate_fn=dict(type='default_collate'),
                   dataset=dict(pipeline=[dict(type='LoadImageFromFile')]))
        cfg = extract_dataloader_cfg(train, val)
        self.assertEqual(cfg['dataset']['pipeline'],
                         [dict(type='LoadImageFromFile')])
        # The byte pipeline's pseudo_collate does not follow the decoded
        # images of the val pipeline.
        self.assertEqual(cfg['collate_fn'], dict(type='default_collate'))
        self.assertEqual(cfg['sampler'],
                         dict(type='DefaultSampler', shuffle=False))
        self.assertFalse(cfg['drop_last'] or cfg['persistent_workers'])
        self.assertEqual(train['collate_fn'], dict(type='pseudo_collate'))
        val.pop('collate_fn')
        self.assertNotIn('collate_fn', extract_dataloader_cfg(train, val))


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


class TestClassBalancedLatentLoader(TestCase):
    """Class-aware sampling of the cache (cRT): classes drawn uniformly."""

    COUNTS = (500, 100, 20, 5, 1)

    def _cache(self):
        labels = torch.cat([
            torch.full((n, ), c) for c, n in enumerate(self.COUNTS)])
        # Each latent holds its own position, to see which one was drawn.
        latents = torch.arange(labels.numel()).float().view(-1, 1)
        return LatentCache(latents, labels, torch.arange(labels.numel()))

    def _draw(self, class_balanced=True, seed=0, epoch=0, rank=0,
              world_size=1):
        # 626 latents, batches of 100: 7 per pass; 15 passes = 10,500.
        loader = LatentLoader(self._cache(), batch_size=100, repeat=15,
                              seed=seed, epoch=epoch, rank=rank,
                              world_size=world_size,
                              class_balanced=class_balanced)
        batches = list(loader)
        self.assertEqual(len(batches), len(loader))
        return (torch.cat([b['labels'] for b in batches]),
                torch.cat([b['latents'] for b in batches]).view(-1).long())

    def test_classes_are_uniform(self):
        from scipy.stats import chisquare
        labels, positions = self._draw()
        self.assertEqual(labels.numel(), 10500)
        counts = torch.bincount(labels, minlength=5).numpy()
        # Uniform over the 5 classes: chi-square with 4 degrees of freedom.
        # The draw is fixed by the seed; p is far from both tails.
        self.assertGreater(chisquare(counts).pvalue, 0.01)
        # The plain loader follows the data: 500/626 of draws are class 0.
        plain, _ = self._draw(class_balanced=False)
        self.assertLess(
            chisquare(torch.bincount(plain, minlength=5).numpy()).pvalue,
            1e-100)
        # Each drawn latent belongs to its label ...
        cache = self._cache()
        self.assertTrue(torch.equal(cache.labels[positions], labels))
        # ... and within a class the latents are uniform too (class 3: 5
        # latents at positions 620..624).
        within = torch.bincount(positions[labels == 3] - 620, minlength=5)
        self.assertEqual(within.numel(), 5)
        self.assertGreater(chisquare(within.numpy()).pvalue, 0.01)

    def test_deterministic_per_seed_epoch_and_rank(self):
        first, _ = self._draw(seed=3, epoch=1, rank=0)
        self.assertTrue(torch.equal(first, self._draw(seed=3, epoch=1)[0]))
        for other in (dict(seed=4, epoch=1), dict(seed=3, epoch=2)):
            self.assertFalse(torch.equal(first, self._draw(**other)[0]),
                             other)
        # Two ranks: as many batches each, different draws.
        rank0, _ = self._draw(seed=3, epoch=1, rank=0, world_size=2)
        rank1, _ = self._draw(seed=3, epoch=1, rank=1, world_size=2)
        self.assertEqual(rank0.numel(), rank1.numel())
        self.assertFalse(torch.equal(rank0, rank1))
