# Copyright (c) galddc_mm contributors. All rights reserved.
from typing import List, Optional

import numpy as np
import torch
from mmpretrain.datasets import BaseDataset
from mmpretrain.registry import DATASETS

from .long_tail import LongTailMixin, long_tail_counts

SPLITS = ('train', 'val', 'test')
MODES = ('img', 'tensor')


@DATASETS.register_module()
class SyntheticLT(LongTailMixin, BaseDataset):
    r"""An in-memory synthetic long-tailed data set shaped like ImageNet-LT.

    Random images with the label distribution of a long-tailed benchmark,
    for benchmarks and multi-GPU runs that need no data on disk. The
    training split has the exponential profile of LDAM-DRW
    (:func:`long_tail_counts`), raised to at least ``min_per_class``:

    .. math::

        n_i = \max\left(\left\lfloor n_{max} (1 / IF)^{i / (K - 1)}
              \right\rfloor, n_{min}\right), \qquad i = 0, \dots, K - 1.

    The defaults (``K = 1000``, ``n_max = 1280``, ``IF = 256``) span
    ImageNet-LT's 1,280 to 5 images per class (about 230k images: the
    exponential profile is heavier in the middle than ImageNet-LT's
    Pareto one, 115.8k). val and test are balanced, ``eval_per_class``
    images per class.

    Nothing is stored but labels: image ``i`` of a split is drawn when it
    is read, from a generator seeded by ``(seed, split, i)``, so an item is
    the same every time (and in every worker or process) and the set costs
    no memory. Each class has its own mean colour under uniform noise,
    ``x = (c_y + u) / 2`` with ``c_y, u ~ U{0..255}``, so a model can learn
    something from it. The image is stored under ``'img'``:

    - ``mode='img'``: a ``uint8`` array ``(H, W, 3)``, as
      ``LoadImageFromFile`` gives, for the usual pipelines;
    - ``mode='tensor'``: a ``uint8`` tensor ``(3, H, W)``, which
      ``PackInputs`` passes through untouched (no layout conversion).

    Args:
        split (str): ``'train'``, ``'val'`` or ``'test'``.
            Defaults to ``'train'``.
        num_classes (int): Number of classes ``K``. Defaults to 1000.
        n_max (int): Training images of class 0. Defaults to 1280.
        imbalance_factor (float): ``n_max / n_min`` of the profile (>= 1).
            Defaults to 256.
        min_per_class (int): Lower bound of every training class count
            (>= 1, so that every class exists). Defaults to 1.
        eval_per_class (int): Images per class of val and test.
            Defaults to 20.
        img_size (int): Height and width of the square images.
            Defaults to 224.
        mode (str): ``'img'`` or ``'tensor'``, see above.
            Defaults to ``'img'``.
        seed (int): Seed of the images. Defaults to 0.
        metainfo (dict, optional): Meta information; ``classes`` defaults
            to ``('class_0', ..., 'class_{K-1}')``. Defaults to None.
        **kwargs: Other arguments of :class:`mmpretrain.datasets.BaseDataset`
            (``pipeline``, ``test_mode``, ``lazy_init`` ...).
    """

    def __init__(self,
                 split: str = 'train',
                 num_classes: int = 1000,
                 n_max: int = 1280,
                 imbalance_factor: float = 256.,
                 min_per_class: int = 1,
                 eval_per_class: int = 20,
                 img_size: int = 224,
                 mode: str = 'img',
                 seed: int = 0,
                 metainfo: Optional[dict] = None,
                 **kwargs):
        if split not in SPLITS:
            raise ValueError(f'Unknown split {split!r} for SyntheticLT; '
                             f'choose one of {SPLITS}.')
        if mode not in MODES:
            raise ValueError(f'Unknown mode {mode!r} for SyntheticLT; '
                             f'choose one of {MODES}.')
        for name, value, low in (('num_classes', num_classes, 1),
                                 ('n_max', n_max, 1),
                                 ('min_per_class', min_per_class, 1),
                                 ('eval_per_class', eval_per_class, 0),
                                 ('img_size', img_size, 1)):
            if isinstance(value, bool) or int(value) != value or value < low:
                raise ValueError(f'{name} must be an integer >= {low}, got '
                                 f'{value!r}.')
        if imbalance_factor < 1:
            raise ValueError(
                f'imbalance_factor must be >= 1 (n_max / n_min), but got '
                f'{imbalance_factor}.')
        self.split = split
        self.num_classes = int(num_classes)
        self.imbalance_factor = imbalance_factor
        self.img_size = int(img_size)
        self.mode = mode
        self.seed = int(seed)
        self.eval_per_class = int(eval_per_class)
        counts = long_tail_counts(n_max, self.num_classes, imbalance_factor)
        self._train_counts = np.maximum(counts, int(min_per_class))
        if metainfo is None:
            metainfo = dict(
                classes=tuple(f'class_{i}' for i in range(self.num_classes)))
        super().__init__(
            ann_file='', metainfo=metainfo, data_root='', **kwargs)
        self._set_class_counts(self._train_counts)

    def load_data_list(self) -> List[dict]:
        """Labels of the chosen split, ordered by class.

        Returns:
            list[dict]: One ``dict(gt_label=int)`` per image; the image is
            drawn in :meth:`get_data_info`.
        """
        if self.split == 'train':
            per_class = self._train_counts
        else:
            per_class = np.full(self.num_classes, self.eval_per_class)
        labels = np.repeat(np.arange(self.num_classes), per_class)
        return [dict(gt_label=int(y)) for y in labels]

    def get_data_info(self, idx: int) -> dict:
        """The ``idx``-th item with its image drawn (see the class doc)."""
        info = super().get_data_info(idx)
        label = info['gt_label']
        split_id = SPLITS.index(self.split)
        # The class colour depends on the label only; the noise on the
        # (seed, split, index) triple, so workers and ranks agree.
        colour = np.random.default_rng(
            [self.seed, label]).integers(0, 256, 3, dtype=np.uint8)
        rng = np.random.default_rng([self.seed, split_id, int(idx), 1])
        size = self.img_size
        noise = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        img = (noise >> 1) + (colour >> 1)
        if self.mode == 'tensor':
            info['img'] = torch.from_numpy(
                np.ascontiguousarray(img.transpose(2, 0, 1)))
        else:
            info['img'] = img
        info['img_shape'] = (size, size)
        info['ori_shape'] = (size, size)
        return info

    def extra_repr(self) -> List[str]:
        """The extra repr information of the dataset."""
        counts = self.get_class_counts()
        return [
            f'Split: \t{self.split}',
            f'Image size: \t{self.img_size} ({self.mode})',
            f'Training images: \t{int(counts.sum())} '
            f'({int(counts.max())} to {int(counts.min())} per class)',
        ]
