# Copyright (c) galddc_mm contributors. All rights reserved.
"""tools/benchmark.py on the CPU, SyntheticLT and the sampling fast paths."""
import importlib.util
import json
import math
import os
import os.path as osp
import subprocess
import sys
import tempfile
from unittest import TestCase

import numpy as np
import torch
from conftest import REPO_ROOT
from mmpretrain.registry import DATASETS, MODELS

import galddc_mm  # noqa: F401
from galddc_mm.datasets import long_tail_counts

ROOT = REPO_ROOT
TOOL = osp.join(ROOT, 'tools', 'benchmark.py')


def _load_tool():
    spec = importlib.util.spec_from_file_location('galddc_benchmark_tool',
                                                  TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tiny_head(**kwargs):
    cfg = dict(
        type='LatentDiffusionHead',
        latent_dim=6,
        num_classes=3,
        schedule=dict(type='NoiseSchedule', num_timesteps=50),
        denoiser=dict(
            type='ResMLPDenoiser', hidden_dim=16, num_blocks=2,
            time_embed_dim=8),
        sampler=dict(type='DDIMSampler', num_steps=5))
    cfg.update(kwargs)
    torch.manual_seed(0)
    head = MODELS.build(cfg)
    # Non-trivial weights everywhere (fc2 starts at zero).
    for p in head.denoiser.parameters():
        p.data.normal_(0, 0.2)
    return head.eval().requires_grad_(False)


class TestBenchmarkTool(TestCase):

    def test_tiny_cpu_run_writes_json(self):
        """The tool runs end to end on the CPU and writes its JSON."""
        with tempfile.TemporaryDirectory() as tmp:
            out = osp.join(tmp, 'bench.json')
            env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')
            proc = subprocess.run(
                [
                    sys.executable, TOOL, '--tiny', '--device', 'cpu',
                    '--iters', '2', '--warmup', '1', '--out', out
                ],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=300)
            self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
            with open(out) as f:
                result = json.load(f)
        self.assertEqual(
            set(result), {'meta', 'results', 'targets', 'scaling',
                          'profiles'})
        meta = result['meta']
        for key in ('machine', 'torch', 'command', 'batch_size', 'amp',
                    'channels_last', 'world_size', 'iters', 'warmup'):
            self.assertIn(key, meta)
        self.assertEqual(meta['device'], 'cpu')
        self.assertTrue(meta['tiny'])
        self.assertIn('tools/benchmark.py --tiny', meta['command'])
        results = result['results']
        expected = [
            'baseline', 'baseline_ls', 'stage1', 'stage1_sf', 'stage2_cached',
            'stage2_cached_fused', 'stage2_images', 'stage3_stable_cached',
            'stage3_stable_images', 'stage3_hybrid',
            'stage2_cached_fused_graphstep', 'stage3_stable_cached_bank_sf',
            'stage3_stable_cached_bank_graphstep_sf', 'stage3_hybrid_bank_sf',
            'baseline@none_nchw', 'baseline@none_channels_last',
            'preprocess@pageable', 'frozen_encoder@no_grad',
            'frozen_encoder@inference_mode', 'frozen_encoder@folded',
            'geometry@eager',
            'geometry@loop'
        ]
        for dim in (16, 64):
            expected += [
                f'sampler_d{dim}@ancestral_100',
                f'sampler_d{dim}@ddim_25_step_api',
                f'sampler_d{dim}@ddim_25_per_row_t'
            ] + [f'sampler_d{dim}@ddim_{s}' for s in (10, 25, 50)]
        for name in expected:
            self.assertIn(name, results)
            row = results[name]
            self.assertNotIn('error', row, name)
            self.assertGreater(row['ms'], 0, name)
            self.assertTrue(math.isfinite(row['per_s']), name)
        # No CUDA-graph or compiled variants without CUDA.
        self.assertFalse([n for n in results if n.endswith('_graph')])
        self.assertFalse([n for n in results if n.endswith('compiled')])
        self.assertIn('imagenet_lt_epoch_s', results['stage2_cached'])
        # The bank's time, shared out over the steps it was drawn for.
        bank = results['stage3_hybrid_bank_sf']
        self.assertAlmostEqual(bank['bank_ms_per_step'],
                               bank['bank_fill_ms'] / bank['bank_steps'])
        self.assertEqual(bank['bank_steps'], 1 + 2 + 2)  # warm-up, timed, 2
        names = {t['name'] for t in result['targets']}
        self.assertIn('stage1 / baseline', names)
        self.assertIn('stage2_images / stage2_cached', names)
        for target in result['targets']:
            self.assertEqual(
                set(target),
                {'name', 'value', 'op', 'threshold', 'met', 'detail'})
            self.assertIsInstance(target['met'], bool)

    def test_loader_path_and_errors(self):
        """Batches through SyntheticLT + DataLoader; clear bad-input errors.
        """
        tool = _load_tool()
        base = ['--tiny', '--device', 'cpu', '--iters', '2', '--warmup', '1']
        result = tool.main(base + [
            '--dataset', 'SyntheticLT', '--num-workers', '0', '--only',
            'stage1,stage2_images'
        ])
        self.assertEqual(list(result['results']), ['stage1', 'stage2_images'])
        for row in result['results'].values():
            self.assertGreater(row['ms'], 0)
            self.assertGreaterEqual(row['data_wait_ms'], 0)
        self.assertEqual(result['meta']['data'], 'SyntheticLT')
        with self.assertRaisesRegex(ValueError, 'unknown benchmark'):
            tool.main(base + ['--only', 'stage4'])
        with self.assertRaisesRegex(ValueError, 'needs a CUDA device'):
            tool.main(base + ['--amp', 'bf16'])
        # A failing benchmark is reported, and the run goes on.
        result = tool.main(base +
                           ['--dataset', 'ImageNetLT', '--only', 'stage1'])
        self.assertRegex(result['results']['stage1']['error'],
                         'needs --data-root')

    def test_targets_from_rows(self):
        tool = _load_tool()
        results = {
            'baseline': dict(ms=100.0),
            'stage1': dict(ms=102.0),
            'stage3_hybrid': dict(ms=140.0),
            'stage3_stable_cached': dict(ms=5.0),
            'stage2_images': dict(ms=30.0),
            'stage2_cached': dict(ms=3.0),
            'geometry@eager': dict(ms=1.5),
            'sampler_d64@ancestral_1000': dict(ms=400.0),
            'sampler_d64@ddim_25': dict(ms=10.0),
            'stage3_hybrid_graph': dict(error='RuntimeError: x'),
            'stage3_hybrid_bank_sf': dict(ms=70.0, bank_ms_per_step=5.0),
            'stage3_stable_cached_bank_sf': dict(ms=2.0,
                                                 bank_ms_per_step=5.0),
            'stage2_cached_fused_graphstep': dict(ms=3.6),
        }
        profiles = {
            'stage2_cached_fused_graphstep': dict(gpu_kernel_ms_per_step=3.0)
        }
        targets = {
            t['name']: t
            for t in tool.compute_targets(results, {'stage1 (2 GPUs)': 1.9},
                                          profiles)
        }
        hybrid = 'stage3_hybrid_bank_sf'
        stable = 'stage3_stable_cached_bank_sf'
        self.assertAlmostEqual(targets[f'{hybrid} / baseline']['value'], 0.7)
        self.assertAlmostEqual(
            targets[f'{hybrid} (+bank) / baseline']['value'], 0.75)
        self.assertAlmostEqual(targets[f'{hybrid} / {stable}']['value'], 35)
        self.assertTrue(targets[f'{hybrid} / {stable}']['met'])
        # With the bank's time on both sides: 75 / 7.
        with_bank = targets[f'{hybrid} (+bank) / {stable} (+bank)']
        self.assertAlmostEqual(with_bank['value'], 75 / 7)
        self.assertFalse(with_bank['met'])
        wall = targets['stage2_cached_fused_graphstep wall / kernels']
        self.assertAlmostEqual(wall['value'], 1.2)
        self.assertTrue(wall['met'])
        self.assertAlmostEqual(targets['stage1 / baseline']['value'], 1.02)
        self.assertTrue(targets['stage1 / baseline']['met'])
        self.assertAlmostEqual(targets['stage3_hybrid / baseline']['value'],
                               1.4)
        self.assertFalse(targets['stage3_hybrid / baseline']['met'])
        self.assertAlmostEqual(
            targets['stage3_hybrid / stage3_stable_cached']['value'], 28.0)
        self.assertTrue(targets['stage3_hybrid / stage3_stable_cached']['met'])
        self.assertFalse(targets['stage2_images / stage2_cached']['met'])
        self.assertFalse(targets['geometry@eager ms']['met'])
        name = 'sampler_d64@ancestral_1000 / sampler_d64@ddim_25'
        self.assertAlmostEqual(targets[name]['value'], 40.0)
        self.assertTrue(targets[name]['met'])
        self.assertTrue(targets['stage1 (2 GPUs) scaling 1->N GPUs']['met'])
        # Rows with errors give no target.
        self.assertNotIn('stage3_hybrid_graph / baseline', targets)

    def test_ancestral_reference(self):
        """Coefficients and one step of the DDPM reference, by hand."""
        tool = _load_tool()
        head = _tiny_head()
        betas = np.linspace(1e-4, 2e-2, 50)
        abar = np.cumprod(1 - betas)
        coefs = tool.ancestral_coefficients(head.schedule)
        self.assertEqual(len(coefs), 50)
        for t in (0, 17, 49):
            np.testing.assert_allclose(
                coefs[t], (1 / np.sqrt(1 - betas[t]),
                           betas[t] / np.sqrt(1 - abar[t]), np.sqrt(
                               betas[t])),
                rtol=1e-5)
        # With a single timestep the chain is one noiseless step:
        # z_0 = (z_1 - beta/sqrt(1-abar) eps) / sqrt(alpha), denormalised.
        labels = torch.tensor([0, 2])
        torch.manual_seed(3)
        out = tool.ancestral_sample(head, labels, coefs[:1])
        torch.manual_seed(3)
        z = torch.randn(2, 6)
        eps = head.denoiser(z, torch.zeros(2, dtype=torch.long), labels)
        b = betas[0]
        expected = (z - b / math.sqrt(1 - abar[0]) * eps) / math.sqrt(1 - b)
        torch.testing.assert_close(out, head.normalizer.denormalize(expected))


class TestSyntheticLT(TestCase):

    def test_counts_splits_and_items(self):
        train = DATASETS.build(
            dict(
                type='SyntheticLT',
                num_classes=7,
                n_max=20,
                imbalance_factor=40,
                min_per_class=2,
                img_size=16,
                pipeline=[dict(type='PackInputs')]))
        expected = np.maximum(long_tail_counts(20, 7, 40), 2)
        np.testing.assert_array_equal(train.get_class_counts(), expected)
        self.assertEqual(expected[-1], 2)  # floor(20/40) = 0, raised to 2
        self.assertEqual(len(train), int(expected.sum()))
        self.assertEqual(train.metainfo['class_counts'], expected.tolist())
        labels = [
            train.get_data_info(i)['gt_label'] for i in range(len(train))
        ]
        np.testing.assert_array_equal(np.bincount(labels), expected)
        item = train[3]
        self.assertEqual(item['inputs'].shape, (3, 16, 16))
        self.assertEqual(item['inputs'].dtype, torch.uint8)
        self.assertEqual(int(item['data_samples'].gt_label), labels[3])
        # The same item every time; another index differs.
        torch.testing.assert_close(train[3]['inputs'], item['inputs'])
        self.assertFalse(torch.equal(train[4]['inputs'], item['inputs']))
        # Tensor mode: the same pixels, already CHW.
        tensors = DATASETS.build(
            dict(
                type='SyntheticLT',
                num_classes=7,
                n_max=20,
                imbalance_factor=40,
                min_per_class=2,
                img_size=16,
                mode='tensor'))
        img = tensors.get_data_info(3)['img']
        self.assertIsInstance(img, torch.Tensor)
        np.testing.assert_array_equal(img.permute(1, 2, 0).numpy(),
                                      train.get_data_info(3)['img'])
        # val/test: balanced, training counts in the metainfo.
        val = DATASETS.build(
            dict(
                type='SyntheticLT',
                split='val',
                num_classes=7,
                n_max=20,
                imbalance_factor=40,
                min_per_class=2,
                eval_per_class=3))
        self.assertEqual(len(val), 21)
        np.testing.assert_array_equal(val.get_class_counts(), expected)

    def test_invalid_args(self):
        with self.assertRaisesRegex(ValueError, 'Unknown split'):
            DATASETS.build(dict(type='SyntheticLT', split='dev'))
        with self.assertRaisesRegex(ValueError, 'Unknown mode'):
            DATASETS.build(dict(type='SyntheticLT', mode='jpeg'))
        with self.assertRaisesRegex(ValueError, 'min_per_class must be'):
            DATASETS.build(dict(type='SyntheticLT', min_per_class=0))
        with self.assertRaisesRegex(ValueError, 'imbalance_factor'):
            DATASETS.build(dict(type='SyntheticLT', imbalance_factor=0.5))


class TestSamplingFastPaths(TestCase):

    def test_host_coefficients_equal_device_ones(self):
        head = _tiny_head()
        sampler, schedule = head.sampler, head.schedule
        chain = sampler.timesteps(50, 5).tolist()
        for eta in (0.0, 0.7):
            table = sampler.host_coefficients(schedule, chain, eta)
            for i, t in enumerate(chain):
                prev = chain[i + 1] if i + 1 < len(chain) else -1
                abar = schedule.alphas_cumprod
                ref = sampler._coefficients(
                    abar[t], abar[prev] if prev >= 0 else torch.ones(()),
                    eta)
                self.assertEqual(table[i], tuple(float(c) for c in ref))

    def test_low_precision_copy_under_autocast(self):
        """16-bit linear weights give autocast's result, and stay fresh."""
        head = _tiny_head()
        labels = torch.tensor([0, 1, 2, 1])
        z_T = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))

        def reference():
            # The original network under autocast (it casts the weights).
            z = z_T
            chain = head.sampler.timesteps(50).tolist()
            coefs = head.sampler.host_coefficients(head.schedule, chain, 0.0)
            for i, t in enumerate(chain):
                eps = head.denoiser(z, torch.full((4, ), t), labels)
                z, _ = head.sampler._update(coefs[i], eps, z, 0.0, None,
                                            None)
            return head.normalizer.denormalize(z)

        with torch.autocast('cpu', dtype=torch.bfloat16):
            out = head.sample(labels, z_T=z_T)
            torch.testing.assert_close(out, reference(), rtol=0, atol=0)
            shadow = head._sampling_denoiser(labels.device)
            self.assertIsNot(shadow, head.denoiser)
            self.assertEqual(shadow.in_proj.weight.dtype, torch.bfloat16)
            self.assertEqual(shadow.out_norm.weight.dtype, torch.float32)
            # A change made behind autograd's back (`.data`) is seen too.
            head.denoiser.in_proj.weight.data.mul_(-1)
            changed = head.sample(labels, z_T=z_T)
            self.assertFalse(torch.allclose(changed, out))
            torch.testing.assert_close(changed, reference(), rtol=0, atol=0)
        # Not a child module: no extra state, parameters or DDP params.
        self.assertFalse(
            any('_lowp' in k for k in head.state_dict()))
        self.assertEqual(
            len(list(head.parameters())),
            len(list(head.denoiser.parameters())))
        # Without autocast the network itself is used.
        self.assertIs(head._sampling_denoiser(labels.device), head.denoiser)

    def test_cuda_graph_flag_falls_back_off_cuda(self):
        head = _tiny_head()
        labels = torch.tensor([2, 0, 1])
        z_T = torch.randn(3, 6)
        torch.testing.assert_close(
            head.sample(labels, z_T=z_T, cuda_graph=True),
            head.sample(labels, z_T=z_T))
        self.assertNotIn('_sample_graphs', head.__dict__)
        # Arguments are checked before either path is taken.
        with self.assertRaisesRegex(ValueError, 'exceeds the T='):
            head.sample(labels, num_steps=10**6, cuda_graph=True)


class TestLabelSmoothCELoss(TestCase):

    def test_equals_mmpretrain_label_smooth_loss(self):
        ref = MODELS.build(
            dict(type='LabelSmoothLoss', label_smooth_val=0.1,
                 mode='original'))
        ours = MODELS.build(dict(type='LabelSmoothCELoss',
                                 label_smooth_val=0.1))
        g = torch.Generator().manual_seed(0)
        score = torch.randn(6, 5, generator=g)
        label = torch.tensor([0, 4, 2, 2, 1, 3])
        weight = torch.rand(6, generator=g)
        for kwargs in (dict(), dict(avg_factor=4), dict(weight=weight),
                       dict(weight=weight, avg_factor=6),
                       dict(reduction_override='none'),
                       dict(reduction_override='sum')):
            torch.testing.assert_close(
                ours(score, label, **kwargs), ref(score, label, **kwargs))
        # One-hot / soft labels (e.g. from batch augments).
        soft = torch.softmax(torch.randn(6, 5, generator=g), dim=1)
        torch.testing.assert_close(ours(score, soft), ref(score, soft))
        # By hand: (1 - eps) CE + eps mean_k(-log p_k), eps = 0.1.
        logp = torch.log_softmax(score, dim=1)
        by_hand = (0.9 * -logp[torch.arange(6), label] +
                   0.1 * -logp.mean(dim=1)).mean()
        torch.testing.assert_close(ours(score, label), by_hand)

    def test_invalid_input(self):
        loss = MODELS.build(dict(type='LabelSmoothCELoss'))
        with self.assertRaisesRegex(ValueError, r'lie in \[0, 5\)'):
            loss(torch.randn(2, 5), torch.tensor([1, 5]))
        with self.assertRaisesRegex(ValueError, 'label_smooth_val'):
            MODELS.build(dict(type='LabelSmoothCELoss', label_smooth_val=1))
        with self.assertRaisesRegex(ValueError, 'reduction'):
            MODELS.build(dict(type='LabelSmoothCELoss', reduction='avg'))
        with self.assertRaisesRegex(ValueError, 'Soft labels'):
            loss(torch.randn(2, 5), torch.rand(2, 4))
