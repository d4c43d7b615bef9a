# Copyright (c) galddc_mm contributors. All rights reserved.
"""Tests of the latent diffusion pieces (``galddc_mm.models.diffusion``).

The schedule and the DDIM step are checked against independent numpy code
and against diffusers' schedulers (a test-only dependency).
"""
import math
import unittest
from unittest import TestCase

import numpy as np
import torch
import torch.nn.functional as F
from mmpretrain.registry import MODELS

import galddc_mm  # noqa: F401  (registers the modules)
from galddc_mm.models.diffusion import (
    DDIMSampler,
    DiffusionOutput,
    LatentDiffusionHead,
    LatentNormalizer,
    NoiseSchedule,
    ResMLPDenoiser,
)
from galddc_mm.models.diffusion.res_mlp_denoiser import timestep_embedding

SCHEDULE_BUFFERS = ('betas', 'alphas', 'alphas_cumprod', 'sqrt_alphas_cumprod',
                    'sqrt_one_minus_alphas_cumprod')


def numpy_linear_betas(T, beta_start=1e-4, beta_end=2e-2):
    return np.linspace(beta_start, beta_end, T, dtype=np.float64)


def numpy_cosine_betas(T, s=8e-3):
    """Nichol & Dhariwal eq. 17, written from the paper with a loop."""

    def f(t):
        return math.cos((t / T + s) / (1 + s) * math.pi / 2)**2

    return np.array([min(1 - f(t + 1) / f(t), 0.999) for t in range(T)])


def diffusers_ddim(schedule: str, T: int):
    """A diffusers DDIMScheduler configured to make our choices."""
    # Imported where used: the GPU machine runs this file's CUDA tests
    # without diffusers.
    from diffusers import DDIMScheduler
    return DDIMScheduler(
        num_train_timesteps=T,
        beta_start=1e-4,
        beta_end=2e-2,
        beta_schedule=('linear'
                       if schedule == 'linear' else 'squaredcos_cap_v2'),
        clip_sample=False,
        set_alpha_to_one=True,
        steps_offset=0,
        timestep_spacing='leading',
        prediction_type='epsilon')


class FixedLinearEps:
    """A fixed random 'network': eps = z W^T + sin(t / 50) b + E[y]."""

    def __init__(self, dim, num_labels=4, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.w = torch.randn(dim, dim, generator=g) * 0.5 / math.sqrt(dim)
        self.b = torch.randn(dim, generator=g)
        self.emb = torch.randn(num_labels, dim, generator=g)
        self.calls = []

    def __call__(self, z, t, labels):
        self.calls.append(z.shape[0])
        return (z @ self.w.T + torch.sin(t.float() / 50)[:, None] * self.b +
                self.emb[labels])


class TestNoiseSchedule(TestCase):
    DEFAULT_ARGS = dict(type='NoiseSchedule')

    def _check_against(self, schedule, betas):
        abar = np.cumprod(1 - betas)
        expected = dict(
            betas=betas,
            alphas=1 - betas,
            alphas_cumprod=abar,
            sqrt_alphas_cumprod=np.sqrt(abar),
            sqrt_one_minus_alphas_cumprod=np.sqrt(1 - abar))
        for name in SCHEDULE_BUFFERS:
            buf = getattr(schedule, name)
            self.assertEqual(buf.dtype, torch.float32, name)
            np.testing.assert_allclose(
                buf.numpy(), expected[name], rtol=1e-5, atol=1e-7,
                err_msg=name)

    def test_linear_matches_numpy(self):
        schedule = MODELS.build({**self.DEFAULT_ARGS, 'num_timesteps': 1000})
        self.assertEqual(schedule.num_timesteps, 1000)
        self._check_against(schedule, numpy_linear_betas(1000))
        schedule = NoiseSchedule(50, beta_start=1e-3, beta_end=0.2)
        self._check_against(schedule, numpy_linear_betas(50, 1e-3, 0.2))

    def test_cosine_matches_numpy(self):
        for T, s in ((1000, 8e-3), (100, 0.02)):
            schedule = NoiseSchedule(T, beta_schedule='cosine', cosine_s=s)
            betas = numpy_cosine_betas(T, s)
            self.assertAlmostEqual(betas[-1], 0.999)  # the cap is active
            self._check_against(schedule, betas)

    def test_matches_diffusers(self):
        for ours, theirs in (('linear', 'linear'), ('cosine',
                                                    'squaredcos_cap_v2')):
            schedule = NoiseSchedule(1000, beta_schedule=ours)
            from diffusers import DDIMScheduler, DDPMScheduler
            for cls in (DDPMScheduler, DDIMScheduler):
                ref = cls(
                    num_train_timesteps=1000,
                    beta_start=1e-4,
                    beta_end=2e-2,
                    beta_schedule=theirs)
                torch.testing.assert_close(
                    schedule.alphas_cumprod,
                    ref.alphas_cumprod,
                    rtol=1e-5,
                    atol=1e-6)
                torch.testing.assert_close(
                    schedule.betas, ref.betas, rtol=1e-5, atol=1e-7)

    def test_q_sample_round_trip(self):
        schedule = NoiseSchedule(1000)
        g = torch.Generator().manual_seed(0)
        z0 = torch.randn(6, 5, generator=g) * 3 + 1
        noise = torch.randn(6, 5, generator=g)
        t = torch.tensor([0, 1, 250, 500, 900, 999])
        z_t = schedule.q_sample(z0, t, noise)
        # Hand formula with the numpy schedule.
        abar = torch.from_numpy(np.cumprod(1 - numpy_linear_betas(1000)))
        a, b = abar[t].sqrt()[:, None], (1 - abar[t]).sqrt()[:, None]
        torch.testing.assert_close(
            z_t, (a * z0.double() + b * noise.double()).float(),
            rtol=1e-5,
            atol=1e-5)
        torch.testing.assert_close(
            schedule.predict_z0(z_t, t, noise), z0, rtol=1e-3, atol=2e-3)
        torch.testing.assert_close(
            schedule.predict_eps(z_t, t, z0), noise, rtol=1e-4, atol=1e-4)
        # An int timestep broadcasts over the batch.
        torch.testing.assert_close(
            schedule.q_sample(z0, 250, noise),
            schedule.q_sample(z0, torch.full((6, ), 250), noise))

    def test_sample_timesteps(self):
        schedule = NoiseSchedule(10)
        t = schedule.sample_timesteps(5000, 'cpu')
        self.assertEqual(t.dtype, torch.long)
        self.assertEqual(t.shape, (5000, ))
        self.assertEqual(set(t.tolist()), set(range(10)))
        t1 = schedule.sample_timesteps(
            8, 'cpu', generator=torch.Generator().manual_seed(3))
        t2 = schedule.sample_timesteps(
            8, 'cpu', generator=torch.Generator().manual_seed(3))
        torch.testing.assert_close(t1, t2)

    def test_buffers_not_in_state_dict(self):
        schedule = NoiseSchedule(10)
        self.assertEqual(dict(schedule.state_dict()), {})
        self.assertEqual(
            {name
             for name, _ in schedule.named_buffers()}, set(SCHEDULE_BUFFERS))

    def test_invalid_args(self):
        with self.assertRaisesRegex(ValueError, 'beta_schedule'):
            NoiseSchedule(10, beta_schedule='quadratic')
        with self.assertRaisesRegex(ValueError, 'num_timesteps'):
            NoiseSchedule(0)
        with self.assertRaisesRegex(ValueError, 'beta_start <= beta_end'):
            NoiseSchedule(10, beta_start=0.1, beta_end=0.01)
        with self.assertRaisesRegex(ValueError, r'\(B, \)'):
            NoiseSchedule(10).q_sample(
                torch.zeros(2, 3), torch.zeros(2, 1, dtype=torch.long),
                torch.zeros(2, 3))


class TestDDIMSampler(TestCase):
    DEFAULT_ARGS = dict(type='DDIMSampler')

    def test_timesteps_match_diffusers(self):
        sampler = MODELS.build({**self.DEFAULT_ARGS, 'num_steps': 25})
        self.assertEqual(sampler.timesteps(1000).tolist(),
                         list(range(960, -1, -40)))
        for T, S in ((1000, 25), (1000, 50), (1000, 1), (100, 7), (10, 10),
                     (200, 199)):
            ref = diffusers_ddim('linear', T)
            ref.set_timesteps(S)
            ours = sampler.timesteps(T, S)
            self.assertEqual(ours.dtype, torch.long)
            self.assertEqual(ours.tolist(), ref.timesteps.tolist())
            self.assertEqual(ours[-1].item(), 0)

    def test_invalid_args(self):
        sampler = DDIMSampler()
        with self.assertRaisesRegex(ValueError, 'exceeds the 100 training'):
            sampler.timesteps(100, 101)
        with self.assertRaisesRegex(ValueError, 'num_steps'):
            sampler.timesteps(100, 0)
        with self.assertRaisesRegex(ValueError, 'num_steps'):
            DDIMSampler(num_steps=0)
        with self.assertRaisesRegex(ValueError, 'eta'):
            DDIMSampler(eta=-0.1)
        with self.assertRaisesRegex(ValueError, 'clip_z0'):
            DDIMSampler(clip_z0=0.0)
        schedule = NoiseSchedule(10)
        with self.assertRaisesRegex(ValueError, 't_prev'):
            sampler.step(schedule, torch.zeros(1, 2), 3, 5, torch.zeros(1, 2))
        labels = torch.zeros(2, dtype=torch.long)
        with self.assertRaisesRegex(ValueError, 'null_label'):
            sampler.sample(
                FixedLinearEps(3), schedule, labels, 3, num_steps=2,
                guidance_scale=2.0)
        with self.assertRaisesRegex(ValueError, r'`z_T` must have shape'):
            sampler.sample(
                FixedLinearEps(3), schedule, labels, 3, z_T=torch.zeros(2, 4))

    def test_step_matches_diffusers(self):
        """Our chain equals DDIMScheduler.step at every step."""
        T, S, B, D = 1000, 20, 4, 6
        for schedule_name in ('linear', 'cosine'):
            schedule = NoiseSchedule(T, beta_schedule=schedule_name)
            ref = diffusers_ddim(schedule_name, T)
            ref.set_timesteps(S)
            for eta in (0.0, 0.5, 1.0):
                sampler = DDIMSampler(num_steps=S, eta=eta)
                chain = sampler.timesteps(T).tolist()
                self.assertEqual(chain, ref.timesteps.tolist())
                eps_fn = FixedLinearEps(D)
                g = torch.Generator().manual_seed(1)
                labels = torch.arange(B) % 3
                ours = theirs = torch.randn(B, D, generator=g)
                for i, t in enumerate(chain):
                    t_prev = chain[i + 1] if i + 1 < S else -1
                    noise = torch.randn(B, D, generator=g)
                    t_b = torch.full((B, ), t)
                    ours, ours_z0 = sampler.step(
                        schedule, eps_fn(ours, t_b, labels), t, t_prev,
                        ours, noise=noise)
                    out = ref.step(
                        eps_fn(theirs, t_b, labels), t, theirs, eta=eta,
                        variance_noise=noise)
                    theirs = out.prev_sample
                    msg = f'{schedule_name} eta={eta} t={t}'
                    torch.testing.assert_close(
                        ours_z0, out.pred_original_sample, rtol=1e-4,
                        atol=1e-4, msg=msg)
                    torch.testing.assert_close(
                        ours, theirs, rtol=1e-4, atol=1e-4, msg=msg)
                if eta == 0:
                    # The whole sample() loop, from the same z_T.
                    z_T = torch.randn(B, D, generator=g)
                    z = z_T
                    for t in ref.timesteps.tolist():
                        z = ref.step(eps_fn(z, torch.full((B, ), t), labels),
                                     t, z).prev_sample
                    torch.testing.assert_close(
                        sampler.sample(eps_fn, schedule, labels, D, z_T=z_T),
                        z, rtol=1e-4, atol=1e-4)

    def test_clip_matches_diffusers_clipped_model_output(self):
        """clip_z0 / z0_fn re-derive eps like use_clipped_model_output."""
        T, S, B, D, r = 1000, 10, 3, 4, 0.5
        schedule = NoiseSchedule(T)
        ref = diffusers_ddim('linear', T)
        ref.register_to_config(clip_sample=True, clip_sample_range=r)
        ref.set_timesteps(S)
        eps_fn = FixedLinearEps(D)
        labels = torch.zeros(B, dtype=torch.long)
        g = torch.Generator().manual_seed(2)
        z_ref = z_clip = z_fn = torch.randn(B, D, generator=g) * 3
        clipper = DDIMSampler(num_steps=S, eta=0.7, clip_z0=r)
        plain = DDIMSampler(num_steps=S, eta=0.7)
        chain = plain.timesteps(T).tolist()
        for i, t in enumerate(chain):
            t_prev = chain[i + 1] if i + 1 < S else -1
            t_b = torch.full((B, ), t)
            noise = torch.randn(B, D, generator=g)
            z_ref = ref.step(
                eps_fn(z_ref, t_b, labels), t, z_ref, eta=0.7,
                use_clipped_model_output=True,
                variance_noise=noise).prev_sample
            z_clip, z0 = clipper.step(schedule, eps_fn(z_clip, t_b, labels),
                                      t, t_prev, z_clip, noise=noise)
            z_fn, _ = plain.step(
                schedule, eps_fn(z_fn, t_b, labels), t, t_prev, z_fn,
                noise=noise, z0_fn=lambda z: z.clamp(-r, r))
            self.assertLessEqual(z0.abs().max().item(), r)
            torch.testing.assert_close(z_clip, z_ref, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(z_fn, z_ref, rtol=1e-4, atol=1e-4)

    def test_guidance(self):
        T, S, B, D, K = 100, 8, 5, 3, 3
        schedule = NoiseSchedule(T, beta_schedule='cosine')
        sampler = DDIMSampler(num_steps=S)
        labels = torch.tensor([0, 1, 2, 0, 1])
        z_T = torch.randn(B, D, generator=torch.Generator().manual_seed(0))
        eps_fn = FixedLinearEps(D, num_labels=K + 1)
        plain = sampler.sample(eps_fn, schedule, labels, D, z_T=z_T)
        self.assertEqual(eps_fn.calls, [B] * S)
        # Scale 1 is plain conditional sampling (and ignores null_label).
        torch.testing.assert_close(
            sampler.sample(
                eps_fn, schedule, labels, D, guidance_scale=1.0,
                null_label=K, z_T=z_T), plain)
        # Scale s, by hand with two separate calls per step.
        s = 3.0
        chain = sampler.timesteps(T).tolist()
        z = z_T
        for i, t in enumerate(chain):
            t_b = torch.full((B, ), t)
            eps_c = eps_fn(z, t_b, labels)
            eps_u = eps_fn(z, t_b, torch.full_like(labels, K))
            z, _ = sampler.step(schedule, eps_u + s * (eps_c - eps_u), t,
                                chain[i + 1] if i + 1 < S else -1, z)
        eps_fn.calls.clear()
        guided = sampler.sample(
            eps_fn, schedule, labels, D, guidance_scale=s, null_label=K,
            z_T=z_T)
        torch.testing.assert_close(guided, z, rtol=1e-5, atol=1e-5)
        self.assertFalse(torch.allclose(guided, plain, atol=1e-2))
        # One batched call per step, conditional and null stacked.
        self.assertEqual(eps_fn.calls, [2 * B] * S)
        # Scale 0 is unconditional sampling.
        torch.testing.assert_close(
            sampler.sample(
                eps_fn, schedule, labels, D, guidance_scale=0.0,
                null_label=K, z_T=z_T),
            sampler.sample(
                eps_fn, schedule, torch.full_like(labels, K), D, z_T=z_T),
            rtol=1e-5,
            atol=1e-5)

    def test_determinism(self):
        schedule = NoiseSchedule(100)
        eps_fn = FixedLinearEps(4)
        labels = torch.tensor([0, 1, 2])

        def run(seed, eta):
            return DDIMSampler(num_steps=10, eta=eta).sample(
                eps_fn, schedule, labels, 4,
                generator=torch.Generator().manual_seed(seed))

        for eta in (0.0, 1.0):
            torch.testing.assert_close(run(0, eta), run(0, eta))
            self.assertFalse(torch.allclose(run(0, eta), run(1, eta)))
        # eta > 0 adds noise: it changes the result for a given z_T.
        z_T = torch.randn(3, 4)
        a = DDIMSampler(10, eta=0.0).sample(
            eps_fn, schedule, labels, 4, z_T=z_T)
        self.assertFalse(
            torch.allclose(
                a,
                DDIMSampler(10, eta=1.0).sample(
                    eps_fn, schedule, labels, 4, z_T=z_T)))


class TestResMLPDenoiser(TestCase):
    DEFAULT_ARGS = dict(
        type='ResMLPDenoiser',
        num_classes=3,
        hidden_dim=16,
        num_blocks=2,
        time_embed_dim=8)

    def test_output_shape(self):
        for dim in (2, 64, 2048):
            model = MODELS.build({**self.DEFAULT_ARGS, 'latent_dim': dim})
            self.assertEqual(model.null_class, 3)
            out = model(
                torch.randn(4, dim), torch.tensor([0, 5, 99, 999]),
                torch.tensor([0, 1, 2, 3]))  # 3: the null class
            self.assertEqual(out.shape, (4, dim))
            self.assertTrue(torch.isfinite(out).all())
        self.assertEqual(model.class_embed.num_embeddings, 4)

    def test_timestep_embedding(self):
        freqs = ResMLPDenoiser(2, 1, hidden_dim=4, time_embed_dim=4).freqs
        torch.testing.assert_close(freqs, torch.tensor([1.0, 0.01]))
        emb = timestep_embedding(torch.tensor([0, 5]), freqs)
        expected = torch.tensor(
            [[1.0, 1.0, 0.0, 0.0],
             [math.cos(5), math.cos(0.05), math.sin(5), math.sin(0.05)]])
        torch.testing.assert_close(emb, expected)

    def test_blocks_start_as_identity(self):
        model = MODELS.build({**self.DEFAULT_ARGS, 'latent_dim': 5})
        z = torch.randn(3, 5)
        out = model(z, torch.tensor([1, 2, 3]), torch.tensor([0, 1, 2]))
        # With zero-init blocks the network reduces to in -> norm -> out.
        expected = model.out_proj(F.silu(model.out_norm(model.in_proj(z))))
        torch.testing.assert_close(out, expected)
        self.assertLess(out.abs().max().item(), 0.1)  # small output init
        # A generic init_cfg must not undo the zero init.
        model = MODELS.build({
            **self.DEFAULT_ARGS, 'latent_dim': 5,
            'init_cfg': dict(type='Kaiming', layer='Linear')
        })
        model.init_weights()
        for block in model.blocks:
            self.assertEqual(block.fc2.weight.abs().sum().item(), 0)
        self.assertNotEqual(model.blocks[0].fc1.weight.abs().sum().item(), 0)

    def test_gradients_reach_all_parameters(self):
        torch.manual_seed(0)
        model = MODELS.build({**self.DEFAULT_ARGS, 'latent_dim': 5})
        optim = torch.optim.Adam(model.parameters(), lr=1e-2)
        z, target = torch.randn(8, 5), torch.randn(8, 5)
        t = torch.randint(0, 1000, (8, ))
        labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])

        def backward():
            optim.zero_grad()
            F.mse_loss(model(z, t, labels), target).backward()
            return {n: p.grad for n, p in model.named_parameters()}

        grads = backward()
        # At init only the path through the zero-init layers is open...
        self.assertGreater(grads['blocks.0.fc2.weight'].abs().sum(), 0)
        self.assertGreater(grads['in_proj.weight'].abs().sum(), 0)
        self.assertEqual(grads['blocks.0.fc1.weight'].abs().sum(), 0)
        optim.step()
        # ... and after one step every parameter gets a gradient.
        for name, grad in backward().items():
            self.assertIsNotNone(grad, name)
            self.assertGreater(grad.abs().sum().item(), 0, name)
        # Every row of the class embedding, the null class included.
        emb_grad = model.class_embed.weight.grad
        self.assertTrue((emb_grad.abs().sum(1) > 0).all())

    def _trained_looking(self, latent_dim=5):
        """Non-zero blocks, so the FiLM conditioning changes the output."""
        torch.manual_seed(0)
        model = MODELS.build({**self.DEFAULT_ARGS, 'latent_dim': latent_dim})
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0, 0.5)
        return model.eval()

    def test_shared_timestep_is_the_same_function(self):
        model = self._trained_looking()
        film_rows = []
        model.blocks[0].cond.register_forward_hook(
            lambda m, i, o: film_rows.append(i[0].shape[0]))
        g = torch.Generator().manual_seed(1)
        # 3 rows (< K + 1 = 4 classes): per row; 11 rows: per class.
        for batch, rows in ((3, 3), (11, 4)):
            z = torch.randn(batch, 5, generator=g)
            labels = torch.randint(0, 4, (batch, ), generator=g)
            for t in (0, 417, 999):
                film_rows.clear()
                with torch.no_grad():
                    shared = model(z, torch.tensor(t), labels)
                    self.assertEqual(film_rows, [rows])
                    per_row = model(z, torch.full((batch, ), t), labels)
                torch.testing.assert_close(
                    shared, per_row, rtol=1e-5, atol=1e-5)
                self.assertGreater(
                    (per_row - model(z, torch.full((batch, ), t + 1),
                                     labels)).abs().max(), 1e-3)

    def test_sampler_passes_one_timestep_to_a_denoiser_that_takes_it(self):
        model = self._trained_looking(latent_dim=4)
        schedule = NoiseSchedule(100)
        t_shapes = []
        model.register_forward_pre_hook(
            lambda m, args: t_shapes.append(tuple(args[1].shape)))
        labels = torch.tensor([0, 1, 2, 0, 1, 2, 2])
        z_T = torch.randn(7, 4, generator=torch.Generator().manual_seed(2))
        for scale in (1.0, 2.0):
            sampler = DDIMSampler(num_steps=5, guidance_scale=scale)
            t_shapes.clear()
            with torch.no_grad():
                shared = sampler.sample(model, schedule, labels, 4,
                                        null_label=3, z_T=z_T)
                self.assertEqual(t_shapes, [()] * 5)
                # A plain function has no `accepts_shared_timestep`.
                t_shapes.clear()
                per_row = sampler.sample(lambda z, t, y: model(z, t, y),
                                         schedule, labels, 4, null_label=3,
                                         z_T=z_T)
            rows = 7 if scale == 1.0 else 14
            self.assertEqual(t_shapes, [(rows, )] * 5)
            torch.testing.assert_close(shared, per_row, rtol=1e-4, atol=1e-4)

    def test_invalid_input(self):
        model = MODELS.build({**self.DEFAULT_ARGS, 'latent_dim': 5})
        z, t = torch.randn(2, 5), torch.tensor([1, 2])
        with self.assertRaisesRegex(ValueError, r'\[0, 2\] or be the null'):
            model(z, t, torch.tensor([0, 4]))
        with self.assertRaisesRegex(ValueError, 'values in'):
            model(z, t, torch.tensor([-1, 0]))
        with self.assertRaisesRegex(ValueError, r'shape \(B, 5\)'):
            model(torch.randn(2, 4), t, torch.tensor([0, 1]))
        with self.assertRaisesRegex(ValueError, '`t` must have shape'):
            model(z, torch.tensor([1]), torch.tensor([0, 1]))
        with self.assertRaisesRegex(TypeError, 'integer'):
            model(z, t, torch.tensor([0.0, 1.0]))

    def test_invalid_args(self):
        with self.assertRaisesRegex(ValueError, 'time_embed_dim'):
            ResMLPDenoiser(4, 3, time_embed_dim=7)
        with self.assertRaisesRegex(ValueError, 'num_classes'):
            ResMLPDenoiser(4, 0)
        with self.assertRaisesRegex(ValueError, 'latent_dim'):
            ResMLPDenoiser(0, 3)
        with self.assertRaisesRegex(ValueError, 'dropout'):
            ResMLPDenoiser(4, 3, dropout=1.0)


class TestLatentNormalizer(TestCase):

    def test_fit_round_trip(self):
        rng = np.random.default_rng(0)
        data = rng.normal(size=(300, 4)) * [1.0, 5.0, 0.1, 2.0] + [3, -2, 0,
                                                                    40]
        data[:, 2] = 7.0  # a dead (constant) dimension
        latents = torch.from_numpy(data).float()
        norm = MODELS.build(dict(type='LatentNormalizer', latent_dim=4))
        self.assertFalse(norm.fitted)
        torch.testing.assert_close(norm.normalize(latents), latents)
        norm.fit(latents)
        self.assertTrue(norm.fitted)
        expected_std = data.astype(np.float32).std(0)
        expected_std[2] = norm.eps
        np.testing.assert_allclose(
            norm.mean.numpy(), data.astype(np.float32).mean(0), rtol=1e-5)
        np.testing.assert_allclose(
            norm.std.numpy(), expected_std, rtol=1e-4)
        z = norm.normalize(latents)
        torch.testing.assert_close(z[:, [0, 1, 3]].mean(0), torch.zeros(3),
                                   atol=1e-5, rtol=0)
        torch.testing.assert_close(z[:, [0, 1, 3]].std(0, correction=0),
                                   torch.ones(3))
        torch.testing.assert_close(
            norm.denormalize(z), latents, rtol=1e-5, atol=1e-4)

    def test_state_dict(self):
        norm = LatentNormalizer(3)
        norm.fit(torch.randn(50, 3) * 4 + 1)
        state = norm.state_dict()
        self.assertEqual(set(state),
                         {'mean', 'std', 'data_min', 'data_max', 'fitted'})
        fresh = LatentNormalizer(3)
        fresh.load_state_dict(state)
        self.assertTrue(fresh.fitted)
        z = torch.randn(5, 3)
        torch.testing.assert_close(fresh.normalize(z), norm.normalize(z))

    def test_records_the_standardised_range(self):
        norm = LatentNormalizer(3)
        self.assertTrue(torch.isinf(norm.data_min).all())  # unbounded
        x = torch.randn(50, 3) * torch.tensor([1., 4., 9.]) + 2
        norm.fit(x)
        torch.testing.assert_close(norm.data_min,
                                   norm.normalize(x).amin(dim=0))
        torch.testing.assert_close(norm.data_max,
                                   norm.normalize(x).amax(dim=0))

    def test_invalid_input(self):
        norm = LatentNormalizer(3)
        with self.assertRaisesRegex(ValueError, 'at least 2'):
            norm.fit(torch.randn(1, 3))
        with self.assertRaisesRegex(ValueError, r'shape \(N, 3\)'):
            norm.fit(torch.randn(10, 4))
        with self.assertRaisesRegex(ValueError, r'shape \(N, 3\)'):
            norm.normalize(torch.randn(3))
        with self.assertRaisesRegex(ValueError, 'latent_dim'):
            LatentNormalizer(0)


class TestLatentDiffusionHead(TestCase):
    DEFAULT_ARGS = dict(
        type='LatentDiffusionHead',
        latent_dim=4,
        num_classes=3,
        denoiser=dict(
            type='ResMLPDenoiser', hidden_dim=16, num_blocks=2,
            time_embed_dim=8),
        sampler=dict(type='DDIMSampler', num_steps=10))

    def _head(self, **kwargs):
        head = MODELS.build({**self.DEFAULT_ARGS, **kwargs})
        g = torch.Generator().manual_seed(0)
        self.mean = torch.tensor([0.0, 5.0, -5.0, 20.0])
        self.std = torch.tensor([1.0, 2.0, 0.5, 3.0])
        head.normalizer.fit(
            torch.randn(500, 4, generator=g) * self.std + self.mean)
        # Give the zero-init blocks some weight so outputs are not trivial.
        for block in head.denoiser.blocks:
            torch.nn.init.normal_(block.fc2.weight, std=0.1, generator=g)
        torch.nn.init.normal_(
            head.denoiser.out_proj.weight, std=0.3, generator=g)
        return head

    def test_forward_matches_formula(self):
        head = self._head()
        g = torch.Generator().manual_seed(1)
        z0 = torch.randn(5, 4, generator=g) * self.std + self.mean
        labels = torch.tensor([0, 1, 2, 0, 1])
        t = torch.tensor([0, 10, 300, 700, 999])
        noise = torch.randn(5, 4, generator=g)
        out = head(z0, labels, noise=noise, t=t)
        self.assertIsInstance(out, DiffusionOutput)
        for x in (out.noise, out.pred_noise, out.z_t, out.pred_z0):
            self.assertEqual(x.shape, (5, 4))
        torch.testing.assert_close(out.t, t)
        torch.testing.assert_close(out.noise, noise)
        # By hand, with the fitted statistics and the numpy schedule.
        abar = torch.from_numpy(np.cumprod(1 - numpy_linear_betas(1000)))
        a = abar[t].sqrt().float()[:, None]
        b = (1 - abar[t]).sqrt().float()[:, None]
        m, s = head.normalizer.mean, head.normalizer.std
        torch.testing.assert_close(
            out.z_t, a * (z0 - m) / s + b * noise, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(
            out.pred_noise, head.denoiser(out.z_t, t, labels))
        torch.testing.assert_close(
            out.pred_z0, (out.z_t - b * out.pred_noise) / a * s + m,
            rtol=1e-4, atol=1e-3)
        # pred_z0 is in encoder space: at t = 0 it is close to z0.
        torch.testing.assert_close(
            out.pred_z0[0], z0[0], rtol=0, atol=0.05 * s.max().item())
        # ... and differentiable w.r.t. every denoiser parameter.
        out.pred_z0.pow(2).sum().backward()
        for name, p in head.denoiser.named_parameters():
            if name != 'class_embed.weight':
                self.assertGreater(p.grad.abs().sum().item(), 0, name)

    def test_random_t_and_noise(self):
        head = self._head()
        out = head(torch.randn(64, 4), torch.zeros(64, dtype=torch.long))
        self.assertEqual(out.t.dtype, torch.long)
        self.assertTrue(((out.t >= 0) & (out.t < 1000)).all())
        self.assertGreater(out.t.unique().numel(), 30)
        self.assertLess(abs(out.noise.std().item() - 1), 0.2)

    def test_cond_drop(self):
        seen = []
        for p, train, expect_all_null in ((1.0, True, True),
                                          (1.0, False, False),
                                          (0.0, True, False)):
            head = self._head(cond_drop_prob=p)
            head.train(train)
            handle = head.denoiser.register_forward_pre_hook(
                lambda m, args: seen.append(args[2].clone()))
            labels = torch.tensor([0, 1, 2, 1])
            head(torch.randn(4, 4), labels)
            handle.remove()
            if expect_all_null:
                self.assertTrue((seen[-1] == 3).all())
            else:
                torch.testing.assert_close(seen[-1], labels)
        # p = 0.5: about half of the labels become the null class.
        head = self._head(cond_drop_prob=0.5)
        handle = head.denoiser.register_forward_pre_hook(
            lambda m, args: seen.append(args[2].clone()))
        head(torch.randn(2000, 4), torch.zeros(2000, dtype=torch.long),
             generator=torch.Generator().manual_seed(0))
        handle.remove()
        self.assertEqual(set(seen[-1].tolist()), {0, 3})
        self.assertLess(abs((seen[-1] == 3).float().mean().item() - 0.5),
                        0.05)

    def test_build_args(self):
        with self.assertRaisesRegex(ValueError, 'latent_dim=7'):
            self._head(denoiser=dict(type='ResMLPDenoiser', latent_dim=7))
        with self.assertRaisesRegex(ValueError, 'num_classes'):
            self._head(denoiser=ResMLPDenoiser(4, 5))
        with self.assertRaisesRegex(ValueError, 'cond_drop_prob'):
            self._head(cond_drop_prob=1.5)
        head = self._head()
        with self.assertRaisesRegex(ValueError, r'`z0` must have shape'):
            head(torch.randn(2, 3), torch.tensor([0, 1]))
        with self.assertRaisesRegex(ValueError, r'`labels` must have shape'):
            head(torch.randn(2, 4), torch.tensor([0, 1, 2]))
        with self.assertRaisesRegex(ValueError, r'`t` must have shape'):
            head(torch.randn(2, 4), torch.tensor([0, 1]), t=torch.tensor(3))
        with self.assertRaisesRegex(ValueError, r'`noise` must have shape'):
            head(torch.randn(2, 4), torch.tensor([0, 1]),
                 noise=torch.randn(2, 3))
        # Built modules are accepted as they are.
        schedule = NoiseSchedule(50, beta_schedule='cosine')
        head = LatentDiffusionHead(
            4, 3, schedule=schedule, denoiser=ResMLPDenoiser(4, 3, 8))
        self.assertIs(head.schedule, schedule)
        self.assertEqual(head.null_class, 3)

    def test_state_dict(self):
        keys = set(self._head().state_dict())
        self.assertTrue({'normalizer.mean', 'normalizer.std',
                         'normalizer.fitted'} <= keys)
        self.assertIn('denoiser.out_proj.weight', keys)
        self.assertFalse([k for k in keys if k.startswith('schedule.')])
        self.assertNotIn('denoiser.freqs', keys)

    def test_sample(self):
        head = self._head()
        labels = torch.tensor([0, 1, 2, 0, 1, 2])
        z_T = torch.randn(6, 4, generator=torch.Generator().manual_seed(2))
        out = head.sample(labels, z_T=z_T)
        self.assertEqual(out.shape, (6, 4))
        # Encoder space: the standardised DDIM result, denormalised.
        std_space = head.sampler.sample(head.denoiser, head.schedule, labels,
                                        4, z_T=z_T)
        torch.testing.assert_close(
            out, std_space * head.normalizer.std + head.normalizer.mean)
        # Deterministic for eta = 0 given z_T or a seeded generator.
        torch.testing.assert_close(head.sample(labels, z_T=z_T), out)
        a = head.sample(labels, generator=torch.Generator().manual_seed(5))
        b = head.sample(labels, generator=torch.Generator().manual_seed(5))
        torch.testing.assert_close(a, b)
        self.assertFalse(torch.allclose(a, out))
        with self.assertRaisesRegex(ValueError, 'feature_clamp_max'):
            self._head(feature_clamp_max=-1.0)

    def test_sample_with_compiled_denoiser(self):
        torch._dynamo.reset()
        head = self._head()
        compiles = []

        def backend(graph_module, example_inputs):
            compiles.append(len(example_inputs))
            return graph_module.forward

        labels = torch.tensor([0, 1, 2, 0, 1, 2])
        z_T = torch.randn(6, 4, generator=torch.Generator().manual_seed(2))
        eager = head.sample(labels, z_T=z_T)
        # On the CPU the compiled call stays eager (CUDA only)...
        out = head.sample(labels, z_T=z_T, compile_denoiser=dict(
            backend=backend))
        torch.testing.assert_close(out, eager)
        self.assertEqual(compiles, [])
        call = head.__dict__['_compiled_denoiser'][1]
        self.assertIs(call.fn, head.denoiser)
        # ... and where it compiles, the chain is the same function, the
        # one compiled denoiser serving every step.
        call.devices = ('cpu', )
        counts = []
        for _ in range(2):
            out = head.sample(labels, z_T=z_T, compile_denoiser=dict(
                backend=backend))
            torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)
            counts.append(len(compiles))
        # Compiled at the first step (in pieces on the CPU, around the
        # label range check), not again at later steps or calls.
        self.assertGreater(counts[0], 0)
        self.assertEqual(counts[1], counts[0])
        with self.assertRaisesRegex(TypeError, 'bool or a dict'):
            head.sample(labels, compile_denoiser='yes')

    @unittest.skipUnless(torch.cuda.is_available(), 'needs CUDA')
    def test_compiled_denoiser_on_cuda_bf16(self):
        torch._dynamo.reset()
        head = self._head().cuda()
        labels = torch.arange(3000, device='cuda') % 3
        z_T = torch.randn(3000, 4, device='cuda')
        with torch.autocast('cuda', dtype=torch.bfloat16):
            eager = head.sample(labels, z_T=z_T)
            compiled = head.sample(labels, z_T=z_T, compile_denoiser=True)
        exact = head.sample(labels, z_T=z_T)
        ref = ((eager - exact).norm() / exact.norm()).item()
        err = ((compiled - exact).norm() / exact.norm()).item()
        self.assertLess(err, 2 * ref + 1e-3)

    def test_sample_clamp_in_encoder_space(self):
        head = self._head()
        labels = torch.tensor([0, 1, 2, 0])
        z_T = torch.randn(4, 4, generator=torch.Generator().manual_seed(3))
        c = 3.0
        clamped = self._head(feature_clamp_max=c)
        clamped.load_state_dict(head.state_dict())
        out = clamped.sample(labels, z_T=z_T)
        # In encoder space (a clamp in standardised units would allow
        # values up to 20 + 3c in dimension 3).
        self.assertLessEqual(out.abs().max().item(), c)
        # By hand: the clamp acts on the z0 estimate at every step.
        m, s = head.normalizer.mean, head.normalizer.std
        chain = head.sampler.timesteps(1000).tolist()
        z = z_T
        for i, t in enumerate(chain):
            eps = head.denoiser(z, torch.full((4, ), t), labels)
            z, _ = head.sampler.step(
                head.schedule, eps, t,
                chain[i + 1] if i + 1 < len(chain) else -1, z,
                z0_fn=lambda x: ((x * s + m).clamp(-c, c) - m) / s)
        torch.testing.assert_close(out, (z * s + m).clamp(-c, c))
        self.assertFalse(
            torch.allclose(out, head.sample(labels, z_T=z_T).clamp(-c, c)))


class TestGaussianMixtureFit(TestCase):
    """Train a small head on a 2-D mixture and sample each class."""

    def test_fit_and_sample(self):
        torch.manual_seed(0)
        g = torch.Generator().manual_seed(0)
        # Encoder-space class means (offset so the normalizer matters) and
        # the isotropic class std.
        means = torch.tensor([[-1.5, 0.], [1.5, 0.], [0., 2.]]) + torch.tensor(
            [10., -5.])
        std = 0.5
        y = torch.randint(0, 3, (3000, ), generator=g)
        x = means[y] + std * torch.randn(3000, 2, generator=g)
        head = MODELS.build(
            dict(
                type='LatentDiffusionHead',
                latent_dim=2,
                num_classes=3,
                schedule=dict(
                    type='NoiseSchedule',
                    num_timesteps=200,
                    beta_schedule='cosine'),
                denoiser=dict(
                    type='ResMLPDenoiser',
                    hidden_dim=64,
                    num_blocks=2,
                    time_embed_dim=32),
                sampler=dict(type='DDIMSampler', num_steps=50)))
        head.normalizer.fit(x)
        steps = 1500
        optim = torch.optim.Adam(head.denoiser.parameters(), lr=1e-2)
        lr_sched = torch.optim.lr_scheduler.CosineAnnealingLR(optim, steps)
        for _ in range(steps):
            idx = torch.randint(0, 3000, (256, ), generator=g)
            out = head(x[idx], y[idx], generator=g)
            loss = F.mse_loss(out.pred_noise, out.noise)
            optim.zero_grad()
            loss.backward()
            optim.step()
            lr_sched.step()
        head.eval()
        labels = torch.arange(3).repeat_interleave(500)
        samples = head.sample(
            labels, eta=0.0, generator=torch.Generator().manual_seed(1))
        # Mean distance to the centre of a 2-D isotropic Gaussian.
        true_radius = std * math.sqrt(math.pi / 2)
        for k in range(3):
            s_k = samples[labels == k]
            # Class mean within 0.3 class std of the truth (the classes are
            # 2.5 apart, so a label mix-up or an untrained model fails).
            mean_err = (s_k.mean(0) - means[k]).norm().item()
            self.assertLess(mean_err, 0.3 * std, f'class {k}')
            # Radius within 15 %.
            radius = (s_k - means[k]).norm(dim=1).mean().item()
            self.assertLess(
                abs(radius / true_radius - 1), 0.15,
                f'class {k}: radius {radius:.3f} vs {true_radius:.3f}')
