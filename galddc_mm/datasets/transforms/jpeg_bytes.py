# Copyright (c) galddc_mm contributors. All rights reserved.
"""Load the encoded image file and pack its bytes: decode on the device.

With ``LoadImageBytes`` + ``PackImageBytes`` as the whole pipeline, the
data-loader workers only read files; decoding and augmentation happen in
:class:`~galddc_mm.models.GPUDecodeClsDataPreprocessor` (nvJPEG on CUDA),
for machines whose CPU cores cannot decode as fast as the GPU trains.
"""
from typing import Optional

import mmengine.fileio as fileio
import numpy as np
import torch
from mmcv.transforms import BaseTransform
from mmpretrain.datasets.transforms import PackInputs
from mmpretrain.registry import TRANSFORMS

from .checked_loading import UnreadableImageError


@TRANSFORMS.register_module()
class LoadImageBytes(BaseTransform):
    """Read the encoded image file, without decoding it.

    **Required Keys:**

    - img_path

    **Added Keys:**

    - img_bytes (np.ndarray): The file's bytes, 1-D ``uint8``.

    Unlike ``LoadImageFromFile`` there is no ``img``, ``img_shape`` or
    ``ori_shape`` here: the shape is only known after decoding, and the
    data preprocessor sets ``ori_shape`` and ``img_shape`` of the data
    samples then. A missing or empty file raises
    :class:`~galddc_mm.datasets.UnreadableImageError` naming the file; a
    file that does not decode is only found by the preprocessor (which
    decodes it on the CPU as a fall-back, see there).

    Args:
        backend_args (dict, optional): Arguments of the file backend of
            ``mmengine.fileio.get`` (e.g. a Petrel or HTTP backend).
            Defaults to None (local files).
    """

    def __init__(self, backend_args: Optional[dict] = None):
        self.backend_args = backend_args.copy() if backend_args else None

    def transform(self, results: dict) -> dict:
        """Read ``results['img_path']`` into ``results['img_bytes']``.

        Args:
            results (dict): The sample, with ``img_path``.

        Returns:
            dict: The sample with ``img_bytes``.
        """
        filename = results['img_path']
        try:
            data = fileio.get(filename, backend_args=self.backend_args)
        except FileNotFoundError:
            raise UnreadableImageError(filename, 'does not exist') from None
        if not data:
            raise UnreadableImageError(filename, 'is empty (0 bytes)')
        # A writable copy (np.frombuffer of ``bytes`` is read-only, which
        # torch.from_numpy warns about); ~100 KB per ImageNet image.
        results['img_bytes'] = np.frombuffer(bytearray(data), dtype=np.uint8)
        return results

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}(backend_args={self.backend_args})'


@TRANSFORMS.register_module()
class PackImageBytes(PackInputs):
    """``PackInputs`` whose ``inputs`` are the encoded bytes of the image.

    **Required Keys:**

    - img_bytes (from :class:`LoadImageBytes`)
    - ``*algorithm_keys``, ``*meta_keys`` as ``PackInputs``

    **Added Keys:**

    - inputs (torch.Tensor): The encoded file, 1-D ``uint8``.
    - data_samples (DataSample): As ``PackInputs`` (``gt_label``,
      ``sample_idx``, ``img_path``, ...).

    Collate with :func:`~galddc_mm.datasets.encoded_collate` (one
    buffer per batch, decoded in the loader's pin-memory thread; what the
    GPU-decode configs set) or mmengine's ``pseudo_collate`` (a list of
    the files); :class:`~galddc_mm.models.GPUDecodeClsDataPreprocessor`
    takes either. ``default_collate`` would try to stack them and fails.

    Args:
        input_key (str): The key of the bytes. Defaults to ``'img_bytes'``.
        algorithm_keys (Sequence[str]): As ``PackInputs``. Defaults to ().
        meta_keys (Sequence[str]): As ``PackInputs``. Defaults to
            ``PackInputs.DEFAULT_META_KEYS`` (those present are packed).
    """

    def __init__(self,
                 input_key: str = 'img_bytes',
                 algorithm_keys=(),
                 meta_keys=PackInputs.DEFAULT_META_KEYS):
        super().__init__(
            input_key=input_key,
            algorithm_keys=algorithm_keys,
            meta_keys=meta_keys)

    @staticmethod
    def format_input(input_) -> torch.Tensor:
        """The bytes as a 1-D ``uint8`` tensor (shared memory, no copy)."""
        if isinstance(input_, (bytes, bytearray)):
            input_ = np.frombuffer(bytearray(input_), dtype=np.uint8)
        if isinstance(input_, np.ndarray):
            input_ = torch.from_numpy(input_)
        if (not isinstance(input_, torch.Tensor) or input_.dim() != 1
                or input_.dtype != torch.uint8):
            raise TypeError(
                'PackImageBytes packs the encoded file as a 1-D uint8 '
                f'array (LoadImageBytes), got {type(input_).__name__} '
                f'{getattr(input_, "dtype", "")} of shape '
                f'{tuple(getattr(input_, "shape", ()))}; use PackInputs '
                'for decoded images.')
        return input_
