# Copyright (c) galddc_mm contributors. All rights reserved.
import os.path as osp
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
from mmpretrain.datasets import BaseDataset
from mmpretrain.registry import DATASETS

from .long_tail import LongTailMixin

SPLITS = ('train', 'val', 'test')

PREPARE_HINT = 'see docs/data_preparation.md for how to prepare it'


def parse_list_file(path: str, num_classes: int,
                    labels_only: bool = False
                    ) -> Tuple[List[str], np.ndarray]:
    """Parse a split list of the OLTR / decoupling format.

    One image per line, ``relative/path label``, e.g.
    ``train/n01440764/n01440764_190.JPEG 0``. Blank lines are skipped; the
    label is the last whitespace-separated token, so paths with spaces
    still parse.

    Args:
        path (str): The list file.
        num_classes (int): K; every label must lie in ``[0, K)``.
        labels_only (bool): Skip collecting the paths (for the training
            counts of the val/test splits). Defaults to False.

    Returns:
        tuple: ``(paths, labels)``: the relative paths (empty when
        ``labels_only``) and an int64 array of labels.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: a malformed line or a label out of range, naming
            ``path:line``; or an empty list.
    """
    if not osp.isfile(path):
        raise FileNotFoundError(
            f'Split list {path} not found. Put the list file there or pass '
            f'`ann_file`; {PREPARE_HINT}.')
    paths, labels = [], []
    with open(path, encoding='utf-8') as f:
        for line_no, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            parts = line.rsplit(None, 1)
            if len(parts) != 2:
                raise ValueError(
                    f'{path}:{line_no}: malformed line {line!r}; expected '
                    '"relative/path label".')
            try:
                label = int(parts[1])
            except ValueError:
                raise ValueError(
                    f'{path}:{line_no}: malformed line {line!r}; the label '
                    f'{parts[1]!r} is not an integer (expected '
                    '"relative/path label").') from None
            if not 0 <= label < num_classes:
                raise ValueError(
                    f'{path}:{line_no}: label {label} is out of range '
                    f'[0, {num_classes}) for K={num_classes} classes.')
            if not labels_only:
                paths.append(parts[0])
            labels.append(label)
    if not labels:
        raise ValueError(f'Split list {path} holds no entries.')
    return paths, np.asarray(labels, dtype=np.int64)


@DATASETS.register_module()
class LongTailListDataset(LongTailMixin, BaseDataset):
    """A long-tailed data set given by ``path label`` split lists.

    The base of :class:`ImageNetLT`, :class:`PlacesLT` and
    :class:`INat2018`, usable directly for any data set shipped the same
    way (give ``num_classes`` and ``ann_files``).

    The data list holds ``img_path`` (``data_prefix`` + the relative path
    of the list) and ``gt_label``; images are read by the pipeline
    (``LoadImageFromFile``). Every split reports the *training* class
    counts, read from the training list (labels only) for val/test.

    Before the data list is built, the first entry is looked up on disk
    (one ``stat``, not one per image): if it is missing, :meth:`_resolve`
    may rewrite the paths of the list to a layout that exists (see
    :class:`ImageNetLT`), else a :class:`FileNotFoundError` names it.

    Args:
        data_root (str): Root of the data set; the lists and images are
            relative to it.
        split (str): ``'train'``, ``'val'`` or ``'test'``.
            Defaults to ``'train'``.
        ann_file (str): The list of this split, overriding
            ``ann_files[split]``; relative to ``data_root`` unless
            absolute. Defaults to ''.
        train_ann_file (str): The training list, read for the class counts
            of every split. Defaults to '' (``ann_files['train']``).
        data_prefix (str | dict): Image folder, relative to ``data_root``.
            Defaults to '' (the list paths are relative to ``data_root``).
        num_classes (int, optional): K. Defaults to None
            (:attr:`NUM_CLASSES`).
        ann_files (dict, optional): List file name of each split. Defaults
            to None (:attr:`ANN_FILES`).
        metainfo (dict, optional): Meta information, e.g. ``classes``.
            Defaults to None (generic ``class_<i>`` names).
        **kwargs: Other arguments of :class:`mmpretrain.datasets.BaseDataset`.
    """

    NUM_CLASSES: Optional[int] = None
    ANN_FILES: Dict[str, str] = {}

    def __init__(self,
                 data_root: str = '',
                 split: str = 'train',
                 ann_file: str = '',
                 train_ann_file: str = '',
                 data_prefix: Union[str, dict] = '',
                 num_classes: Optional[int] = None,
                 ann_files: Optional[Dict[str, str]] = None,
                 metainfo: Optional[dict] = None,
                 **kwargs):
        name = type(self).__name__
        if split not in SPLITS:
            raise ValueError(f'Unknown split {split!r} for {name}; choose '
                             f'one of {SPLITS}.')
        num_classes = num_classes or self.NUM_CLASSES
        if not num_classes or num_classes < 1:
            raise ValueError(f'{name} needs `num_classes` (K >= 1).')
        ann_files = dict(self.ANN_FILES if ann_files is None else ann_files)
        if data_root and not osp.isdir(data_root):
            raise FileNotFoundError(
                f'{name}: data root {data_root} does not exist; '
                f'{PREPARE_HINT}.')
        self.split = split
        self.num_classes = num_classes

        split_file = ann_file or self._split_list_name(split, ann_files)
        train_file = train_ann_file or self._split_list_name(
            'train', ann_files)
        self.train_ann_file = self._join(data_root, train_file)

        metainfo = dict(metainfo or {})
        if 'classes' not in metainfo and not self.METAINFO.get('classes'):
            metainfo['classes'] = tuple(
                f'class_{i}' for i in range(num_classes))
        super().__init__(
            ann_file=split_file,
            metainfo=metainfo,
            data_root=data_root,
            data_prefix=data_prefix,
            **kwargs)
        if 'class_counts' not in self._metainfo:
            _, train_labels = parse_list_file(
                self.train_ann_file, num_classes, labels_only=True)
            self._set_class_counts(
                np.bincount(train_labels, minlength=num_classes))

    def _split_list_name(self, split: str, ann_files: dict) -> str:
        if split not in ann_files:
            raise ValueError(
                f'{type(self).__name__} has no list for split {split!r}; '
                f'known lists: {ann_files}. Pass `ann_file`.')
        return ann_files[split]

    @staticmethod
    def _join(root: str, path: str) -> str:
        return path if osp.isabs(path) or not root else osp.join(root, path)

    def load_data_list(self) -> List[dict]:
        """Parse the split list into ``img_path`` / ``gt_label`` dicts."""
        paths, labels = parse_list_file(self.ann_file, self.num_classes)
        if self.split == 'train' or self.ann_file == self.train_ann_file:
            self._set_class_counts(
                np.bincount(labels, minlength=self.num_classes))
        prefix = self.img_prefix
        paths = self._resolve(paths, labels, prefix)
        return [
            dict(img_path=self._join(prefix, p), gt_label=int(label))
            for p, label in zip(paths, labels)
        ]

    def _resolve(self, paths: List[str], labels: np.ndarray,
                 prefix: str) -> List[str]:
        """Check the first entry exists; subclasses may remap the paths.

        Args:
            paths (list[str]): Relative paths of the list.
            labels (np.ndarray): Their labels.
            prefix (str): The image folder the paths are relative to.

        Returns:
            list[str]: The paths to use (relative to ``prefix``).
        """
        first = self._join(prefix, paths[0])
        if not osp.exists(first):
            raise FileNotFoundError(
                f'{type(self).__name__}: image {first} (first entry of '
                f'{self.ann_file}) not found. Check `data_root` / '
                f'`data_prefix`; {PREPARE_HINT}.')
        return paths

    def extra_repr(self) -> List[str]:
        """The extra repr information of the dataset."""
        return [
            f'Split: \t{self.split}',
            f'Annotation file: \t{self.ann_file}',
            f'Training list: \t{self.train_ann_file}',
            f'Prefix of images: \t{self.img_prefix}',
        ]

