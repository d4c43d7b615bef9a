# Copyright (c) galddc_mm contributors. All rights reserved.
from typing import List, Optional

import numpy as np
from mmpretrain.datasets import BaseDataset
from mmpretrain.registry import DATASETS

from .long_tail import LongTailMixin, long_tail_counts

SPLITS = ('train', 'val', 'test')


def _load_digits():
    """Return scikit-learn's 8x8 digits as ``(images, labels)``.

    Imported lazily: scikit-learn is only needed by this data set.
    """
    from sklearn.datasets import load_digits
    digits = load_digits()
    return digits.images, digits.target.astype(np.int64)


@DATASETS.register_module()
class DigitsLT(LongTailMixin, BaseDataset):
    r"""A tiny long-tailed data set built from scikit-learn's digits.

    scikit-learn's ``load_digits()`` ships with the library (no download):
    1,797 grey 8x8 images of the digits 0-9, 174-183 per class. It is small
    enough for CPU smoke tests and tutorials, and long-tailed enough to
    exercise every part of the long-tail machinery.

    **Splits** (fixed for a given ``seed``): for each class in order
    ``0..9``, its images are permuted with one
    ``np.random.RandomState(seed)``; the first ``test_per_class`` go to
    *test*, the next ``val_per_class`` to *val*, the rest form the training
    pool. val and test are therefore class-balanced and disjoint from each
    other and from train. The *train* split takes the first :math:`n_i`
    images of each class's pool, with the exponential profile

    .. math::

        n_i = \lfloor n_{max} (1 / IF)^{i / (C - 1)} \rfloor .

    With the defaults (``n_max=110``, ``imbalance_factor=20``,
    ``val_per_class=20``, ``test_per_class=40``) train has 369 images,
    ``n = [110, 78, 56, 40, 29, 20, 14, 10, 7, 5]``: one many-shot class
    (> 100), five medium-shot classes (20-100) and four few-shot classes
    (< 20); val has 200 and test 400 images.

    **Images** are stored in the data list under ``'img'`` as ``uint8``
    arrays of shape ``(8, 8, 3)`` (the grey level repeated on three
    channels, values scaled from 0..16 to 0..255), like mmpretrain's
    ``CIFAR10``, so the usual pipeline (``RandomCrop``, ``PackInputs``)
    works unchanged.

    Args:
        split (str): ``'train'``, ``'val'`` or ``'test'``.
            Defaults to ``'train'``.
        imbalance_factor (float): IF = n_max / n_min of the train split
            (>= 1). Defaults to 20.
        n_max (int): Training images of class 0. Must not exceed the
            smallest training pool (114 with the default val/test sizes).
            Defaults to 110.
        val_per_class (int): Validation images per class. Defaults to 20.
        test_per_class (int): Test images per class. Defaults to 40.
        seed (int): Seed of the split. Defaults to 0.
        metainfo (dict, optional): Meta information, e.g. ``classes``.
            Defaults to None.
        **kwargs: Other arguments of :class:`mmpretrain.datasets.BaseDataset`
            (``pipeline``, ``test_mode``, ``lazy_init`` ...).
    """

    METAINFO = {'classes': tuple(str(i) for i in range(10))}
    NUM_CLASSES = 10

    def __init__(self,
                 split: str = 'train',
                 imbalance_factor: float = 20.,
                 n_max: int = 110,
                 val_per_class: int = 20,
                 test_per_class: int = 40,
                 seed: int = 0,
                 metainfo: Optional[dict] = None,
                 **kwargs):
        if split not in SPLITS:
            raise ValueError(f'Unknown split {split!r} for DigitsLT; '
                             f'choose one of {SPLITS}.')
        if imbalance_factor < 1:
            raise ValueError(
                f'imbalance_factor must be >= 1 (n_max / n_min), but got '
                f'{imbalance_factor}.')
        for name, value in (('n_max', n_max), ('val_per_class',
                                                val_per_class),
                            ('test_per_class', test_per_class)):
            if int(value) != value or value < 0:
                raise ValueError(
                    f'{name} must be a non-negative integer, got {value}.')
        self.split = split
        self.imbalance_factor = imbalance_factor
        self.n_max = int(n_max)
        self.val_per_class = int(val_per_class)
        self.test_per_class = int(test_per_class)
        self.seed = seed

        images, labels = _load_digits()
        self._split_indices = self._make_splits(labels)
        self._images, self._labels = images, labels

        super().__init__(
            ann_file='', metainfo=metainfo, data_root='', **kwargs)
        self._set_class_counts(
            [len(idx) for idx in self._split_indices['train']])

    def _make_splits(self, labels: np.ndarray) -> dict:
        """Per-class indices of each split (see the class docstring)."""
        counts = long_tail_counts(self.n_max, self.NUM_CLASSES,
                                  self.imbalance_factor)
        rng = np.random.RandomState(self.seed)
        n_eval = self.test_per_class + self.val_per_class
        splits = {s: [] for s in SPLITS}
        for c in range(self.NUM_CLASSES):
            idx = rng.permutation(np.where(labels == c)[0])
            pool = idx[n_eval:]
            if len(pool) < self.n_max:
                raise ValueError(
                    f'Class {c} has {len(idx)} images; after '
                    f'{self.test_per_class} test and {self.val_per_class} '
                    f'val images its training pool holds {len(pool)}, '
                    f'fewer than n_max={self.n_max}. Lower n_max, '
                    'val_per_class or test_per_class.')
            splits['test'].append(idx[:self.test_per_class])
            splits['val'].append(idx[self.test_per_class:n_eval])
            splits['train'].append(pool[:counts[c]])
        return splits

    def load_data_list(self) -> List[dict]:
        """Build the data list of the chosen split.

        Returns:
            list[dict]: One dict per image with ``'img'`` (uint8, 8x8x3) and
            ``'gt_label'`` (int), ordered by class.
        """
        data_list = []
        for indices in self._split_indices[self.split]:
            for i in indices:
                # 0..16 grey levels -> 0..255 so that the usual uint8 image
                # pipeline and normalisation apply.
                grey = np.round(self._images[i] * (255. / 16.))
                img = np.repeat(grey.astype(np.uint8)[..., None], 3, axis=2)
                data_list.append(
                    dict(img=img, gt_label=int(self._labels[i])))
        return data_list

    def extra_repr(self) -> List[str]:
        """The extra repr information of the dataset."""
        return [
            f'Split: \t{self.split}',
            f'Imbalance factor: \t{self.imbalance_factor}',
            f'Training class counts: \t{self.get_class_counts().tolist()}',
        ]
