# Copyright (c) galddc_mm contributors. All rights reserved.
from .checked_loading import CheckedLoadImageFromFile, UnreadableImageError
from .jpeg_bytes import LoadImageBytes, PackImageBytes

__all__ = [
    'CheckedLoadImageFromFile', 'LoadImageBytes', 'PackImageBytes',
    'UnreadableImageError'
]
