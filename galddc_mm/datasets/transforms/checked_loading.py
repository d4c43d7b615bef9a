# Copyright (c) galddc_mm contributors. All rights reserved.
import logging
from typing import Optional

import mmcv
import mmengine.fileio as fileio
import numpy as np
from mmcv.transforms import LoadImageFromFile
from mmengine.logging import print_log
from mmpretrain.registry import TRANSFORMS

ON_ERROR = ('raise', 'skip')


class UnreadableImageError(ValueError):
    """An image file of the data set is missing, truncated or undecodable.

    Args:
        filename (str): The image.
        reason (str): What is wrong with it.
    """

    def __init__(self, filename: str, reason: str):
        self.filename = filename
        self.reason = reason
        super().__init__(
            f'Image {filename} {reason}. Replace it or remove it from the '
            "data list, or set on_error='skip' in CheckedLoadImageFromFile "
            'to skip unreadable images with a warning (training only).')


def _explain(data: bytes) -> str:
    """Why ``data`` did not decode, from its first and last bytes."""
    if not data:
        return 'is empty (0 bytes)'
    if data[:3] == b'\xff\xd8\xff':
        # The end-of-image marker FFD9 cannot occur inside the entropy
        # coded data (0xFF there is always followed by 0x00 or RSTn).
        if b'\xff\xd9' not in data[-1024:]:
            return ('is truncated: a JPEG without its end-of-image marker '
                    f'({len(data)} bytes; the file was cut short)')
        return f'is a damaged JPEG ({len(data)} bytes) that cannot be decoded'
    if data[:8] == b'\x89PNG\r\n\x1a\n':
        if b'IEND' not in data[-16:]:
            return ('is truncated: a PNG without its IEND chunk '
                    f'({len(data)} bytes; the file was cut short)')
        return f'is a damaged PNG ({len(data)} bytes) that cannot be decoded'
    return (f'is not an image the decoder can read ({len(data)} bytes '
            f'starting with {data[:8]!r})')


@TRANSFORMS.register_module()
class CheckedLoadImageFromFile(LoadImageFromFile):
    """``LoadImageFromFile`` with clear errors for unreadable images.

    mmcv's ``LoadImageFromFile`` (the one mmpretrain uses) reports an image
    that does not decode (truncated, damaged, not an image) with a bare
    ``AssertionError: failed to load image: <file>`` (or, with
    ``python -O``, a later ``AttributeError`` on ``None``), and an empty
    file with OpenCV's ``!buf.empty()`` assertion, which does not name the
    file. This transform loads the same way (same arguments and outputs)
    and on failure either raises :class:`UnreadableImageError` naming the
    file and the problem (missing, empty, truncated JPEG/PNG, undecodable)
    or, with ``on_error='skip'``, logs a warning and returns None.

    A None result makes mmengine's ``BaseDataset`` draw another random
    sample instead (up to ``max_refetch`` times), which is only allowed for
    training (a data set in ``test_mode`` raises). GALD-DC's latent cache
    needs every training image: a skipped image there stops the run at
    stage-2 entry with a message saying the cache is incomplete; remove
    the files the warnings name from the data list.

    Args:
        on_error (str): ``'raise'`` or ``'skip'``. Defaults to ``'raise'``.
        **kwargs: The arguments of mmcv's ``LoadImageFromFile``
            (``to_float32``, ``color_type``, ``imdecode_backend``,
            ``backend_args``, ...). ``ignore_empty`` is replaced by
            ``on_error``.
    """

    def __init__(self, on_error: str = 'raise', **kwargs):
        if on_error not in ON_ERROR:
            raise ValueError(f'on_error must be one of {ON_ERROR}, got '
                             f'{on_error!r}.')
        if kwargs.pop('ignore_empty', False):
            raise ValueError("CheckedLoadImageFromFile replaces "
                             "ignore_empty=True by on_error='skip'.")
        super().__init__(**kwargs)
        self.on_error = on_error

    def _read(self, filename: str) -> bytes:
        if self.file_client_args is not None:
            client = fileio.FileClient.infer_client(self.file_client_args,
                                                    filename)
            return client.get(filename)
        return fileio.get(filename, backend_args=self.backend_args)

    def _load(self, filename: str) -> np.ndarray:
        try:
            data = self._read(filename)
        except FileNotFoundError:
            raise UnreadableImageError(filename, 'does not exist') from None
        except OSError as err:
            raise UnreadableImageError(
                filename, f'cannot be read ({err})') from None
        img = None
        if data:  # OpenCV asserts on an empty buffer without the name
            try:
                img = mmcv.imfrombytes(
                    data,
                    flag=self.color_type,
                    backend=self.imdecode_backend)
            except Exception as err:  # e.g. PIL's "image file is truncated"
                reason = _explain(data)
                raise UnreadableImageError(
                    filename, f'{reason} ({type(err).__name__}: {err})'
                ) from None
        if img is None:
            raise UnreadableImageError(filename, _explain(data))
        return img

    def transform(self, results: dict) -> Optional[dict]:
        """Load ``results['img_path']`` into ``results['img']``.

        Args:
            results (dict): With ``img_path``.

        Returns:
            dict | None: ``results`` with ``img``, ``img_shape`` and
            ``ori_shape``; None for a skipped image.
        """
        try:
            img = self._load(results['img_path'])
        except UnreadableImageError as err:
            if self.on_error == 'raise':
                raise
            print_log(
                f'Skipped image {err.filename}: it {err.reason}.',
                logger='current',
                level=logging.WARNING)
            return None
        if self.to_float32:
            img = img.astype(np.float32)
        results['img'] = img
        results['img_shape'] = img.shape[:2]
        results['ori_shape'] = img.shape[:2]
        return results

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", on_error='{self.on_error}')"
