# Copyright (c) galddc_mm contributors. All rights reserved.
import os.path as osp
import pickle
from typing import List, Optional, Tuple

import numpy as np
from mmengine.logging import MMLogger
from mmpretrain.datasets import BaseDataset, categories
from mmpretrain.registry import DATASETS

from .long_tail import LongTailMixin, long_tail_counts

SPLITS = ('train', 'val', 'test')


def _read_cifar_batch(path: str, label_key: str,
                      url: str) -> Tuple[np.ndarray, List[int]]:
    """Read one CIFAR python-pickle batch.

    The official files were written by Python 2, so their keys load as
    ``bytes`` (``b'data'``) with ``encoding='bytes'``; files re-written by
    Python 3 may hold ``str`` keys. Both are accepted.

    Returns:
        tuple: ``(data, labels)`` with ``data`` of shape ``(N, 3072)``
        uint8 (CHW order, row-major) and ``labels`` a list of ints.
    """
    if not osp.isfile(path):
        raise FileNotFoundError(
            f'CIFAR file {path} is missing. Download {url}, extract it '
            f'into {osp.dirname(osp.dirname(path)) or "."} (so that '
            f'{path} exists) and pass that folder as `data_root`; see '
            'docs/data_preparation.md. Nothing is downloaded automatically.')
    with open(path, 'rb') as f:
        entry = pickle.load(f, encoding='bytes')
    entry = {(k.decode('latin1') if isinstance(k, bytes) else k): v
             for k, v in entry.items()}
    for key in ('data', label_key):
        if key not in entry:
            raise KeyError(f'{path} has no {key!r} entry; is it a CIFAR '
                           f'python batch? Keys: {sorted(entry)}.')
    data = np.asarray(entry['data'], dtype=np.uint8)
    labels = [int(x) for x in entry[label_key]]
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or \
            len(data) != len(labels):
        raise ValueError(
            f'{path}: expected data of shape (N, 3072) and N labels, got '
            f'{data.shape} and {len(labels)} labels.')
    return data, labels


def ldam_long_tail_select(targets: np.ndarray,
                          num_classes: int,
                          imbalance_factor: float,
                          seed: int = 0,
                          val_per_class: int = 0
                          ) -> Tuple[List[np.ndarray], List[np.ndarray]]:
    r"""The long-tail subsample of LDAM-DRW, plus spare images for val.

    ``IMBALANCECIFAR10.gen_imbalanced_data`` of Cao et al. (NeurIPS 2019):
    with :math:`n_{max} = |targets| / C` and
    :math:`n_c = \lfloor n_{max} (1 / IF)^{c / (C - 1)} \rfloor`, one
    ``np.random.RandomState(seed)`` (their ``np.random.seed(0)``) visits
    the classes in order, shuffles ``idx = np.where(targets == c)[0]`` and
    keeps ``idx[:n_c]``. The next ``val_per_class`` indices of the same
    shuffled order, ``idx[n_c:n_c + val_per_class]``, are returned as
    validation images (never selected for training).

    Args:
        targets (np.ndarray): Labels of the full (balanced) training set,
            in file order.
        num_classes (int): C.
        imbalance_factor (float): IF (>= 1).
        seed (int): Seed. Defaults to 0.
        val_per_class (int): Spare images per class. Defaults to 0.

    Returns:
        tuple: ``(train_idx, val_idx)``, lists of C index arrays into
        ``targets``, in class order.
    """
    targets = np.asarray(targets)
    if len(targets) and (targets.min() < 0 or targets.max() >= num_classes):
        raise ValueError(
            f'training labels must lie in [0, {num_classes}), got '
            f'[{targets.min()}, {targets.max()}].')
    # LDAM-DRW: img_max = len(self.data) / cls_num (a float).
    img_num_per_cls = long_tail_counts(
        len(targets) / num_classes, num_classes, imbalance_factor)
    rng = np.random.RandomState(seed)
    train_idx, val_idx = [], []
    for c in range(num_classes):
        idx = np.where(targets == c)[0]
        rng.shuffle(idx)
        n_c = img_num_per_cls[c]
        train_idx.append(idx[:n_c])
        val_idx.append(idx[n_c:n_c + val_per_class])
    return train_idx, val_idx


@DATASETS.register_module()
class CIFAR10LT(LongTailMixin, BaseDataset):
    r"""CIFAR-10-LT: the long-tailed CIFAR-10 of LDAM-DRW.

    Reads the standard python-pickle files of CIFAR-10 from ``data_root``
    (``cifar-10-batches-py/data_batch_1..5`` and ``test_batch``). Nothing
    is downloaded: if a file is missing, a :class:`FileNotFoundError` says
    which one and where to get it.

    **train**: exactly the subsample of Cao et al. (LDAM-DRW, NeurIPS 2019,
    ``IMBALANCECIFAR10.gen_imbalanced_data``). With
    :math:`n_{max} = |train| / C` and

    .. math::

        n_i = \lfloor n_{max} (1 / IF)^{i / (C - 1)} \rfloor,

    a ``np.random.RandomState(seed)`` (``seed=0`` is their
    ``np.random.seed(0)``) visits the classes in order; for class ``c`` it
    shuffles ``idx = np.where(targets == c)[0]`` and keeps ``idx[:n_c]``.
    The data list is ordered by class like theirs. Same files and seed give
    the same images: 12,406 / 13,996 / 20,431 training images for IF
    100 / 50 / 10 (CIFAR-100-LT: 10,847 / 12,608 / 19,573).

    **val**: a validation split for checkpoint selection that never
    touches the test set: for each class, the next ``val_per_class``
    images of the same shuffled order, ``idx[n_c:n_c + val_per_class]``,
    i.e. training images *not* selected by the long-tail subsample. A class
    whose long-tail count uses (almost) all of its images has fewer spare
    images: class 0 always keeps all of them (:math:`n_0 = n_{max}`), so it
    has **no** val images; such shortfalls are logged. The val split is
    deterministic and fixed by ``(seed, imbalance_factor)``.

    **test**: the official test batch, untouched (balanced).

    Every split reports the *training* class counts (see
    :class:`LongTailMixin`); the val/test splits read the training files
    to compute them.

    Args:
        data_root (str): Folder holding ``cifar-10-batches-py``.
        split (str): ``'train'``, ``'val'`` or ``'test'``.
            Defaults to ``'train'``.
        imbalance_factor (float): IF = n_max / n_min (>= 1). Defaults to
            100.
        seed (int): Seed of the subsample. Defaults to 0 (LDAM-DRW's).
        val_per_class (int, optional): Validation images per class. Defaults
            to None, meaning :attr:`DEFAULT_VAL_PER_CLASS` (100 for
            CIFAR-10, 20 for CIFAR-100).
        metainfo (dict, optional): Meta information. Defaults to None.
        **kwargs: Other arguments of :class:`mmpretrain.datasets.BaseDataset`.
    """

    base_folder = 'cifar-10-batches-py'
    url = 'https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz'
    train_files = ('data_batch_1', 'data_batch_2', 'data_batch_3',
                   'data_batch_4', 'data_batch_5')
    test_files = ('test_batch', )
    label_key = 'labels'
    NUM_CLASSES = 10
    DEFAULT_VAL_PER_CLASS = 100
    METAINFO = {'classes': categories.CIFAR10_CATEGORIES}

    def __init__(self,
                 data_root: str = '',
                 split: str = 'train',
                 imbalance_factor: float = 100.,
                 seed: int = 0,
                 val_per_class: Optional[int] = None,
                 metainfo: Optional[dict] = None,
                 **kwargs):
        name = type(self).__name__
        if split not in SPLITS:
            raise ValueError(f'Unknown split {split!r} for {name}; choose '
                             f'one of {SPLITS}.')
        if imbalance_factor < 1:
            raise ValueError(
                f'imbalance_factor must be >= 1 (n_max / n_min), but got '
                f'{imbalance_factor}. Typical values: 100, 50, 10.')
        if not data_root:
            raise ValueError(
                f'{name} needs `data_root`, the folder that holds '
                f'{self.base_folder}/ (e.g. data/cifar).')
        if val_per_class is None:
            val_per_class = self.DEFAULT_VAL_PER_CLASS
        if int(val_per_class) != val_per_class or val_per_class < 0:
            raise ValueError('val_per_class must be a non-negative integer, '
                             f'got {val_per_class}.')
        self.split = split
        self.imbalance_factor = imbalance_factor
        self.seed = seed
        self.val_per_class = int(val_per_class)
        super().__init__(
            ann_file='', metainfo=metainfo, data_root=data_root, **kwargs)
        if 'class_counts' not in self._metainfo:
            # val/test, or lazy_init: the counts need the training labels.
            _, labels = self._read_split(self.train_files)
            train_idx, _ = self._select(np.asarray(labels))
            self._set_class_counts([len(i) for i in train_idx])

    def _read_split(self, files) -> Tuple[np.ndarray, List[int]]:
        """Read and concatenate batch files, in the given order."""
        datas, labels = [], []
        for file_name in files:
            path = osp.join(self.data_root, self.base_folder, file_name)
            data, lab = _read_cifar_batch(path, self.label_key, self.url)
            datas.append(data)
            labels.extend(lab)
        return np.concatenate(datas), labels

    def _select(self, targets: np.ndarray):
        """:func:`ldam_long_tail_select` with this data set's settings."""
        return ldam_long_tail_select(targets, self.NUM_CLASSES,
                                     self.imbalance_factor, self.seed,
                                     self.val_per_class)

    def load_data_list(self) -> List[dict]:
        """Read the pickles and build the data list of the chosen split.

        Returns:
            list[dict]: One dict per image with ``'img'`` (uint8, 32x32x3,
            RGB) and ``'gt_label'`` (int).
        """
        if self.split == 'test':
            data, labels = self._read_split(self.test_files)
            indices = np.arange(len(labels))
        else:
            data, labels = self._read_split(self.train_files)
            train_idx, val_idx = self._select(np.asarray(labels))
            # The training counts are known now: no second read of the
            # files in ``__init__``.
            self._set_class_counts([len(i) for i in train_idx])
            chosen = train_idx if self.split == 'train' else val_idx
            if self.split == 'val':
                self._log_val_shortfall(val_idx)
            indices = np.concatenate(chosen).astype(np.int64)

        # (N, 3072) -> (N, 3, 32, 32) -> HWC, as mmpretrain's CIFAR10.
        imgs = data.reshape(-1, 3, 32, 32).transpose((0, 2, 3, 1))
        return [
            dict(img=imgs[i], gt_label=int(labels[i])) for i in indices
        ]

    def _log_val_shortfall(self, val_idx) -> None:
        short = {
            c: len(idx)
            for c, idx in enumerate(val_idx) if len(idx) < self.val_per_class
        }
        if short:
            MMLogger.get_current_instance().info(
                f'{type(self).__name__} val split: {len(short)} class(es) '
                f'have fewer than val_per_class={self.val_per_class} '
                'training images left after the long-tail subsample '
                f'(class: images) {short}.')

    def extra_repr(self) -> List[str]:
        """The extra repr information of the dataset."""
        return [
            f'Prefix of data: \t{self.data_root}',
            f'Split: \t{self.split}',
            f'Imbalance factor: \t{self.imbalance_factor}',
        ]


@DATASETS.register_module()
class CIFAR100LT(CIFAR10LT):
    """CIFAR-100-LT: the long-tailed CIFAR-100 of LDAM-DRW.

    Same construction as :class:`CIFAR10LT` on the CIFAR-100 python files
    (``cifar-100-python/train`` and ``test``, fine labels). The default
    ``val_per_class`` is 20.

    Args:
        data_root (str): Folder holding ``cifar-100-python``.
        **kwargs: The arguments of :class:`CIFAR10LT`.
    """

    base_folder = 'cifar-100-python'
    url = 'https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz'
    train_files = ('train', )
    test_files = ('test', )
    label_key = 'fine_labels'
    NUM_CLASSES = 100
    DEFAULT_VAL_PER_CLASS = 20
    METAINFO = {'classes': categories.CIFAR100_CATEGORIES}
