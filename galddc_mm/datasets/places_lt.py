# Copyright (c) galddc_mm contributors. All rights reserved.
from mmpretrain.registry import DATASETS

from .list_lt import LongTailListDataset


@DATASETS.register_module()
class PlacesLT(LongTailListDataset):
    """Places-LT (Liu et al., OLTR, CVPR 2019): 365 classes.

    Split lists ``Places_LT_train.txt`` (62,500 images, 5-4,980 per
    class), ``Places_LT_val.txt`` (20 per class, from the Places-365
    training images) and ``Places_LT_test.txt`` (100 per class, from the
    Places-365 validation images), one ``relative/path label`` per line
    (e.g. ``data_256/a/airfield/00000166.jpg 0``), read from ``data_root``
    (override with ``ann_file``). Images are looked up under ``data_root``
    (or ``data_prefix``). Class names are generic (``class_<i>``).

    Args:
        data_root (str): Root holding the lists and the image folders
            (``data_256/``, ``val_256/``).
        split (str): ``'train'``, ``'val'`` or ``'test'``.
            Defaults to ``'train'``.
        **kwargs: Other arguments of :class:`LongTailListDataset`.
    """

    NUM_CLASSES = 365
    ANN_FILES = {
        'train': 'Places_LT_train.txt',
        'val': 'Places_LT_val.txt',
        'test': 'Places_LT_test.txt',
    }
