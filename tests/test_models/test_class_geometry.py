# Copyright (c) galddc_mm contributors. All rights reserved.
"""ClassGeometry against per-class Python-loop references."""
import math
import warnings
from unittest import TestCase

import numpy as np
import torch
from mmpretrain.registry import MODELS

import galddc_mm  # noqa: F401  (registers ClassGeometry)

# radius_scale='seed': r_obs follows the EMA, whose formula these tests pin
# (the default 'data' keeps r_obs at the real radius: TestRadiusScale).
DEFAULT_ARGS = dict(type='ClassGeometry', num_classes=6, latent_dim=4, tau=20,
                    radius_scale='seed')
# Head (>= 20): 0, 1, 2 (20 is inclusive); tail: 3, 4; class 5 empty.
COUNTS = [30, 25, 20, 5, 1, 0]


def make_data(counts, dim, seed=0):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.cat(
        [torch.full((n, ), c, dtype=torch.long) for c, n in enumerate(counts)])
    labels = labels[torch.randperm(len(labels), generator=gen)]
    centres = 3 * torch.randn(len(counts), dim, generator=gen)
    scales = torch.rand(len(counts), generator=gen) + 0.5
    latents = centres[labels] + scales[labels, None] * torch.randn(
        len(labels), dim, generator=gen)
    return latents, labels


def ref_init(latents, labels, num_classes, tau):
    """Loop reference of the initial geometry."""
    protos = torch.zeros(num_classes, latents.shape[1], dtype=torch.float64)
    radii = torch.zeros(num_classes, dtype=torch.float64)
    counts = torch.zeros(num_classes, dtype=torch.long)
    for c in range(num_classes):
        rows = [latents[i].double() for i in range(len(labels))
                if int(labels[i]) == c]
        counts[c] = len(rows)
        if not rows:
            continue
        mu = sum(rows) / len(rows)
        protos[c] = mu
        radii[c] = sum(torch.norm(r - mu) for r in rows) / len(rows)
    head = [c for c in range(num_classes) if counts[c] >= tau]
    r_prior = sum(radii[c] for c in head) / len(head)
    return counts, protos.float(), radii.float(), float(r_prior)


def ref_ema(protos, r_obs, latents, labels, bp, br):
    """Loop reference of one EMA step (radius to the updated prototype)."""
    protos, r_obs = protos.clone(), r_obs.clone()
    for c in range(protos.shape[0]):
        rows = [latents[i] for i in range(len(labels)) if int(labels[i]) == c]
        if not rows:
            continue
        mean = sum(rows) / len(rows)
        protos[c] = (1 - bp) * protos[c] + bp * mean
        r_batch = sum(torch.norm(r - protos[c]) for r in rows) / len(rows)
        r_obs[c] = (1 - br) * r_obs[c] + br * r_batch
    return protos, r_obs


class TestClassGeometry(TestCase):

    def build(self, **kwargs):
        return MODELS.build({**DEFAULT_ARGS, **kwargs})

    def init_geometry(self, **kwargs):
        geom = self.build(**kwargs)
        latents, labels = make_data(COUNTS, 4)
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            geom.init_from_latents(latents, labels)
        return geom, latents, labels

    def assertClose(self, a, b, atol=1e-5, rtol=1e-5):
        a, b = torch.as_tensor(a), torch.as_tensor(b)
        self.assertTrue(
            torch.allclose(a.float(), b.float(), atol=atol, rtol=rtol),
            msg=f'{a} vs {b}')

    def test_buffers_before_init(self):
        geom = self.build()
        self.assertFalse(geom.is_initialized)
        self.assertEqual(
            set(dict(geom.named_buffers())),
            {'counts', 'prototypes', 'r_obs', 'r_real', 'r_prior',
             'real_prototypes', 'initialized'})
        self.assertEqual(geom.counts.dtype, torch.int64)
        self.assertEqual(geom.prototypes.shape, (6, 4))
        self.assertEqual(geom.prototypes.dtype, torch.float32)
        self.assertEqual(geom.r_prior.shape, torch.Size([]))
        self.assertEqual(len(list(geom.parameters())), 0)

    def test_init_matches_reference(self):
        latents, labels = make_data(COUNTS, 4)
        counts, protos, radii, r_prior = ref_init(latents, labels, 6, 20)
        for chunk_size in (8192, 7):
            geom = self.build()
            with self.assertWarnsRegex(UserWarning,
                                       r'no training sample: \[5\]'):
                geom.init_from_latents(
                    latents, labels, class_counts=np.array(COUNTS),
                    chunk_size=chunk_size)
            self.assertTrue(geom.is_initialized)
            self.assertTrue(torch.equal(geom.counts, counts))
            self.assertClose(geom.prototypes, protos)
            self.assertClose(geom.r_real, radii)
            self.assertClose(geom.r_obs, radii)
            self.assertAlmostEqual(float(geom.r_prior), r_prior, places=5)
        # The empty class is zero and left out of r_prior (r_prior is the
        # mean over classes 0-2 only).
        self.assertTrue(torch.equal(geom.prototypes[5], torch.zeros(4)))
        self.assertEqual(float(geom.r_real[5]), 0.)
        self.assertAlmostEqual(
            float(geom.r_prior), float(radii[:3].mean()), places=5)

    def test_masks_and_r_cal(self):
        geom, _, _ = self.init_geometry(lam=0.3)
        self.assertEqual(geom.head_mask.tolist(),
                         [True, True, True, False, False, False])
        self.assertEqual(geom.tail_mask.tolist(),
                         [False, False, False, True, True, False])
        self.assertEqual(geom.valid_mask.tolist(),
                         [True, True, True, True, True, False])
        r, rp = geom.r_obs.tolist(), float(geom.r_prior)
        expected = [
            r[0], r[1], r[2], 0.3 * r[3] + 0.7 * rp, 0.3 * r[4] + 0.7 * rp,
            0.
        ]
        self.assertClose(geom.r_cal, torch.tensor(expected))
        # A one-sample class has zero observed radius; calibration lifts it.
        self.assertEqual(float(geom.r_obs[4]), 0.)
        self.assertAlmostEqual(float(geom.r_cal[4]), 0.7 * rp, places=5)

        summary = geom.summary()
        self.assertEqual(
            set(summary),
            {'num_head', 'num_tail', 'r_prior', 'r_obs_head', 'r_obs_tail',
             'r_cal_tail'})
        self.assertTrue(all(isinstance(v, float) for v in summary.values()))
        self.assertEqual(summary['num_head'], 3.)
        self.assertEqual(summary['num_tail'], 2.)
        self.assertAlmostEqual(summary['r_prior'], rp, places=5)
        self.assertAlmostEqual(summary['r_obs_head'], sum(r[:3]) / 3, 5)
        self.assertAlmostEqual(summary['r_obs_tail'], (r[3] + r[4]) / 2, 5)
        self.assertAlmostEqual(summary['r_cal_tail'],
                               (expected[3] + expected[4]) / 2, 5)

    def test_ema_matches_reference(self):
        bp, br = 0.2, 0.3
        geom, _, _ = self.init_geometry(
            proto_momentum=bp, radius_momentum=br)
        counts, r_prior, r_real = (geom.counts.clone(), geom.r_prior.clone(),
                                   geom.r_real.clone())
        protos, r_obs = geom.prototypes.clone(), geom.r_obs.clone()
        gen = torch.Generator().manual_seed(1)
        batches = [
            torch.tensor([0, 0, 3, 1, 1, 1]),  # 2, 4, 5 missing; 3 single
            torch.tensor([4, 2]),  # one sample per present class
            torch.tensor([2, 2, 2, 0]),
        ]
        for labels in batches:
            z = 2 * torch.randn(len(labels), 4, generator=gen)
            protos, r_obs = ref_ema(protos, r_obs, z, labels, bp, br)
            before = geom.prototypes.clone()
            geom.ema_update(z, labels)
            self.assertClose(geom.prototypes, protos)
            self.assertClose(geom.r_obs, r_obs)
            absent = torch.ones(6, dtype=torch.bool)
            absent[labels] = False
            self.assertTrue(
                torch.equal(geom.prototypes[absent], before[absent]))
        # Initial statistics are fixed.
        self.assertTrue(torch.equal(geom.counts, counts))
        self.assertTrue(torch.equal(geom.r_prior, r_prior))
        self.assertTrue(torch.equal(geom.r_real, r_real))

    def test_ema_full_momentum_hand_values(self):
        # Momentum 1: the prototype becomes the batch mean and r_obs the
        # batch radius around it.
        geom, _, _ = self.init_geometry(
            proto_momentum=1., radius_momentum=1.)
        z = torch.tensor([[1., 0, 0, 0], [3., 0, 0, 0], [0., 0, 2, 0]])
        geom.ema_update(z, torch.tensor([1, 1, 3]))
        self.assertClose(geom.prototypes[1], torch.tensor([2., 0, 0, 0]))
        self.assertClose(geom.prototypes[3], torch.tensor([0., 0, 2, 0]))
        self.assertAlmostEqual(float(geom.r_obs[1]), 1., places=6)
        self.assertEqual(float(geom.r_obs[3]), 0.)
        # Zero momentum: nothing moves.
        geom, _, _ = self.init_geometry(
            proto_momentum=0., radius_momentum=0.)
        state = {k: v.clone() for k, v in geom.state_dict().items()}
        geom.ema_update(z, torch.tensor([1, 1, 3]))
        for k, v in geom.state_dict().items():
            self.assertTrue(torch.equal(v, state[k]), k)

    def test_ema_empty_batch_is_noop(self):
        geom, _, _ = self.init_geometry()
        protos, r_obs = geom.prototypes.clone(), geom.r_obs.clone()
        geom.ema_update(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
        self.assertTrue(torch.equal(geom.prototypes, protos))
        self.assertTrue(torch.equal(geom.r_obs, r_obs))

    def test_state_dict_round_trip(self):
        geom, _, _ = self.init_geometry(proto_momentum=0.5)
        geom.ema_update(torch.randn(5, 4), torch.tensor([0, 1, 1, 3, 4]))
        # state_dict() holds references to the buffers: copy them.
        state = {k: v.clone() for k, v in geom.state_dict().items()}
        self.assertEqual(
            set(state), {'counts', 'prototypes', 'r_obs', 'r_real', 'r_prior',
                         'real_prototypes', 'initialized'})
        fresh = self.build(proto_momentum=0.5)
        fresh.load_state_dict(state)
        self.assertTrue(fresh.is_initialized)
        for k, v in fresh.state_dict().items():
            self.assertTrue(torch.equal(v, state[k]), k)
        self.assertTrue(torch.equal(fresh.r_cal, geom.r_cal))
        self.assertTrue(torch.equal(fresh.tail_mask, geom.tail_mask))
        # Loading an uninitialised state makes the EMA refuse again.
        geom.load_state_dict(self.build().state_dict())
        self.assertFalse(geom.is_initialized)
        with self.assertRaisesRegex(RuntimeError, 'before init_from_latents'):
            geom.ema_update(torch.randn(2, 4), torch.tensor([0, 1]))
        geom.load_state_dict(state)
        # Both continue identically.
        z, y = torch.randn(4, 4), torch.tensor([2, 2, 0, 4])
        geom.ema_update(z, y)
        fresh.ema_update(z, y)
        self.assertTrue(torch.equal(fresh.prototypes, geom.prototypes))
        self.assertTrue(torch.equal(fresh.r_obs, geom.r_obs))

    def test_no_tail_class_warns(self):
        geom = self.build(tau=1)
        latents, labels = make_data([3, 4, 2, 5, 2, 3], 4)
        with self.assertWarnsRegex(UserWarning, r'tau=1 .*no tail class'):
            geom.init_from_latents(latents, labels)
        self.assertTrue(torch.equal(geom.r_cal, geom.r_obs))

    def test_errors(self):
        geom = self.build(tau=100)
        latents, labels = make_data(COUNTS, 4)
        with self.assertRaisesRegex(ValueError,
                                    r'tau=100.*\[1, 30\]\): no head class'):
            geom.init_from_latents(latents, labels)
        self.assertFalse(geom.is_initialized)

        geom = self.build()
        bad_counts = list(COUNTS)
        bad_counts[3] = 6
        with self.assertRaisesRegex(ValueError,
                                    r'class_counts.*\[3\].*\[5\].*\[6\]'):
            geom.init_from_latents(latents, labels, class_counts=bad_counts)
        with self.assertRaisesRegex(ValueError, r'class_counts.*\(6,\)'):
            geom.init_from_latents(latents, labels, class_counts=COUNTS[:5])
        with self.assertRaisesRegex(ValueError, r'\(N, 4\)'):
            geom.init_from_latents(latents[:, :3], labels)
        with self.assertRaisesRegex(ValueError, r'\(N, 4\)'):
            geom.init_from_latents(latents[:, 0], labels)
        with self.assertRaisesRegex(ValueError, r'`labels`.*\(81,\)'):
            geom.init_from_latents(latents, labels[:-1])
        bad_labels = labels.clone()
        bad_labels[0] = 7
        with self.assertRaisesRegex(ValueError, r'\[0, 6\).*\[0, 7\]'):
            geom.init_from_latents(latents, bad_labels)
        with self.assertRaisesRegex(TypeError, 'integer class indices'):
            geom.init_from_latents(latents, labels.float())
        with self.assertRaisesRegex(ValueError, 'no latent at all'):
            geom.init_from_latents(
                torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
        with self.assertRaisesRegex(RuntimeError, 'before init_from_latents'):
            geom.ema_update(latents, labels)
        geom, _, _ = self.init_geometry()
        with self.assertRaisesRegex(ValueError, r'ema_update.*\(N, 4\)'):
            geom.ema_update(torch.zeros(3, 5), torch.zeros(3).long())

        for bad in (dict(tau=0), dict(lam=1.5), dict(proto_momentum=-0.1),
                    dict(radius_momentum=2.), dict(num_classes=0),
                    dict(latent_dim=2.5)):
            key = next(iter(bad))
            with self.assertRaisesRegex(ValueError, f'`{key}`'):
                self.build(**bad)


class TestRadiusScale(TestCase):
    """``radius_scale``: on which scale r_obs, r_prior and the radius
    target live, checked with a denoiser that is the *true* posterior mean
    of Gaussian classes (so "generated = real")."""

    D, SIGMA, S = 32, 1.5, 2.0  # latent dim, class std, normaliser std

    def _posterior_means(self, scale):
        """Real latents of 2 head classes, their exact E[z0|z_t] at t in
        [0, 500) of the linear schedule, and a geometry fitted on them."""
        from galddc_mm.models.diffusion.noise_schedule import NoiseSchedule
        gen = torch.Generator().manual_seed(0)
        d, sigma, s = self.D, self.SIGMA, self.S
        mu = 4 * torch.randn(2, d, generator=gen)
        labels = torch.arange(2).repeat_interleave(4000)
        z0 = mu[labels] + sigma * torch.randn(len(labels), d, generator=gen)
        geom = MODELS.build(
            dict(type='ClassGeometry', num_classes=2, latent_dim=d, tau=20,
                 radius_momentum=0.05, radius_scale=scale))
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')  # no tail class: intended
            geom.init_from_latents(z0, labels)
        # Standardised space x = (z - m) / s with one s for every dim:
        # class mean a, per-dimension variance v = sigma^2 / s^2.
        m = z0.mean(0)
        a, v = (mu - m) / s, sigma**2 / s**2
        abar_all = NoiseSchedule(1000).alphas_cumprod
        t = torch.randint(0, 500, (len(labels), ), generator=gen)
        abar = abar_all[t][:, None]
        x_t = abar.sqrt() * (z0 - m) / s + (1 - abar).sqrt() * torch.randn(
            z0.shape, generator=gen)
        k = abar.sqrt() * v / (abar * v + 1 - abar)
        x0_hat = a[labels] + k * (x_t - abar.sqrt() * a[labels])
        inv_var = torch.tensor(d * s**-2 / d**2)
        return geom, m + s * x0_hat, labels, abar_all[t], inv_var

    def test_data_target_is_met_by_the_true_posterior_mean(self):
        geom, z0_hat, labels, abar, inv_var = self._posterior_means('data')
        dist = (z0_hat - geom.prototypes[labels]).norm(dim=1)
        target = geom.r_cal[labels] * geom.shrinkage(labels, abar, inv_var)
        # The radius loss's target is the distance the true posterior mean
        # has: averaged over t, within 3% (the isotropic closed form vs
        # the chi mean of finite D).
        self.assertAlmostEqual(float(dist.mean() / target.mean()), 1.0,
                               delta=0.03)
        # r_obs is the real radius and stays there: the scale of r_prior.
        r_real = geom.r_real.clone()
        for i in range(0, len(labels), 256):
            geom.ema_update(z0_hat[i:i + 256], labels[i:i + 256])
        torch.testing.assert_close(geom.r_obs, r_real)
        torch.testing.assert_close(geom.r_prior, r_real.mean())
        # ... which equals the true radius of these head classes.
        true_r = self.SIGMA * np.sqrt(2) * np.exp(
            math.lgamma((self.D + 1) / 2) - math.lgamma(self.D / 2))
        np.testing.assert_allclose(geom.r_obs.numpy(), true_r, rtol=0.02)

    def test_seed_mixes_two_scales(self):
        geom, z0_hat, labels, abar, inv_var = self._posterior_means('seed')
        self.assertIsNone(geom.shrinkage(labels, abar, inv_var))
        dist = (z0_hat - geom.prototypes[labels]).norm(dim=1)
        # Seed: the raw target r_cal = r_real sits far above the distance
        # of the true posterior means, so the loss pushes them outwards...
        self.assertLess(float(dist.mean() / geom.r_cal[labels].mean()), 0.8)
        # ... and the EMA of r_obs settles on the shrunk scale, below the
        # real radius that r_prior keeps.
        for i in range(0, len(labels), 256):
            geom.ema_update(z0_hat[i:i + 256], labels[i:i + 256])
        self.assertLess(float(geom.r_obs.max()),
                        0.8 * float(geom.r_prior))

    def test_posterior_shrinkage_closed_form(self):
        from galddc_mm.models.geometry.class_geometry import (
            posterior_shrinkage,
        )

        # sqrt(abar v / (abar v + 1 - abar)) with v = r^2 * inv_var.
        r, abar, inv_var = torch.tensor([2.0]), torch.tensor([0.5]), \
            torch.tensor(0.25)
        v = 4.0 * 0.25
        expected = (0.5 * v / (0.5 * v + 0.5))**0.5
        self.assertAlmostEqual(
            float(posterior_shrinkage(r, abar, inv_var)), expected, places=6)
        self.assertAlmostEqual(
            float(posterior_shrinkage(r, torch.tensor([1.0]), inv_var)), 1.0,
            places=6)

    def test_bad_radius_scale(self):
        with self.assertRaisesRegex(ValueError, 'radius_scale'):
            MODELS.build(dict(DEFAULT_ARGS, radius_scale='real'))
