# Copyright (c) galddc_mm contributors. All rights reserved.
"""The known-answer testbed data set: counts, truth and determinism."""
import math
from unittest import TestCase

import numpy as np

from galddc_mm.datasets import GaussianLatentLT


def _make(split='train', **kwargs):
    cfg = dict(num_classes=6, latent_dim=8, imbalance_factor=20, n_max=200,
               min_count=2, spread=1.5, mean_norm=3.0, seed=3,
               val_per_class=50, test_per_class=400)
    cfg.update(kwargs)
    return GaussianLatentLT(split=split, **cfg)


def _arrays(ds):
    x = np.stack([ds.get_data_info(i)['latent'] for i in range(len(ds))])
    y = np.array([ds.get_data_info(i)['gt_label'] for i in range(len(ds))])
    return x, y


class TestGaussianLatentLT(TestCase):

    def test_train_counts_follow_the_profile(self):
        ds = _make()
        # n_c = floor(200 * (1/20)^(c/5)), at least 2: written out here.
        expected = [max(2, math.floor(200 * (1 / 20)**(c / 5)))
                    for c in range(6)]
        _, y = _arrays(ds)
        self.assertEqual(np.bincount(y, minlength=6).tolist(), expected)
        self.assertEqual(list(ds.metainfo['class_counts']), expected)
        # IF 100 with min_count 2: the last class has 2 samples.
        ds = _make(imbalance_factor=100)
        self.assertEqual(int(ds.metainfo['class_counts'][-1]), 2)

    def test_test_split_is_balanced_and_large(self):
        _, y = _arrays(_make('test'))
        self.assertEqual(np.bincount(y).tolist(), [400] * 6)

    def test_sample_moments_converge_to_the_truth(self):
        ds = _make()
        rng = np.random.default_rng(0)
        n, d, sigma = 20000, 8, 1.5
        for cls in (0, 5):
            x = ds.sample(cls, n, rng)
            mu = np.asarray(ds.metainfo['true_means'][cls])
            # Mean: each coordinate's error has std sigma / sqrt(n); 5 std.
            self.assertLess(
                np.abs(x.mean(0) - mu).max(), 5 * sigma / math.sqrt(n))
            # Covariance: sigma^2 I; an entry's error has std about
            # sigma^2 sqrt(2 / n) on the diagonal, sigma^2 / sqrt(n) off it.
            cov = np.cov(x, rowvar=False)
            np.testing.assert_allclose(ds.true_covariance(cls),
                                       sigma**2 * np.eye(d))
            self.assertLess(
                np.abs(cov - sigma**2 * np.eye(d)).max(),
                6 * sigma**2 * math.sqrt(2 / n))
            # Radius: the chi mean, sigma sqrt(2) Gamma(5) / Gamma(4).
            chi_mean = sigma * math.sqrt(2) * math.exp(
                math.lgamma(4.5) - math.lgamma(4))
            self.assertAlmostEqual(ds.true_radius(cls), chi_mean, places=6)
            r = np.linalg.norm(x - mu, axis=1)
            self.assertLess(abs(r.mean() - chi_mean), 5 * r.std() /
                            math.sqrt(n))

    def test_training_latents_come_from_the_truth(self):
        # Pooled over classes, standardised residuals are N(0, 1).
        ds = _make(imbalance_factor=2)
        x, y = _arrays(ds)
        mu = np.asarray(ds.metainfo['true_means'])[y]
        z = ((x - mu) / 1.5).ravel()
        self.assertLess(abs(z.mean()), 5 / math.sqrt(z.size))
        self.assertLess(abs(z.var() - 1), 5 * math.sqrt(2 / z.size))

    def test_mixture_covariance(self):
        ds = _make(components=2, component_offset=2.0)
        rng = np.random.default_rng(1)
        x = ds.sample(1, 40000, rng)
        cov = ds.true_covariance(1)
        # sigma^2 I plus the offsets' second moment: its trace adds 2^2.
        self.assertAlmostEqual(np.trace(cov), 8 * 1.5**2 + 4.0, places=6)
        self.assertLess(np.abs(np.cov(x, rowvar=False) - cov).max(), 0.1)

    def test_deterministic_and_splits_independent(self):
        a, _ = _arrays(_make())
        b, _ = _arrays(_make())
        np.testing.assert_array_equal(a, b)
        c, _ = _arrays(_make(seed=4))
        self.assertFalse(np.allclose(a[:5], c[:5]))
        # The truth does not depend on the split or the imbalance.
        np.testing.assert_array_equal(
            _make('test').metainfo['true_means'],
            _make(imbalance_factor=100).metainfo['true_means'])
