# Copyright (c) galddc_mm contributors. All rights reserved.
from .checked_loading import CheckedLoadImageFromFile, UnreadableImageError

__all__ = ['CheckedLoadImageFromFile', 'UnreadableImageError']
