# Copyright (c) galddc_mm contributors. All rights reserved.
"""Crop geometry of the GPU-decode path, for a batch at once.

Where ``RandomResizedCrop`` and ``ResizeEdge`` + ``CenterCrop`` read an
image (:func:`sample_crop_boxes`, :func:`center_resize_box`), and the
bilinear resampling of those windows for a whole batch of images of
different sizes (:func:`resample_bilinear`).
"""
import math
from typing import Optional, Sequence, Tuple

import torch


def sample_crop_boxes(sizes: torch.Tensor,
                      scale: Tuple[float, float] = (0.08, 1.0),
                      ratio: Tuple[float, float] = (3. / 4., 4. / 3.),
                      max_attempts: int = 10,
                      generator: Optional[torch.Generator] = None
                      ) -> torch.Tensor:
    """Crop boxes of ``RandomResizedCrop``, for a batch of image sizes.

    The distribution of mmpretrain's ``RandomResizedCrop.rand_crop_params``
    drawn for every image at once: up to ``max_attempts`` tries of an area
    ``a ~ U(scale) * H * W`` and an aspect ratio ``r = exp(U(log ratio))``
    give ``w = round(sqrt(a r))``, ``h = round(sqrt(a / r))`` (round half
    to even, as Python's ``round``); the first try that fits is placed at
    a uniform offset, and an image where none fits gets the central crop
    of the largest box whose aspect ratio is clipped to ``ratio`` (the
    whole image when its own ratio is within). All tries are drawn even
    when an early one fits: each image's crop has the same distribution,
    only the number of draws differs from mmpretrain's.

    Args:
        sizes (torch.Tensor): ``(B, 2)`` image sizes ``(H, W)``.
        scale (tuple[float, float]): Range of the area fraction.
            Defaults to (0.08, 1.0).
        ratio (tuple[float, float]): Range of the aspect ratio w / h.
            Defaults to (3/4, 4/3).
        max_attempts (int): Tries before the central crop. Defaults to 10.
        generator (torch.Generator, optional): The CPU random generator.
            Defaults to None (the global one).

    Returns:
        torch.Tensor: ``(B, 4)`` int64 boxes ``(top, left, height, width)``.
    """
    sizes = torch.as_tensor(sizes, dtype=torch.float64).reshape(-1, 2)
    n = sizes.size(0)
    h, w = sizes[:, 0], sizes[:, 1]
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])

    if max_attempts > 0:
        u = torch.rand(n, max_attempts, 2, dtype=torch.float64,
                       generator=generator)
        img_area = (h * w)[:, None]
        area = (scale[0] + (scale[1] - scale[0]) * u[..., 0]) * img_area
        aspect = torch.exp(log_lo + (log_hi - log_lo) * u[..., 1])
        tw = torch.round(torch.sqrt(area * aspect))
        th = torch.round(torch.sqrt(area / aspect))
        fits = (tw > 0) & (tw <= w[:, None]) & (th > 0) & (th <= h[:, None])
        # The first try that fits (argmax returns the first maximum).
        first = fits.to(torch.uint8).argmax(1, keepdim=True)
        found = fits.any(1)
        crop_h, crop_w = th.gather(1, first)[:, 0], tw.gather(1, first)[:, 0]
    else:
        found = torch.zeros(n, dtype=torch.bool)
        crop_h, crop_w = h.clone(), w.clone()

    # Central fall-back: clip the image's aspect ratio to ``ratio``.
    in_ratio = w / h
    lo_r, hi_r = min(ratio), max(ratio)
    fb_w = torch.where(in_ratio < lo_r, w,
                       torch.where(in_ratio > hi_r, torch.round(h * hi_r), w))
    fb_h = torch.where(in_ratio < lo_r, torch.round(w / lo_r), h)
    crop_h = torch.where(found, crop_h, fb_h)
    crop_w = torch.where(found, crop_w, fb_w)

    # Uniform integer offsets in [0, H - h] (np.random.randint(0, H-h+1)).
    v = torch.rand(n, 2, dtype=torch.float64, generator=generator)
    top = torch.minimum(torch.floor(v[:, 0] * (h - crop_h + 1)), h - crop_h)
    left = torch.minimum(torch.floor(v[:, 1] * (w - crop_w + 1)), w - crop_w)
    top = torch.where(found, top, torch.floor((h - crop_h) / 2))
    left = torch.where(found, left, torch.floor((w - crop_w) / 2))
    return torch.stack([top, left, crop_h, crop_w], 1).long()


def center_resize_box(height: int, width: int, edge: int,
                      crop: Tuple[int, int]) -> Tuple[int, int, int, int]:
    """``ResizeEdge(edge, 'short')`` + ``CenterCrop(crop)`` geometry.

    As mmpretrain's ``ResizeEdge`` (the long side truncated by ``int``)
    and mmcv's ``CenterCrop`` (offset ``round((size - crop) / 2)``).

    Args:
        height (int): Image height.
        width (int): Image width.
        edge (int): Target short edge.
        crop (tuple[int, int]): Crop ``(h, w)``; at most the resized size.

    Returns:
        tuple: ``(resized_h, resized_w, top, left)``.
    """
    if width < height:
        new_w, new_h = edge, int(edge * height / width)
    else:
        new_h, new_w = edge, int(edge * width / height)
    top = max(0, int(round((new_h - crop[0]) / 2.)))
    left = max(0, int(round((new_w - crop[1]) / 2.)))
    return new_h, new_w, top, left


def resample_bilinear(images: Sequence[torch.Tensor],
                      windows: torch.Tensor,
                      bounds: torch.Tensor,
                      size: Tuple[int, int]) -> torch.Tensor:
    """Bilinear resampling of one window of each image, for a whole batch.

    Output pixel ``(i, j)`` of image ``n`` reads the image at

    ``y = top + (i + 0.5) * height / out_h - 0.5`` (``x`` likewise),

    clamped to the pixels of ``bounds[n]``, from the 2x2 nearest pixels:
    cv2's ``INTER_LINEAR`` and ``F.interpolate(align_corners=False)``
    without antialiasing. ``RandomResizedCrop`` is a window and bounds on
    the crop box (cv2 resizes the cropped image, so it clamps at the
    crop's edges); ``ResizeEdge`` + ``CenterCrop`` is a window scaled by
    the resize and bounded by the whole image. A negative width mirrors
    the window (``left + width`` and ``-width`` for a flipped crop).

    The images may differ in size: they are read from one flat buffer
    with computed indices, so the batch costs a dozen kernels instead of
    a few per image.

    Args:
        images (Sequence[torch.Tensor]): ``(C, H, W)`` uint8 or float
            images on one device.
        windows (torch.Tensor): ``(B, 4)`` ``(top, left, height, width)``
            in pixels (float).
        bounds (torch.Tensor): ``(B, 4)`` integer ``(top, left, height,
            width)`` of the pixels that may be read.
        size (tuple[int, int]): Output ``(h, w)``.

    Returns:
        torch.Tensor: ``(B, C, h, w)`` float32 on the images' device.
    """
    out_h, out_w = size
    device = images[0].device
    channels = images[0].size(0)
    hw = torch.tensor([img.shape[-2:] for img in images], dtype=torch.float64)
    planes = hw[:, 0] * hw[:, 1]
    starts = torch.cumsum(channels * planes, 0) - channels * planes
    # The per-image numbers in one host-to-device copy for the batch.
    params = torch.cat([
        torch.as_tensor(windows, dtype=torch.float64).reshape(-1, 4),
        torch.as_tensor(bounds, dtype=torch.float64).reshape(-1, 4),
        hw[:, 1:], planes[:, None], starts[:, None]
    ], 1).to(device)
    win, bnd = params[:, :4], params[:, 4:8]
    width, plane, start = params[:, 8:9], params[:, 9], params[:, 10]

    def axis(first, extent, lo, count, n_out):
        pos = torch.arange(n_out, device=device, dtype=torch.float64) + 0.5
        coord = first + pos * (extent / n_out) - 0.5
        hi = lo + count - 1
        coord = torch.minimum(torch.maximum(coord, lo), hi)
        low = coord.floor()
        return (low.long(), torch.minimum(low + 1, hi).long(),
                (coord - low).float())

    y0, y1, wy = axis(win[:, 0:1], win[:, 2:3], bnd[:, 0:1], bnd[:, 2:3],
                      out_h)
    x0, x1, wx = axis(win[:, 1:2], win[:, 3:4], bnd[:, 1:2], bnd[:, 3:4],
                      out_w)
    flat = torch.cat([img.reshape(-1) for img in images])
    chan = torch.arange(channels, device=device, dtype=torch.float64)
    base = (start[:, None] + plane[:, None] * chan).long()[:, :, None, None]
    width = width.long()

    def read(rows, cols):
        index = base + (rows * width)[:, None, :, None] + cols[:, None, None]
        return flat[index].float()

    top = torch.lerp(read(y0, x0), read(y0, x1), wx[:, None, None])
    bottom = torch.lerp(read(y1, x0), read(y1, x1), wx[:, None, None])
    return torch.lerp(top, bottom, wy[:, None, :, None])
