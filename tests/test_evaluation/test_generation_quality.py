# Copyright (c) galddc_mm contributors. All rights reserved.
"""Generation-quality metrics against plain references on small inputs."""
import math
from unittest import TestCase

import numpy as np
import torch
from scipy import linalg

from galddc_mm.evaluation.generation_quality import (
    class_moments,
    frechet_distance_diag,
    generation_report,
    knn_radii,
    nearest_same_class,
    precision_recall,
)


def _frechet_closed_form(mu1, cov1, mu2, cov2):
    """||mu1 - mu2||^2 + Tr(C1 + C2 - 2 (C1 C2)^(1/2)), full matrices."""
    covmean = linalg.sqrtm(cov1 @ cov2).real
    return float(((mu1 - mu2)**2).sum() + np.trace(cov1 + cov2 - 2 * covmean))


class TestFrechetDistance(TestCase):

    def test_equals_the_closed_form_for_diagonal_gaussians(self):
        rng = np.random.default_rng(0)
        for _ in range(5):
            mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
            var1, var2 = rng.uniform(0.1, 4, 6), rng.uniform(0.1, 4, 6)
            got = frechet_distance_diag(*map(torch.tensor,
                                             (mu1, var1, mu2, var2)))
            want = _frechet_closed_form(mu1, np.diag(var1), mu2,
                                        np.diag(var2))
            self.assertAlmostEqual(float(got), want, places=8)

    def test_class_moments_are_per_class_estimates(self):
        g = torch.Generator().manual_seed(0)
        labels = torch.tensor([0, 2, 0, 2, 2, 0, 3])
        z = torch.randn(7, 4, generator=g)
        counts, means, variances, radii = class_moments(z, labels, 5)
        self.assertEqual(counts.tolist(), [3, 0, 3, 1, 0])
        for c in (0, 2):
            zc = z[labels == c].double()
            torch.testing.assert_close(means[c], zc.mean(0))
            torch.testing.assert_close(variances[c], zc.var(0))
            torch.testing.assert_close(
                radii[c], (zc - zc.mean(0)).norm(dim=1).mean())
        # One sample: no variance, no radius; no sample: zeros.
        self.assertEqual(float(variances[3].abs().sum()), 0.)
        self.assertEqual(float(radii[3]), 0.)
        self.assertEqual(float(means[4].abs().sum()), 0.)


def _loop_coverage(queries, support, k):
    """Per-sample loop of Kynkaenniemi et al.'s manifold membership."""
    radii = []
    for i in range(len(support)):
        d = sorted(
            float(np.linalg.norm(support[i] - support[j]))
            for j in range(len(support)) if j != i)
        radii.append(d[k - 1])
    inside = 0
    for q in queries:
        inside += any(
            np.linalg.norm(q - support[j]) <= radii[j]
            for j in range(len(support)))
    return inside / len(queries)


class TestPrecisionRecall(TestCase):

    def test_equals_a_per_sample_loop(self):
        g = torch.Generator().manual_seed(1)
        real = torch.randn(40, 3, generator=g, dtype=torch.float64)
        gen = 1.5 * torch.randn(30, 3, generator=g,
                                dtype=torch.float64) + 0.5
        for k in (1, 3):
            out = precision_recall(real, gen, k=k, chunk=7)
            self.assertAlmostEqual(
                out['precision'], _loop_coverage(gen.numpy(), real.numpy(),
                                                 k))
            self.assertAlmostEqual(
                out['recall'], _loop_coverage(real.numpy(), gen.numpy(), k))
        # A knn radius is the k-th nearest *other* point.
        radii = knn_radii(real, 1)
        brute = torch.cdist(real, real).fill_diagonal_(math.inf).amin(1)
        torch.testing.assert_close(radii, brute)

    def test_undefined_without_enough_points(self):
        out = precision_recall(torch.randn(3, 2), torch.randn(10, 2), k=3)
        self.assertIsNone(out['precision'])
        self.assertIsNotNone(out['recall'])


class TestMemorisation(TestCase):

    def test_nearest_same_class_equals_brute_force(self):
        g = torch.Generator().manual_seed(2)
        real = torch.randn(12, 5, generator=g)
        real_labels = torch.tensor([0, 1, 1, 2, 0, 0, 1, 2, 2, 0, 1, 0])
        gen = torch.randn(9, 5, generator=g)
        gen_labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 0, 3])
        got = nearest_same_class(gen, gen_labels, real, real_labels, chunk=4)
        for i in range(9):
            same = [
                float((gen[i] - real[j]).norm()) for j in range(12)
                if real_labels[j] == gen_labels[i]
            ]
            want = min(same) if same else math.inf
            self.assertAlmostEqual(float(got[i]), want, places=5)


class TestGenerationReport(TestCase):

    def _report(self, **kwargs):
        g = torch.Generator().manual_seed(3)
        counts = torch.tensor([150, 40, 10, 1])
        real_labels = torch.repeat_interleave(torch.arange(4), counts)
        protos = 10 * torch.randn(4, 6, generator=g)
        real = protos[real_labels] + torch.randn(
            real_labels.numel(), 6, generator=g)
        _, _, _, r_real = class_moments(real, real_labels, 4)
        gen_labels = torch.arange(4).repeat_interleave(8)
        gen = protos[gen_labels] + 0.5 * torch.randn(32, 6, generator=g)
        # The last class's samples all sit on its single real latent.
        gen[gen_labels == 3] = real[real_labels == 3]
        logits = -torch.cdist(gen, protos)
        r_cal = r_real.float().clone()
        r_cal[2:] = 2 * r_cal[2:]
        return generation_report(
            gen, gen_labels, logits, counts, r_real.float(), r_cal, protos,
            tau=20, real=real, real_labels=real_labels, **kwargs)

    def test_rows_and_undefined_values(self):
        report = self._report()
        rows = {r['cls']: r for r in report['per_class']}
        self.assertEqual([rows[c]['band'] for c in range(4)],
                         ['many', 'medium', 'few', 'few'])
        self.assertEqual([rows[c]['split'] for c in range(4)],
                         ['head', 'head', 'tail', 'tail'])
        # Radius ratios against the per-class definitions.
        for c in range(3):
            self.assertAlmostEqual(
                rows[c]['radius_to_real'],
                rows[c]['gen_radius'] / rows[c]['r_real'])
            self.assertAlmostEqual(
                rows[c]['radius_to_cal'],
                rows[c]['gen_radius'] / rows[c]['r_cal'])
        # A one-image class: r_real = 0, so every ratio is undefined, never
        # 1e13, and the band means leave it out.
        for key in ('radius_to_real', 'radius_to_cal', 'proto_dist_rel',
                    'fd', 'nn_real_rel', 'memorised'):
            self.assertIsNone(rows[3][key], key)
        self.assertAlmostEqual(report['summary']['tail']['radius_to_real'],
                               rows[2]['radius_to_real'])
        self.assertEqual(report['summary']['all']['gen_acc'], 100.)
        self.assertEqual(report['nonfinite'], 0)
        self.assertEqual(report['fd_covariance'], 'diagonal')

    def test_memorisation_of_a_collapsed_tail_class(self):
        g = torch.Generator().manual_seed(4)
        counts = torch.tensor([30, 5])
        real_labels = torch.repeat_interleave(torch.arange(2), counts)
        real = torch.randn(35, 4, generator=g)
        _, _, _, r_real = class_moments(real, real_labels, 2)
        gen_labels = torch.tensor([0] * 6 + [1] * 6)
        gen = torch.randn(12, 4, generator=g)
        tail_real = real[real_labels == 1]
        # Four of six tail samples are copies (plus tiny noise) of real ones.
        gen[6:10] = tail_real[:4] + 1e-4
        report = generation_report(
            gen, gen_labels, torch.zeros(12, 2), counts, r_real.float(),
            r_real.float(), torch.zeros(2, 4), tau=20, real=real,
            real_labels=real_labels)
        row = report['per_class'][1]
        self.assertAlmostEqual(row['memorised'], 4 / 6)
        brute = [
            float((gen[i] - tail_real).norm(dim=1).min()) / float(r_real[1])
            for i in range(6, 12)
        ]
        self.assertAlmostEqual(row['nn_real_rel'], sum(brute) / 6, places=5)

    def test_nonfinite_latents_are_counted(self):
        report = self._report()
        self.assertEqual(report['nonfinite'], 0)
        g = torch.Generator().manual_seed(5)
        gen = torch.randn(8, 3, generator=g)
        gen[2, 1] = float('nan')
        report = generation_report(
            gen, torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]), torch.zeros(8, 2),
            torch.tensor([30, 5]), torch.ones(2), torch.ones(2),
            torch.zeros(2, 3), tau=20)
        self.assertEqual(report['nonfinite'], 1)
        self.assertIsNone(report['per_class'][0]['fd'])  # no real latents
