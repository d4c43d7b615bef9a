# Copyright (c) galddc_mm contributors. All rights reserved.
import math
from typing import List, Optional

import numpy as np
from mmpretrain.datasets import BaseDataset
from mmpretrain.registry import DATASETS

from .long_tail import LongTailMixin, long_tail_counts

SPLITS = ('train', 'val', 'test')


@DATASETS.register_module()
class GaussianLatentLT(LongTailMixin, BaseDataset):
    r"""Long-tailed latents drawn from Gaussians whose truth is known.

    The known-answer testbed of GALD-DC's mechanism: the samples *are*
    latents (no encoder is learned), every class has the **same** true
    spread, and the training counts are long-tailed, so a tail class's few
    samples under-state a spread that is known exactly.

    Class :math:`c` is an isotropic Gaussian :math:`N(\mu_c, \sigma^2 I_D)`
    or, with ``components > 1``, an equal mixture of
    :math:`N(\mu_c + o_{c,j}, \sigma^2 I_D)` with offsets of norm
    ``component_offset`` summing to zero. Means are random directions of
    norm ``mean_norm`` (pairwise distances about ``mean_norm * sqrt(2)``).
    Its true covariance is
    :math:`\sigma^2 I + \frac{1}{m}\sum_j o_{c,j} o_{c,j}^\top` and its true
    radius :math:`E\|x - \mu_c\|` (:meth:`true_radius`, by Monte Carlo for
    mixtures, in closed form otherwise:
    :math:`\sigma \sqrt{2}\,\Gamma(\frac{D+1}{2}) / \Gamma(\frac{D}{2})`).

    Training counts follow the exponential profile of the other LT sets,
    :math:`n_c = \lfloor n_{max} (1/IF)^{c/(K-1)} \rfloor`, at least
    ``min_count``; val and test are class-balanced and large, drawn from
    the same truth. Everything is deterministic given ``seed`` (the truth
    and all three splits; the split's samples do not depend on the other
    splits' sizes).

    ``metainfo`` carries ``class_counts`` (training counts, as every LT
    set) and the truth: ``true_means`` (K x D), ``true_spread``,
    ``component_offsets`` (K x m x D). Items are ``dict(latent=float32
    array (D,), gt_label=int)``; ``PackInputs(input_key='latent')`` packs
    them, and an identity encoder (``LatentPassThrough``) hands them to the
    model unchanged.

    Args:
        split (str): ``'train'``, ``'val'`` or ``'test'``.
        num_classes (int): ``K``. Defaults to 20.
        latent_dim (int): ``D``. Defaults to 64.
        imbalance_factor (float): ``n_max / n_min`` of the training split.
            Defaults to 20.
        n_max (int): Training samples of class 0. Defaults to 200.
        min_count (int): Fewest training samples of a class. Defaults to 2.
        spread (float): The true per-dimension std :math:`\sigma`.
            Defaults to 1.0.
        mean_norm (float): Norm of the class means. Defaults to 2.5.
        components (int): Mixture components per class. Defaults to 1.
        component_offset (float): Norm of each component's offset.
            Defaults to 1.0.
        val_per_class (int): Defaults to 100.
        test_per_class (int): Defaults to 500.
        seed (int): Seed of the truth and the samples. Defaults to 0.
        **kwargs: Other arguments of :class:`mmpretrain.datasets.BaseDataset`
            (``pipeline``, ``test_mode``, ...).
    """

    def __init__(self,
                 split: str = 'train',
                 num_classes: int = 20,
                 latent_dim: int = 64,
                 imbalance_factor: float = 20.,
                 n_max: int = 200,
                 min_count: int = 2,
                 spread: float = 1.0,
                 mean_norm: float = 2.5,
                 components: int = 1,
                 component_offset: float = 1.0,
                 val_per_class: int = 100,
                 test_per_class: int = 500,
                 seed: int = 0,
                 metainfo: Optional[dict] = None,
                 **kwargs):
        if split not in SPLITS:
            raise ValueError(f'Unknown split {split!r} for GaussianLatentLT; '
                             f'choose one of {SPLITS}.')
        for name, value in (('num_classes', num_classes),
                            ('latent_dim', latent_dim), ('n_max', n_max),
                            ('min_count', min_count),
                            ('components', components)):
            if int(value) != value or value < 1:
                raise ValueError(f'{name} must be a positive integer, got '
                                 f'{value!r}.')
        if not spread > 0:
            raise ValueError(f'spread must be > 0, got {spread!r}.')
        self.split = split
        self.num_classes = int(num_classes)
        self.latent_dim = int(latent_dim)
        self.spread = float(spread)
        self.components = int(components)
        self.per_class = dict(val=int(val_per_class),
                              test=int(test_per_class))
        self.seed = int(seed)
        counts = np.maximum(
            long_tail_counts(n_max, self.num_classes, imbalance_factor),
            min_count)
        truth = np.random.default_rng([self.seed, 0])
        means = truth.normal(size=(self.num_classes, self.latent_dim))
        self.true_means = (means / np.linalg.norm(means, axis=1,
                                                  keepdims=True) *
                           mean_norm)
        offsets = truth.normal(
            size=(self.num_classes, self.components, self.latent_dim))
        if self.components > 1:
            offsets -= offsets.mean(axis=1, keepdims=True)
            offsets *= component_offset / np.linalg.norm(
                offsets, axis=2, keepdims=True)
        else:
            offsets[:] = 0
        self.component_offsets = offsets
        self._counts = counts
        cls_meta = dict(
            classes=tuple(f'class_{c}' for c in range(self.num_classes)),
            true_means=self.true_means.tolist(),
            true_spread=self.spread,
            component_offsets=self.component_offsets.tolist())
        cls_meta.update(metainfo or {})
        super().__init__(
            ann_file='', metainfo=cls_meta, data_root='', **kwargs)
        self._set_class_counts(counts)

    def sample(self, cls: int, num: int, rng: np.random.Generator
               ) -> np.ndarray:
        """``num`` draws of class ``cls`` from its true distribution."""
        comp = rng.integers(self.components, size=num)
        centre = self.true_means[cls] + self.component_offsets[cls][comp]
        return centre + self.spread * rng.normal(size=(num,
                                                       self.latent_dim))

    def true_covariance(self, cls: int) -> np.ndarray:
        """The true covariance of class ``cls``, ``(D, D)``."""
        offsets = self.component_offsets[cls]
        return (self.spread**2 * np.eye(self.latent_dim) +
                offsets.T @ offsets / self.components)

    def true_radius(self, cls: int = 0, num: int = 200000) -> float:
        """:math:`E\\|x - \\mu_c\\|` under the truth."""
        if self.components == 1:
            d = self.latent_dim
            return self.spread * math.sqrt(2) * math.exp(
                math.lgamma((d + 1) / 2) - math.lgamma(d / 2))
        rng = np.random.default_rng([self.seed, 3, cls])
        draws = self.sample(cls, num, rng) - self.true_means[cls]
        return float(np.linalg.norm(draws, axis=1).mean())

    def load_data_list(self) -> List[dict]:
        """The split's latents, class by class.

        Returns:
            list[dict]: ``dict(latent=float32 (D,), gt_label=int)``.
        """
        stream = SPLITS.index(self.split) + 1
        data = []
        for c in range(self.num_classes):
            n = (int(self._counts[c])
                 if self.split == 'train' else self.per_class[self.split])
            rng = np.random.default_rng([self.seed, stream, c])
            for z in self.sample(c, n, rng).astype(np.float32):
                data.append(dict(latent=z, gt_label=c))
        return data
