# Copyright (c) galddc_mm contributors. All rights reserved.
"""Decode JPEG bytes and augment on the model's device.

The CPU pipeline of ImageNet-LT (cv2 decode, ``RandomResizedCrop``,
``RandomFlip``, ``PackInputs``) is bound by the CPU cores on a machine
with few cores per GPU. With ``LoadImageBytes`` + ``PackImageBytes`` the
workers only read the files, and :class:`GPUDecodeClsDataPreprocessor`
decodes the batch with nvJPEG and crops, resizes and flips it on the GPU,
drawing the crops from the same distribution as mmpretrain's
``RandomResizedCrop``.
"""
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from mmengine.dist import get_dist_info
from mmpretrain.models.utils import ClsDataPreprocessor
from mmpretrain.registry import MODELS
from mmpretrain.structures import (
    DataSample,
    batch_label_to_onehot,
    cat_batch_labels,
    tensor_split,
)

from galddc_mm.datasets.encoded_images import (
    EncodedImages,
    decode_files,
    is_encoded_file,
    sample_names,
)

from .crop_geometry import (
    center_resize_box,
    resample_bilinear,
    sample_crop_boxes,
)

INTERPOLATIONS = ('nearest', 'bilinear', 'bicubic')


def _pair(size: Union[int, Sequence[int]]) -> Tuple[int, int]:
    if isinstance(size, int):
        return size, size
    if len(size) != 2:
        raise ValueError(f'A size is an int or (h, w), got {size}.')
    return int(size[0]), int(size[1])


def _is_byte_batch(inputs) -> bool:
    """Whether ``inputs`` are encoded files: an :class:`EncodedImages` or
    a list of 1-D uint8 tensors."""
    if isinstance(inputs, EncodedImages):
        return True
    return (isinstance(inputs, (list, tuple)) and len(inputs) > 0
            and all(is_encoded_file(x) for x in inputs))


@MODELS.register_module()
class GPUDecodeClsDataPreprocessor(ClsDataPreprocessor):
    """``ClsDataPreprocessor`` that also decodes and augments JPEG bytes.

    Given a batch of encoded files (an
    :class:`~galddc_mm.datasets.EncodedImages` from ``LoadImageBytes`` +
    ``PackImageBytes`` and :func:`~galddc_mm.datasets.encoded_collate`,
    possibly decoded already in the loader's pin-memory thread; or a list
    of 1-D ``uint8`` tensors from ``pseudo_collate``), it decodes them with
    ``torchvision.io.decode_jpeg(..., device=self.device)`` (nvJPEG,
    batched, on CUDA; libjpeg on the CPU, which is the fall-back and what
    the tests run) and then, for the whole batch at once
    (:func:`resample_bilinear`),

    * training: crops a box drawn as mmpretrain's ``RandomResizedCrop``
      (:func:`sample_crop_boxes`), resizes it to ``crop_size`` and flips
      it horizontally with probability ``flip_prob`` (``RandomFlip``);
    * evaluation: resizes the short edge to ``eval_resize_edge`` and
      crops the centre ``crop_size`` (``ResizeEdge`` + ``CenterCrop`` of
      the test pipeline).

    The crops are drawn on the CPU from a ``torch.Generator`` seeded, once
    per batch, from the global torch RNG and the rank, so mmengine's
    ``randomness.seed`` makes runs reproducible; boxes are drawn before
    flips, so ``flip_prob`` does not change the boxes of a seed. The
    batch is then normalised with ``mean``/``std`` (as
    ``ClsDataPreprocessor``) and returned with its data samples, whose
    ``ori_shape``, ``img_shape`` (and in training ``flip``,
    ``flip_direction``) are set.

    Any other input (decoded images from the CPU pipelines, e.g. the
    val/test pipelines of the same config) goes to
    ``ClsDataPreprocessor.forward`` unchanged.

    Colour order: ``decode_jpeg`` gives RGB, so ``to_rgb`` is ignored for
    bytes. Keep ``to_rgb=True`` in a config whose val/test pipelines load
    with cv2 (BGR): it applies to those decoded images only.

    Resizing: bilinear in float with cv2's half-pixel centres (what
    ``F.interpolate(align_corners=False)`` computes; the other
    interpolations and ``antialias`` go through ``F.interpolate`` image by
    image). With the default ``antialias=False`` this
    is cv2's ``INTER_LINEAR`` (which reads the 2x2 nearest pixels also
    when downscaling) up to cv2's 11-bit fixed-point weights and its
    rounding to ``uint8`` before normalisation: on test JPEGs the
    evaluation crops differ from the CPU pipeline's by ~0.2 grey levels
    on average (libjpeg-turbo on the CPU decodes bit-identically to cv2;
    nvJPEG's IDCT may differ by a grey level or so). ``antialias=True``
    filters like PIL and torchvision (a triangle kernel widened by the
    downscale factor, applied only when a side is downscaled): smoother,
    and visibly different from cv2 on noisy or detailed images (mean
    ~2 grey levels, ~36 at most on a noisy test image for 1.5x
    downscaling), so it changes the augmentation's pixel statistics and
    should not be mixed with cv2 val/test pipelines.
    EXIF orientation is not applied (nvJPEG cannot; cv2's ``imdecode``
    does), which matters for few photos outside ImageNet.

    A file nvJPEG cannot decode (CMYK or other unusual JPEGs, a PNG named
    ``.JPEG`` such as one ImageNet training image) makes the batched call
    fail as a whole; the batch is then decoded image by image and each
    file that fails on the device is decoded on the CPU
    (``torchvision.io.decode_image``, then cv2) and moved to the device.
    A file nothing decodes raises
    :class:`~galddc_mm.datasets.UnreadableImageError` naming it.

    Args:
        crop_size (int | tuple[int, int]): Output ``(h, w)``. Defaults to
            224.
        scale (tuple[float, float]): Area fraction range of the random
            crop (``RandomResizedCrop.crop_ratio_range``). Defaults to
            (0.08, 1.0).
        ratio (tuple[float, float]): Aspect ratio range of the random crop
            (``aspect_ratio_range``). Defaults to (3/4, 4/3).
        max_attempts (int): Tries before the central crop. Defaults to 10.
        flip_prob (float): Probability of a horizontal flip in training.
            Defaults to 0.5.
        eval_resize_edge (int): Short edge before the evaluation centre
            crop; at least the crop size. Defaults to 256.
        interpolation (str): ``'nearest'``, ``'bilinear'`` or
            ``'bicubic'``. Defaults to ``'bilinear'``.
        antialias (bool): Antialias when downscaling (not cv2's
            behaviour, see above). Defaults to False.
        batched (bool): Resample the whole batch at once
            (:func:`resample_bilinear`; bilinear without antialiasing
            only, other settings go image by image). False resizes image
            by image with ``F.interpolate``, the same numbers up to float
            rounding, a few kernels per image. Defaults to True.
        mean, std, pad_size_divisor, pad_value, to_rgb, to_onehot,
            num_classes: As ``ClsDataPreprocessor``; ``to_rgb`` and the
            padding only for decoded (non-byte) inputs.
        batch_augments (dict, optional): Not supported (must be None).
        non_blocking (bool): Non-blocking copies of decoded inputs.
            Defaults to False.
    """

    def __init__(self,
                 crop_size: Union[int, Sequence[int]] = 224,
                 scale: Tuple[float, float] = (0.08, 1.0),
                 ratio: Tuple[float, float] = (3. / 4., 4. / 3.),
                 max_attempts: int = 10,
                 flip_prob: float = 0.5,
                 eval_resize_edge: int = 256,
                 interpolation: str = 'bilinear',
                 antialias: bool = False,
                 batched: bool = True,
                 mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None,
                 pad_size_divisor: int = 1,
                 pad_value: float = 0,
                 to_rgb: bool = False,
                 to_onehot: bool = False,
                 num_classes: Optional[int] = None,
                 batch_augments: Optional[dict] = None,
                 non_blocking: bool = False):
        if batch_augments:
            raise ValueError(
                'GPUDecodeClsDataPreprocessor does not support '
                'batch_augments (Mixup/CutMix); use ClsDataPreprocessor '
                'with the CPU pipeline, or set batch_augments=None (and '
                'model.train_cfg=None, which ImageClassifier passes as '
                'batch_augments).')
        super().__init__(
            mean=mean,
            std=std,
            pad_size_divisor=pad_size_divisor,
            pad_value=pad_value,
            to_rgb=to_rgb,
            to_onehot=to_onehot,
            num_classes=num_classes,
            batch_augments=None)
        self._non_blocking = non_blocking
        self.crop_size = _pair(crop_size)
        if not (0 < scale[0] <= scale[1]) or not (0 < ratio[0] <= ratio[1]):
            raise ValueError('scale and ratio are (min, max) ranges of '
                             f'positive numbers, got {scale} and {ratio}.')
        if not 0 <= flip_prob <= 1:
            raise ValueError(f'flip_prob must be in [0, 1], got {flip_prob}.')
        if eval_resize_edge < max(self.crop_size):
            raise ValueError(
                f'eval_resize_edge={eval_resize_edge} is smaller than the '
                f'centre crop {self.crop_size}.')
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f'interpolation must be one of {INTERPOLATIONS}'
                             f', got {interpolation!r}.')
        self.scale = tuple(scale)
        self.ratio = tuple(ratio)
        self.max_attempts = int(max_attempts)
        self.flip_prob = float(flip_prob)
        self.eval_resize_edge = int(eval_resize_edge)
        self.interpolation = interpolation
        self.antialias = antialias
        self.batched = bool(batched)

    # ------------------------------------------------------------------
    # randomness and geometry
    # ------------------------------------------------------------------
    def make_generator(self) -> torch.Generator:
        """This batch's CPU generator: a seed from the global torch RNG.

        The rank is mixed in so that the ranks of a run (seeded alike by
        mmengine unless ``diff_rank_seed``) draw different crops.
        """
        seed = int(torch.randint(0, 2**62, (1, )).item())
        rank = get_dist_info()[0]
        # 0x9E3779B97F4A7C15: the 64-bit golden-ratio increment.
        seed = (seed + rank * 0x9E3779B97F4A7C15) % 2**63
        return torch.Generator().manual_seed(seed)

    def _resize(self, img: torch.Tensor,
                size: Tuple[int, int]) -> torch.Tensor:
        """Resize a ``(3, h, w)`` image to ``size``, float ``(3, *size)``."""
        x = img[None].float()
        if tuple(x.shape[-2:]) == tuple(size):
            return x[0]
        kwargs = {}
        if self.interpolation != 'nearest':
            down = x.size(-2) > size[0] or x.size(-1) > size[1]
            kwargs = dict(align_corners=False,
                          antialias=self.antialias and down)
        x = F.interpolate(x, size=size, mode=self.interpolation, **kwargs)
        if self.interpolation == 'bicubic':
            x = x.clamp_(0, 255)  # cubic overshoot, as cv2's saturation
        return x[0]

    # ------------------------------------------------------------------
    # decoding
    # ------------------------------------------------------------------
    def decode(self, data: List[torch.Tensor],
               names: Optional[Sequence[str]] = None) -> List[torch.Tensor]:
        """Decode encoded files to ``(3, H, W)`` uint8 RGB on the device.

        See :func:`~galddc_mm.datasets.encoded_images.decode_files` (nvJPEG
        on CUDA, with a CPU fall-back per file).

        Args:
            data (list[torch.Tensor]): 1-D uint8 CPU tensors.
            names (Sequence[str], optional): File names, for errors.

        Returns:
            list[torch.Tensor]: RGB images on ``self.device``.
        """
        return decode_files(data, self.device, names)

    # ------------------------------------------------------------------
    # forward
    # ------------------------------------------------------------------
    def forward(self, data: dict, training: bool = False) -> dict:
        """Decode and augment bytes, or preprocess decoded images.

        Args:
            data (dict): A collated batch: ``inputs`` (a list of 1-D uint8
                tensors, or decoded images) and ``data_samples``.
            training (bool): Random crop and flip (True) or resize and
                centre crop (False).

        Returns:
            dict: ``inputs`` ``(B, 3, h, w)`` float, normalised, on the
            device, and ``data_samples``.
        """
        if not _is_byte_batch(data['inputs']):
            return super().forward(data, training)
        samples = data.get('data_samples', None)
        if isinstance(data['inputs'], EncodedImages):
            # Decoded in the loader's pin-memory thread already, or here.
            images = data['inputs'].decode(self.device)
        else:
            images = self.decode(list(data['inputs']), sample_names(samples))
        inputs, metas = self._augment(images, training)
        if self._enable_normalize:
            inputs = (inputs - self.mean) / self.std
        if samples is not None:
            for sample, meta in zip(samples, metas):
                # set_field, not set_metainfo: the latter deep-copies
                # (~0.1 ms a sample, a quarter of the batch's time on an
                # H200); the values here are immutable.
                for key, value in meta.items():
                    sample.set_field(value, key, field_type='metainfo')
            samples = self._cast_samples(samples)
        return {'inputs': inputs, 'data_samples': samples}

    def _augment(self, images: List[torch.Tensor],
                 training: bool) -> Tuple[torch.Tensor, List[dict]]:
        """Crop, resize (and in training flip) decoded images to a batch.

        Returns:
            tuple: ``(B, 3, h, w)`` float crops (not yet normalised) and
            each sample's metainfo.
        """
        out_h, out_w = self.crop_size
        sizes = torch.tensor([img.shape[-2:] for img in images])
        metas = [
            dict(ori_shape=tuple(s.tolist()), img_shape=self.crop_size)
            for s in sizes
        ]
        batched = (self.batched and self.interpolation == 'bilinear'
                   and not self.antialias)
        if training:
            gen = self.make_generator()
            boxes = sample_crop_boxes(sizes, self.scale, self.ratio,
                                      self.max_attempts, gen)
            flips = torch.rand(len(images), generator=gen) < self.flip_prob
            if batched:
                windows = boxes.double()
                # A flip is the window read right to left.
                windows[flips, 1] += windows[flips, 3]
                windows[flips, 3] *= -1
                inputs = resample_bilinear(images, windows, boxes,
                                           self.crop_size)
            else:
                inputs = torch.stack([
                    self._resize(img[:, y:y + h, x:x + w], (out_h, out_w))
                    for img, (y, x, h, w) in zip(images, boxes.tolist())
                ])
                if flips.any():
                    idx = flips.nonzero()[:, 0].to(inputs.device)
                    inputs[idx] = inputs[idx].flip(-1)
            for meta, flip in zip(metas, flips.tolist()):
                meta.update(flip=flip,
                            flip_direction='horizontal' if flip else None)
        elif batched:
            windows, bounds = [], []
            for h, w in sizes.tolist():
                new_h, new_w, top, left = center_resize_box(
                    h, w, self.eval_resize_edge, self.crop_size)
                sy, sx = h / new_h, w / new_w
                windows.append((top * sy, left * sx, out_h * sy, out_w * sx))
                bounds.append((0, 0, h, w))
            inputs = resample_bilinear(
                images, torch.tensor(windows, dtype=torch.float64),
                torch.tensor(bounds), self.crop_size)
        else:
            crops = []
            for img in images:
                new_h, new_w, top, left = center_resize_box(
                    img.size(-2), img.size(-1), self.eval_resize_edge,
                    self.crop_size)
                img = self._resize(img, (new_h, new_w))
                crops.append(img[:, top:top + out_h, left:left + out_w])
            inputs = torch.stack(crops)
        return inputs.contiguous(), metas

    def _cast_samples(self, samples: List[DataSample]) -> List[DataSample]:
        """Labels (and one-hot scores) to the device, as the parent does."""
        item = samples[0]
        if not isinstance(item, DataSample):
            return self.cast_data(samples)
        batch_label = batch_score = None
        if 'gt_label' in item:
            batch_label, label_indices = cat_batch_labels(
                [s.gt_label for s in samples])
            batch_label = batch_label.to(self.device)
        if 'gt_score' in item:
            batch_score = torch.stack([s.gt_score for s in samples
                                       ]).to(self.device)
        elif self.to_onehot and batch_label is not None:
            num_classes = self.num_classes or item.get('num_classes')
            assert num_classes is not None, \
                'Cannot generate one-hot labels: set num_classes in the ' \
                'data preprocessor.'
            batch_score = batch_label_to_onehot(batch_label, label_indices,
                                                num_classes).to(self.device)
        if batch_label is not None:
            for s, label in zip(samples,
                                tensor_split(batch_label, label_indices)):
                s.set_gt_label(label)
        if batch_score is not None:
            for s, score in zip(samples, batch_score):
                s.set_gt_score(score)
        return samples
