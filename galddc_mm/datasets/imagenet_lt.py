# Copyright (c) galddc_mm contributors. All rights reserved.
import os.path as osp
from typing import Dict, List

import numpy as np
from mmengine.logging import MMLogger
from mmpretrain.datasets.categories import IMAGENET_CATEGORIES
from mmpretrain.registry import DATASETS

from .list_lt import PREPARE_HINT, LongTailListDataset, parse_list_file


@DATASETS.register_module()
class ImageNetLT(LongTailListDataset):
    """ImageNet-LT (Liu et al., OLTR, CVPR 2019): 1,000 classes.

    Split lists ``ImageNet_LT_train.txt`` (115,846 images, 5-1,280 per
    class), ``ImageNet_LT_val.txt`` (20 per class, taken from the ImageNet
    training images) and ``ImageNet_LT_test.txt`` (50 per class, the
    ImageNet validation images), one ``relative/path label`` per line, are
    read from ``data_root`` (override with ``ann_file``). Images are found
    under ``data_root`` (or ``data_prefix``), e.g.
    ``data/imagenet/train/n01440764/n01440764_190.JPEG``.

    **Validation image layout.** The ImageNet validation images exist in
    two layouts: class folders (``val/n01440764/ILSVRC2012_val_00000293.JPEG``,
    the style of the official ImageNet-LT lists) and flat
    (``val/ILSVRC2012_val_00000293.JPEG``, mmpretrain's default). The
    first entry of the list is looked up on disk; if the list's layout
    does not exist but the other one does, every entry of the same folder
    is rewritten to it (for flat -> class folders, the WordNet id of each
    label is taken from the training list's paths). No other file is
    checked.

    Class names are mmpretrain's ``IMAGENET_CATEGORIES``.

    Args:
        data_root (str): Root holding the lists and ``train/``, ``val/``.
        split (str): ``'train'``, ``'val'`` or ``'test'``.
            Defaults to ``'train'``.
        **kwargs: Other arguments of :class:`LongTailListDataset`.
    """

    NUM_CLASSES = 1000
    ANN_FILES = {
        'train': 'ImageNet_LT_train.txt',
        'val': 'ImageNet_LT_val.txt',
        'test': 'ImageNet_LT_test.txt',
    }
    METAINFO = {'classes': IMAGENET_CATEGORIES}

    def _resolve(self, paths: List[str], labels: np.ndarray,
                 prefix: str) -> List[str]:
        """Pick the validation layout that exists on disk (one lookup).

        Args:
            paths (list[str]): Relative paths of the list.
            labels (np.ndarray): Their labels.
            prefix (str): The image folder the paths are relative to.

        Returns:
            list[str]: The paths to use (relative to ``prefix``).
        """
        first = paths[0]
        tried = [self._join(prefix, first)]
        if osp.exists(tried[0]):
            return paths
        parts = first.split('/')
        top, depth = parts[0], len(parts)
        remap = None
        if depth >= 3:
            # Class folders in the list, flat on disk: top/wnid/f -> top/f.
            layout = 'flat'

            def remap(q, label):
                return f'{top}/{q[-1]}'
        elif depth == 2:
            # Flat in the list, class folders on disk: top/f -> top/wnid/f,
            # the wnid of a label being the folder of its training images.
            layout = 'class-folder'
            wnids = self._wnids_from_train_list()

            def remap(q, label):
                wnid = wnids.get(label)
                return None if wnid is None else f'{top}/{wnid}/{q[-1]}'

        candidate = remap(parts, int(labels[0])) if remap else None
        if candidate is not None:
            tried.append(self._join(prefix, candidate))
            if osp.exists(tried[-1]):
                MMLogger.get_current_instance().info(
                    f'{type(self).__name__}: the entries of {self.ann_file} '
                    f'under {top}/ are read with the {layout} layout found '
                    'on disk.')
                out = []
                for p, label in zip(paths, labels):
                    q = p.split('/')
                    new = None
                    if q[0] == top and len(q) == depth:
                        new = remap(q, int(label))
                    out.append(p if new is None else new)
                return out
        raise FileNotFoundError(
            f'{type(self).__name__}: image of the first entry of '
            f'{self.ann_file} not found; tried {tried}. Check `data_root` '
            f'/ `data_prefix`; {PREPARE_HINT}.')

    def _wnids_from_train_list(self) -> Dict[int, str]:
        """Label -> WordNet id, read from the training list's folders."""
        paths, labels = parse_list_file(self.train_ann_file,
                                        self.num_classes)
        wnids = {}
        for p, label in zip(paths, labels):
            parts = p.split('/')
            if len(parts) >= 3:
                wnids.setdefault(int(label), parts[-2])
        return wnids
