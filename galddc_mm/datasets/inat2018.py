# Copyright (c) galddc_mm contributors. All rights reserved.
from mmengine.logging import MMLogger
from mmpretrain.registry import DATASETS

from .list_lt import LongTailListDataset


@DATASETS.register_module()
class INat2018(LongTailListDataset):
    """iNaturalist 2018: 8,142 classes, naturally long-tailed.

    Split lists ``iNaturalist18_train.txt`` (437,513 images, 2-1,000 per
    class) and ``iNaturalist18_val.txt`` (24,426 images, 3 per class), one
    ``relative/path label`` per line (e.g.
    ``train_val2018/Plantae/7477/3b60c9486db1d2ee875f11a669fbde4a.jpg
    7477``), read from ``data_root`` (override with ``ann_file``).

    There is **no separate test list**: the literature (cRT, LDAM-DRW,
    RIDE, ...) reports results on the official validation set. So
    ``split='test'`` and ``split='val'`` both read
    ``iNaturalist18_val.txt``, and checkpoint selection on iNat2018 uses
    the same images as the reported result (a known weakness of this
    benchmark; pass a held-out list through ``ann_file`` to avoid it).
    Class names are generic (``class_<i>``).

    Args:
        data_root (str): Root holding the lists and ``train_val2018/``.
        split (str): ``'train'``, ``'val'`` or ``'test'``.
            Defaults to ``'train'``.
        **kwargs: Other arguments of :class:`LongTailListDataset`.
    """

    NUM_CLASSES = 8142
    ANN_FILES = {
        'train': 'iNaturalist18_train.txt',
        'val': 'iNaturalist18_val.txt',
        'test': 'iNaturalist18_val.txt',
    }

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.split in ('val', 'test') and not kwargs.get('ann_file'):
            MMLogger.get_current_instance().info(
                f'INat2018 split={self.split!r} reads '
                f'{self.ANN_FILES[self.split]}: iNaturalist 2018 has no '
                'separate test list, so val and test are the same images.')
