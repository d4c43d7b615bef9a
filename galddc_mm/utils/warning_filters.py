# Copyright (c) galddc_mm contributors. All rights reserved.
"""Filters for two harmless warnings of the pinned stack, by exact text."""
import warnings

__all__ = ['silence_known_warnings']


def silence_known_warnings() -> None:
    """Filter two harmless warnings of the pinned stack, by exact text.

    - mmcv-lite's missing ``MultiScaleDeformableAttention`` (a CUDA op of
      full mmcv that no model here uses), issued when anything imports
      ``mmcv.cnn.bricks.transformer`` (mmpretrain's models do), which is why
      :mod:`galddc_mm` calls this before it imports its models;
    - setuptools' "pkg_resources is deprecated" notice: mmengine resolves
      ``mmpretrain::`` configs with ``pkg_resources``, and ``setup.py``
      pins ``setuptools<81`` which still ships it.

    Adding a filter twice is harmless (``warnings`` keeps one).
    """
    warnings.filterwarnings(
        'ignore',
        message=r'Fail to import ``MultiScaleDeformableAttention``',
        category=UserWarning,
        module=r'mmcv\.cnn\.bricks\.transformer')
    warnings.filterwarnings(
        'ignore',
        message=r'pkg_resources is deprecated as an API',
        category=UserWarning)
