# Copyright (c) galddc_mm contributors. All rights reserved.
"""The API every long-tailed data set of this package shares.

A long-tailed data set exposes, for **every** split, the number of
*training* images of each class. The evaluation metric needs training
frequencies (never test frequencies) to sort classes into many / medium /
few-shot bands and into head / tail, and the GALD-DC model needs them to
tell head from tail classes.
"""
from typing import Sequence, Union

import numpy as np
import torch

#: Band names in the order used everywhere (metric keys, CSV columns).
BANDS = ('many', 'medium', 'few')


def long_tail_counts(n_max: float, num_classes: int,
                     imbalance_factor: float) -> np.ndarray:
    r"""Per-class image counts of an exponential long-tail profile.

    The profile of Cao et al., "Learning Imbalanced Datasets with
    Label-Distribution-Aware Margin Loss" (LDAM-DRW, NeurIPS 2019):

    .. math::

        n_i = \left\lfloor n_{max} \cdot
              \left(\frac{1}{IF}\right)^{\frac{i}{C - 1}} \right\rfloor,
        \qquad i = 0, \dots, C - 1,

    so class 0 keeps ``n_max`` images and class ``C - 1`` keeps
    ``n_max / IF``. The expression is evaluated in the same order as the
    LDAM-DRW code (``img_max * (imb_factor ** (i / (C - 1.0)))`` with
    ``imb_factor = 1 / IF``) so that the truncation to ``int`` gives the
    very same counts (e.g. 12,406 images for CIFAR-10-LT with IF 100).

    Args:
        n_max (float): Images of the most frequent class. May be a float
            (LDAM-DRW uses ``len(train) / C``).
        num_classes (int): Number of classes C (>= 1).
        imbalance_factor (float): Ratio IF = n_max / n_min (>= 1). 1 means
            balanced.

    Returns:
        np.ndarray: Counts of shape ``(C,)``, dtype int64, non-increasing.

    Examples:
        >>> long_tail_counts(5000, 10, 100).sum()
        12406
    """
    if num_classes < 1:
        raise ValueError(
            f'num_classes must be >= 1, but got {num_classes}.')
    if imbalance_factor < 1:
        raise ValueError(
            f'imbalance_factor must be >= 1 (n_max / n_min), but got '
            f'{imbalance_factor}. Use 1 for a balanced set, 100 for the '
            'usual CIFAR-LT setting.')
    if n_max < 0:
        raise ValueError(f'n_max must be >= 0, but got {n_max}.')
    if num_classes == 1:
        return np.array([int(n_max)], dtype=np.int64)
    imb_factor = 1.0 / imbalance_factor
    counts = [
        int(n_max * (imb_factor**(i / (num_classes - 1.0))))
        for i in range(num_classes)
    ]
    return np.asarray(counts, dtype=np.int64)


def class_bands(class_counts: Union[Sequence[int], np.ndarray],
                many_thr: int = 100,
                few_thr: int = 20) -> np.ndarray:
    """Sort classes into the many / medium / few-shot bands.

    The bands of Liu et al., "Large-Scale Long-Tailed Recognition in an
    Open World" (OLTR, CVPR 2019): many-shot ``n > many_thr``, few-shot
    ``n < few_thr``, medium-shot ``few_thr <= n <= many_thr``, where ``n``
    is the number of *training* images of the class.

    Args:
        class_counts (Sequence[int] | np.ndarray): Training images per
            class, shape ``(K,)``.
        many_thr (int): Classes with more training images are many-shot.
            Defaults to 100.
        few_thr (int): Classes with fewer training images are few-shot.
            Defaults to 20.

    Returns:
        np.ndarray: Band name (one of :data:`BANDS`) of each class, shape
        ``(K,)``.
    """
    if few_thr > many_thr:
        raise ValueError(
            f'few_thr ({few_thr}) must not exceed many_thr ({many_thr}).')
    counts = np.asarray(class_counts)
    bands = np.full(counts.shape, 'medium', dtype=object)
    bands[counts > many_thr] = 'many'
    bands[counts < few_thr] = 'few'
    return bands.astype(str)



def head_tail_masks(class_counts, tau):
    """Split classes into head and tail by their training counts.

    Head classes have ``n >= tau`` training images, tail classes
    ``0 < n < tau``; a class without training images is neither (it has no
    latent to describe it and no accuracy to report by band). The one
    definition of head and tail in this package: the class geometry, the
    metric and the generation report all use it.

    Args:
        class_counts (np.ndarray | torch.Tensor | Sequence[int]): Training
            images per class, shape ``(K,)``. A tensor stays a tensor (on
            its device), anything else becomes an ``np.ndarray``.
        tau (int | float): The head/tail threshold.

    Returns:
        tuple: ``(head, tail)``, two bool masks of shape ``(K,)`` of the
        same kind as ``class_counts``.
    """
    if not isinstance(class_counts, torch.Tensor):
        class_counts = np.asarray(class_counts)
    head = class_counts >= tau
    tail = (class_counts > 0) & (class_counts < tau)
    return head, tail

class LongTailMixin:
    """Training class counts for every split of a long-tailed data set.

    Mix into a :class:`mmpretrain.datasets.BaseDataset` subclass *before*
    the base class (``class X(LongTailMixin, BaseDataset)``). The subclass
    calls :meth:`_set_class_counts` once it knows the training counts
    (normally at the end of its ``__init__``, so the counts exist even with
    ``lazy_init=True``). They are then available as

    * ``dataset.get_class_counts()``: ``np.ndarray`` of shape ``(K,)``,
      dtype int64;
    * ``dataset.metainfo['class_counts']``: the same numbers as a list of
      Python ints, which mmengine's ``ValLoop``/``TestLoop`` hand to the
      metrics as ``metric.dataset_meta['class_counts']``. A plain list (not
      an array) because the runner stores the training set's metainfo in
      every checkpoint, and ``torch.load(weights_only=True)`` refuses numpy
      objects.

    For the val and test splits the counts are those of the *training*
    split, never of the split itself.
    """

    def _set_class_counts(self, counts: Union[Sequence[int],
                                              np.ndarray]) -> None:
        """Store the training class counts in the metainfo.

        Args:
            counts (Sequence[int] | np.ndarray): Training images per class,
                shape ``(K,)``.
        """
        counts = np.asarray(counts)
        if counts.ndim != 1:
            raise ValueError('class counts must be one-dimensional (K,), '
                             f'but got shape {counts.shape}.')
        if (counts < 0).any():
            raise ValueError('class counts must be non-negative.')
        self._metainfo['class_counts'] = [int(c) for c in counts]

    def get_class_counts(self) -> np.ndarray:
        """Number of *training* images of each class.

        Returns:
            np.ndarray: Shape ``(K,)``, dtype int64. The same for the train,
            val and test split of one data set configuration.
        """
        counts = self._metainfo.get('class_counts')
        if counts is None:
            raise RuntimeError(
                f'{type(self).__name__} has no training class counts yet; '
                'subclasses of LongTailMixin must call '
                '`self._set_class_counts(...)` in their `__init__`.')
        return np.asarray(counts, dtype=np.int64)
