# Copyright (c) galddc_mm contributors. All rights reserved.
from .cifar_lt import CIFAR10LT, CIFAR100LT, ldam_long_tail_select
from .digits_lt import DigitsLT
from .encoded_images import EncodedImages, decode_files, encoded_collate
from .gaussian_latent_lt import GaussianLatentLT
from .imagenet_lt import ImageNetLT
from .inat2018 import INat2018
from .list_lt import LongTailListDataset, parse_list_file
from .long_tail import (
    BANDS,
    LongTailMixin,
    class_bands,
    head_tail_masks,
    long_tail_counts,
)
from .places_lt import PlacesLT
from .synthetic_lt import SyntheticLT
from .transforms import (
    CheckedLoadImageFromFile,
    LoadImageBytes,
    PackImageBytes,
    UnreadableImageError,
)

__all__ = [
    'BANDS', 'CIFAR10LT', 'CIFAR100LT', 'CheckedLoadImageFromFile',
    'DigitsLT', 'EncodedImages', 'GaussianLatentLT', 'INat2018', 'ImageNetLT',
    'LoadImageBytes', 'LongTailListDataset', 'LongTailMixin',
    'PackImageBytes', 'PlacesLT', 'SyntheticLT',
    'class_bands', 'decode_files', 'encoded_collate', 'head_tail_masks',
    'ldam_long_tail_select', 'long_tail_counts', 'parse_list_file',
    'UnreadableImageError'
]
