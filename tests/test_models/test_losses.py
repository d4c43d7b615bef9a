# Copyright (c) galddc_mm contributors. All rights reserved.
"""GALD-DC losses against per-sample Python-loop references."""
import math
from unittest import TestCase

import torch
from mmpretrain.registry import MODELS

import galddc_mm  # noqa: F401  (registers the losses)


# ----------------------------------------------------------------------
# Independent references: plain loops over samples, written from the
# formulas, sharing no code with the implementation.
# ----------------------------------------------------------------------
def ref_ldm(pred, noise):
    total = 0.
    for i in range(pred.shape[0]):
        total = total + ((noise[i] - pred[i])**2).sum()
    return total / pred.numel()


def ref_proto(z, labels, protos):
    terms = []
    for i in range(z.shape[0]):
        mu = protos[int(labels[i])].detach()
        terms.append(((z[i] - mu)**2).sum() / z.shape[1])
    return sum(terms) / len(terms)


def ref_radius(z, labels, protos, r_cal):
    terms = []
    for i in range(z.shape[0]):
        y = int(labels[i])
        dist = torch.norm(z[i] - protos[y].detach(), p=2)
        terms.append((dist - r_cal[y].detach())**2)
    return sum(terms) / len(terms)


def ref_margin(z, labels, protos, margin, valid=None):
    terms = []
    for i in range(z.shape[0]):
        y = int(labels[i])
        pos = torch.norm(z[i] - protos[y].detach(), p=2)**2
        negs = [
            torch.norm(z[i] - protos[k].detach(), p=2)**2
            for k in range(protos.shape[0])
            if k != y and (valid is None or bool(valid[k]))
        ]
        if not negs:
            terms.append(torch.zeros(()))
            continue
        nearest = negs[0]
        for d in negs[1:]:
            nearest = torch.minimum(nearest, d)
        terms.append(torch.relu(margin + pos - nearest))
    return sum(terms) / len(terms)


def ref_consistency(feats, anchor):
    total = 0.
    for i in range(feats.shape[0]):
        total = total + ((feats[i] - anchor[i].detach())**2).sum()
    return total / feats.numel()


def ref_ce(logits, labels, smooth):
    num_classes = logits.shape[1]
    terms = []
    for i in range(logits.shape[0]):
        row = logits[i]
        log_z = torch.log(torch.exp(row - row.max()).sum()) + row.max()
        loss = 0.
        for k in range(num_classes):
            q = smooth / num_classes + (1 - smooth) * (k == int(labels[i]))
            loss = loss - q * (row[k] - log_z)
        terms.append(loss)
    return sum(terms) / len(terms)


def _leaf(t):
    return t.clone().requires_grad_(True)


class _LossCase(TestCase):

    def setUp(self):
        self.gen = torch.Generator().manual_seed(0)

    def randn(self, *shape, dtype=torch.float32):
        return torch.randn(*shape, generator=self.gen, dtype=dtype)

    def assertClose(self, a, b, atol=1e-5, rtol=1e-5):
        self.assertTrue(
            torch.allclose(a, b, atol=atol, rtol=rtol),
            msg=f'{a} vs {b} (max abs diff {(a - b).abs().max()})')

    def check_grad_vs_ref(self, loss_fn, ref_fn, inputs, atol=1e-5):
        """Value and gradient w.r.t. ``inputs[0]`` against the reference."""
        x1, x2 = _leaf(inputs[0]), _leaf(inputs[0])
        out = loss_fn(x1, *inputs[1:])
        ref = ref_fn(x2, *inputs[1:])
        self.assertEqual(out.shape, torch.Size([]))
        self.assertClose(out, ref, atol=atol)
        out.backward()
        ref.backward()
        self.assertTrue(torch.isfinite(x1.grad).all())
        self.assertClose(x1.grad, x2.grad, atol=atol)
        return out

    def check_empty(self, loss, *inputs):
        x = _leaf(inputs[0])
        out = loss(x, *inputs[1:])
        self.assertEqual(out.shape, torch.Size([]))
        self.assertEqual(float(out.detach()), 0.)
        self.assertIsNotNone(out.grad_fn)
        out.backward()
        self.assertEqual(x.grad.shape, x.shape)
        # Without grad it is a plain zero.
        self.assertEqual(float(loss(*inputs)), 0.)


class TestLDMLoss(_LossCase):

    def test_matches_reference(self):
        loss = MODELS.build(dict(type='LDMLoss', loss_weight=0.5))
        pred, noise = self.randn(6, 5), self.randn(6, 5)
        self.check_grad_vs_ref(loss, lambda p, n: 0.5 * ref_ldm(p, n),
                               [pred, noise])
        # Hand value: all-ones error -> 1 * weight.
        self.assertAlmostEqual(
            float(loss(torch.ones(2, 3), torch.zeros(2, 3))), 0.5)

    def test_empty_and_errors(self):
        loss = MODELS.build(dict(type='LDMLoss'))
        self.check_empty(loss, torch.zeros(0, 4), torch.zeros(0, 4))
        with self.assertRaisesRegex(ValueError, 'same shape'):
            loss(torch.zeros(2, 4), torch.zeros(2, 3))


class TestPrototypeLoss(_LossCase):

    def test_matches_reference(self):
        loss = MODELS.build(dict(type='PrototypeLoss', loss_weight=2.))
        protos = self.randn(7, 6)
        # Classes 0, 5, 6 missing; 1 and 4 have one sample each.
        labels = torch.tensor([2, 2, 3, 1, 3, 4, 2])
        z = self.randn(7, 6)
        self.check_grad_vs_ref(loss, lambda *a: 2. * ref_proto(*a),
                               [z, labels, protos])
        # One sample per class.
        self.check_grad_vs_ref(loss, lambda *a: 2. * ref_proto(*a),
                               [self.randn(7, 6), torch.arange(7), protos])

    def test_no_grad_into_prototypes_and_zero_distance(self):
        loss = MODELS.build(dict(type='PrototypeLoss'))
        protos = self.randn(3, 4).requires_grad_(True)
        labels = torch.tensor([0, 2])
        z = protos.detach()[labels].clone().requires_grad_(True)
        out = loss(z, labels, protos)
        self.assertEqual(out.item(), 0.)
        out.backward()
        self.assertIsNone(protos.grad)
        self.assertTrue(torch.equal(z.grad, torch.zeros_like(z)))

    def test_empty_and_errors(self):
        loss = MODELS.build(dict(type='PrototypeLoss'))
        protos = self.randn(3, 4)
        self.check_empty(loss, torch.zeros(0, 4),
                         torch.zeros(0, dtype=torch.long), protos)
        with self.assertRaisesRegex(ValueError, r'\(K, D\).*D=4'):
            loss(torch.zeros(2, 4), torch.tensor([0, 1]), self.randn(3, 5))
        with self.assertRaisesRegex(ValueError, r'\[0, 3\).*\[0, 3\]'):
            loss(torch.zeros(2, 4), torch.tensor([0, 3]), protos)
        with self.assertRaisesRegex(ValueError, r'shape \(2,\)'):
            loss(torch.zeros(2, 4), torch.tensor([0, 1, 1]), protos)
        with self.assertRaisesRegex(TypeError, 'integer class indices'):
            loss(torch.zeros(2, 4), torch.tensor([0., 1.]), protos)
        with self.assertRaisesRegex(ValueError, '2-D tensor'):
            loss(torch.zeros(2, 4, 1), torch.tensor([0, 1]), protos)


class TestCalibratedRadiusLoss(_LossCase):

    def setUp(self):
        super().setUp()
        self.protos = self.randn(6, 5)
        # Hand-made calibration: classes 0-2 head, 3-5 tail.
        r_obs = torch.tensor([2., 1.5, 1., .2, .1, .3])
        r_prior, lam = 1.5, 0.25
        head = torch.tensor([True, True, True, False, False, False])
        self.r_cal = torch.where(head, r_obs,
                                 lam * r_obs + (1 - lam) * r_prior)

    def test_matches_reference(self):
        loss = MODELS.build(
            dict(type='CalibratedRadiusLoss', loss_weight=0.3))
        ref = lambda *a: 0.3 * ref_radius(*a)  # noqa: E731
        for labels in (
                torch.tensor([0, 4, 4, 1, 0, 2, 5]),  # mixed, class 3 absent
                torch.tensor([0, 1, 2, 2, 0]),  # all head
                torch.tensor([3, 5, 5, 4]),  # all tail
                torch.arange(6),  # one sample per class
        ):
            z = self.protos[labels] + self.randn(len(labels), 5)
            self.check_grad_vs_ref(loss, ref,
                                   [z, labels, self.protos, self.r_cal])

    def test_zero_distance_gradient_is_finite(self):
        loss = MODELS.build(dict(type='CalibratedRadiusLoss'))
        labels = torch.tensor([1, 3, 3])
        z = self.protos[labels].clone()
        z[2] += 1.  # one sample off its prototype
        z.requires_grad_(True)
        out = loss(z, labels, self.protos, self.r_cal)
        # Value: distances 0, 0, sqrt(5).
        r = self.r_cal[labels]
        expected = (r[0]**2 + r[1]**2 + (math.sqrt(5) - r[2])**2) / 3
        self.assertAlmostEqual(out.item(), float(expected), places=5)
        out.backward()
        self.assertTrue(torch.isfinite(z.grad).all())
        self.assertTrue(torch.equal(z.grad[:2], torch.zeros(2, 5)))

    def test_no_grad_into_prototypes_or_radii(self):
        loss = MODELS.build(dict(type='CalibratedRadiusLoss'))
        protos = self.protos.clone().requires_grad_(True)
        r_cal = self.r_cal.clone().requires_grad_(True)
        z = self.randn(4, 5).requires_grad_(True)
        loss(z, torch.tensor([0, 1, 3, 3]), protos, r_cal).backward()
        self.assertIsNone(protos.grad)
        self.assertIsNone(r_cal.grad)
        self.assertIsNotNone(z.grad)

    def test_empty_and_errors(self):
        loss = MODELS.build(dict(type='CalibratedRadiusLoss'))
        self.check_empty(loss, torch.zeros(0, 5),
                         torch.zeros(0, dtype=torch.long), self.protos,
                         self.r_cal)
        with self.assertRaisesRegex(ValueError, r'`r_cal`.*\(6,\)'):
            loss(torch.zeros(2, 5), torch.tensor([0, 1]), self.protos,
                 self.r_cal[:4])


class TestPrototypeMarginLoss(_LossCase):

    def test_matches_reference(self):
        margin = 8.
        loss = MODELS.build(
            dict(type='PrototypeMarginLoss', margin=margin, loss_weight=.7))
        ref = lambda *a: .7 * ref_margin(*a, margin)  # noqa: E731
        protos = 2 * self.randn(6, 4)
        for labels in (
                torch.tensor([0, 4, 4, 1, 0, 2, 5, 5, 1]),  # class 3 absent
                torch.arange(6),  # one sample per class
        ):
            z = protos[labels] + self.randn(len(labels), 4)
            # The case is informative only if some hinges are active and
            # some are not.
            per_sample = [
                float(ref_margin(z[i:i + 1], labels[i:i + 1], protos,
                                 margin)) for i in range(len(labels))
            ]
            self.assertTrue(any(v == 0 for v in per_sample))
            self.assertTrue(any(v > 0 for v in per_sample))
            self.check_grad_vs_ref(loss, ref, [z, labels, protos], atol=1e-4)

    def test_hand_value(self):
        # 1-D latents: prototypes at 0, 1, 10. Sample at 0.2 of class 0:
        # pos 0.04, nearest negative (class 1) 0.64 -> relu(1 + .04 - .64).
        loss = MODELS.build(dict(type='PrototypeMarginLoss', margin=1.))
        protos = torch.tensor([[0.], [1.], [10.]])
        out = loss(torch.tensor([[0.2]]), torch.tensor([0]), protos)
        self.assertAlmostEqual(float(out), 0.4, places=5)

    def test_valid_mask_excludes_negatives(self):
        margin = 1.
        loss = MODELS.build(dict(type='PrototypeMarginLoss', margin=margin))
        protos = self.randn(5, 4)
        protos[4] = 0.  # an empty class: its prototype is a dummy zero
        labels = torch.tensor([0, 1, 2, 3, 0])
        z = 0.05 * self.randn(5, 4)  # all samples next to the dummy
        valid = torch.tensor([True, True, True, True, False])
        ref = lambda *a: ref_margin(*a, margin, valid)  # noqa: E731
        out = self.check_grad_vs_ref(
            lambda *a: loss(*a, valid_mask=valid), ref, [z, labels, protos],
            atol=1e-4)
        unmasked = loss(z, labels, protos)
        self.assertClose(unmasked, ref_margin(z, labels, protos, margin),
                         atol=1e-4)
        self.assertGreater(unmasked.item(), out.item() + 1e-3)

    def test_no_negative_gives_zero(self):
        loss = MODELS.build(dict(type='PrototypeMarginLoss', margin=3.))
        # K = 1.
        z = self.randn(4, 3).requires_grad_(True)
        out = loss(z, torch.zeros(4, dtype=torch.long), self.randn(1, 3))
        self.assertEqual(out.item(), 0.)
        out.backward()
        self.assertTrue(torch.equal(z.grad, torch.zeros(4, 3)))
        # Only the own class valid for some samples: they contribute 0 but
        # count in the mean.
        protos = torch.tensor([[0., 0.], [3., 0.], [0., 3.]])
        valid = torch.tensor([True, False, True])
        z = torch.tensor([[0., 0.], [3., 0.]], requires_grad=True)
        out = loss(z, torch.tensor([0, 1]), protos, valid_mask=valid)
        # Sample 0: relu(3 + 0 - 9) = 0; sample 1 (class 1): negatives
        # {0, 2} -> d = 9 and 18 -> relu(3 + 0 - 9) = 0.
        self.assertEqual(out.item(), 0.)
        valid = torch.tensor([True, False, False])
        out = loss(z, torch.tensor([0, 1]), protos, valid_mask=valid)
        # Sample 0 has no valid negative (0); sample 1: relu(3 - 9) = 0.
        self.assertEqual(out.item(), 0.)
        out = loss(torch.tensor([[0., 0.], [1., 0.]]), torch.tensor([0, 1]),
                   protos, valid)
        # Sample 1 at x=1: pos 4, negative class 0 at 1 -> relu(3+4-1)=6.
        self.assertAlmostEqual(float(out), 3., places=5)

    def test_zero_distance_and_no_grad_into_prototypes(self):
        loss = MODELS.build(dict(type='PrototypeMarginLoss', margin=50.))
        protos = self.randn(4, 3).requires_grad_(True)
        labels = torch.tensor([0, 1, 1, 3])
        z = protos.detach()[labels].clone().requires_grad_(True)
        z2 = z.detach().clone().requires_grad_(True)
        out = loss(z, labels, protos)
        out.backward()
        self.assertIsNone(protos.grad)
        self.assertTrue(torch.isfinite(z.grad).all())
        ref = ref_margin(z2, labels, protos, 50.)
        ref.backward()
        self.assertClose(out, ref, atol=1e-4)
        self.assertClose(z.grad, z2.grad, atol=1e-4)

    def test_int32_labels(self):
        loss = MODELS.build(dict(type='PrototypeMarginLoss', margin=4.))
        protos, z = self.randn(4, 3), self.randn(6, 3)
        labels = torch.tensor([0, 1, 1, 3, 2, 0])
        self.assertClose(
            loss(z, labels.int(), protos), loss(z, labels, protos))
        self.assertClose(
            loss(z, labels.int(), protos), ref_margin(z, labels, protos, 4.),
            atol=1e-5)

    def test_promotes_dtype(self):
        loss = MODELS.build(dict(type='PrototypeMarginLoss', margin=4.))
        protos = self.randn(4, 3)
        z, labels = self.randn(5, 3, dtype=torch.float64), torch.arange(5) % 4
        out = loss(z, labels, protos)
        self.assertEqual(out.dtype, torch.float64)
        self.assertClose(out, ref_margin(z, labels, protos.double(), 4.),
                         atol=1e-10)

    def test_empty_and_errors(self):
        loss = MODELS.build(dict(type='PrototypeMarginLoss'))
        protos = self.randn(3, 4)
        self.check_empty(loss, torch.zeros(0, 4),
                         torch.zeros(0, dtype=torch.long), protos)
        with self.assertRaisesRegex(ValueError, r'`valid_mask`.*\(3,\)'):
            loss(torch.zeros(2, 4), torch.tensor([0, 1]), protos,
                 torch.tensor([True, False]))
        with self.assertRaisesRegex(ValueError, r'`valid_mask`.*bool'):
            loss(torch.zeros(2, 4), torch.tensor([0, 1]), protos,
                 torch.tensor([1, 0, 1]))
        with self.assertRaisesRegex(ValueError, 'margin.*>= 0'):
            MODELS.build(dict(type='PrototypeMarginLoss', margin=-1.))


class TestFeatureConsistencyLoss(_LossCase):

    def test_matches_reference_and_anchor_detached(self):
        loss = MODELS.build(
            dict(type='FeatureConsistencyLoss', loss_weight=3.))
        anchor = self.randn(5, 4).requires_grad_(True)
        feats = self.randn(5, 4)
        self.check_grad_vs_ref(loss, lambda *a: 3. * ref_consistency(*a),
                               [feats, anchor])
        self.assertIsNone(anchor.grad)

    def test_empty_and_errors(self):
        loss = MODELS.build(dict(type='FeatureConsistencyLoss'))
        self.check_empty(loss, torch.zeros(0, 4), torch.zeros(0, 4))
        with self.assertRaisesRegex(ValueError, 'same shape'):
            loss(torch.zeros(3, 4), torch.zeros(2, 4))


class TestPseudoLatentCELoss(_LossCase):

    def test_matches_reference(self):
        for smooth in (0., 0.1):
            loss = MODELS.build(
                dict(
                    type='PseudoLatentCELoss',
                    loss_weight=0.5,
                    label_smooth_val=smooth))
            logits = 3 * self.randn(6, 5)
            labels = torch.tensor([0, 4, 4, 1, 0, 2])
            self.check_grad_vs_ref(
                loss, lambda x, y, s=smooth: 0.5 * ref_ce(x, y, s),
                [logits, labels])

    def test_empty_and_errors(self):
        loss = MODELS.build(dict(type='PseudoLatentCELoss'))
        self.check_empty(loss, torch.zeros(0, 3),
                         torch.zeros(0, dtype=torch.long))
        with self.assertRaisesRegex(ValueError, r'\(B, K\)'):
            loss(torch.zeros(3), torch.tensor([0, 1, 2]))
        with self.assertRaisesRegex(ValueError, r'\[0, 3\)'):
            loss(torch.zeros(2, 3), torch.tensor([0, 5]))
        with self.assertRaisesRegex(ValueError, 'label_smooth_val'):
            MODELS.build(
                dict(type='PseudoLatentCELoss', label_smooth_val=1.))


class TestGeometryUnderAutocast(TestCase):
    """Distances, radii, margin and EMA in float32 under any autocast.

    Latents of norm ~20 in 2048 dimensions, prototypes whose squared
    distances (~1.08) just clear the margin of 1: each latent sits on its
    own prototype, so float32 gives a hinge of exactly 0, while the
    ||z||^2 - 2 z.mu + ||mu||^2 expansion in bf16/fp16 (the optimiser's
    autocast, where stage 2 runs) breaches it (0.75 in bf16, 0.09 in fp16
    without the float32 context).
    """

    def _case(self):
        g = torch.Generator().manual_seed(0)
        centre = torch.randn(2048, generator=g)
        offsets = torch.randn(8, 2048, generator=g)
        protos = centre / centre.norm() * 20 + 0.75 * offsets / offsets.norm(
            dim=1, keepdim=True)
        labels = torch.arange(32) % 8
        z = protos[labels] + 0.01 * torch.randn(32, 2048, generator=g)
        z[:8] = protos  # distance exactly 0 to the own prototype
        return z, labels, protos, torch.full((8, ), 0.3)

    def _values(self, dtype=None):
        from galddc_mm.models.geometry import ClassGeometry
        z, labels, protos, r_cal = self._case()
        losses = dict(
            proto=MODELS.build(dict(type='PrototypeLoss')),
            radius=MODELS.build(dict(type='CalibratedRadiusLoss')),
            margin=MODELS.build(dict(type='PrototypeMarginLoss', margin=1.)))
        geometry = ClassGeometry(num_classes=8, latent_dim=2048, tau=3,
                                 proto_momentum=0.5, radius_momentum=0.5,
                                 radius_scale='seed')  # r_obs in the EMA
        geometry.init_from_latents(protos[labels], labels)
        with torch.autocast('cpu', dtype=dtype or torch.bfloat16,
                            enabled=dtype is not None):
            out = dict(
                proto=losses['proto'](z, labels, protos),
                radius=losses['radius'](z, labels, protos, r_cal),
                margin=losses['margin'](z, labels, protos))
            geometry.ema_update(z, labels)
        out['ema_prototypes'] = geometry.prototypes
        out['ema_radii'] = geometry.r_obs
        return out

    def test_bf16_and_fp16_equal_fp32(self):
        ref = self._values()
        self.assertEqual(float(ref['margin']), 0.)
        for dtype in (torch.bfloat16, torch.float16):
            got = self._values(dtype)
            for key, value in ref.items():
                self.assertEqual(got[key].dtype, torch.float32, key)
                torch.testing.assert_close(
                    got[key], value, rtol=0, atol=1e-4,
                    msg=f'{key} under {dtype}')
