# Copyright (c) galddc_mm contributors. All rights reserved.
"""Input checks and small numerics shared by the GALD-DC losses."""
from contextlib import contextmanager
from typing import Optional

import torch


def zero_loss(x: torch.Tensor) -> torch.Tensor:
    """A 0-dim zero connected to the autograd graph of ``x``.

    ``F.mse_loss`` and friends return NaN on an empty batch (0 / 0). The
    losses return this instead, so a rank that drew no sample of a kind
    still yields a finite loss that ``backward()`` accepts: when ``x``
    requires grad the zero has a ``grad_fn`` (and a zero gradient).

    Args:
        x (torch.Tensor): The (possibly empty) floating-point loss input.

    Returns:
        torch.Tensor: ``x.sum() * 0``, a 0-dim tensor.
    """
    return x.sum() * 0.


@contextmanager
def float32_geometry(device_type: str):
    """Run distances and radii in float32, whatever the autocast state.

    Inside the optimiser's autocast, matrix products run in bf16/fp16, and
    distance expansions such as ``||z||^2 - 2 z.mu + ||mu||^2`` cancel
    catastrophically there (on 2048-d latents with ``||mu||^2 ~ 550`` a
    squared distance of 0 comes out near 2 in bf16). The geometry losses
    and statistics open this context and cast their inputs to float32.

    Args:
        device_type (str): The inputs' device type (``'cuda'``, ``'cpu'``).
    """
    with torch.autocast(device_type, enabled=False):
        yield


def geometry_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float32, or float64 when an input is float64 (never 16-bit)."""
    dtype = torch.float32
    for tensor in tensors:
        dtype = torch.promote_types(dtype, tensor.dtype)
    return dtype


def check_same_shape(name: str, a: torch.Tensor, b_name: str,
                     b: torch.Tensor) -> None:
    """Raise a clear ``ValueError`` unless two tensors share one shape."""
    if a.shape != b.shape:
        raise ValueError(f'`{name}` and `{b_name}` must have the same '
                         f'shape, but got {tuple(a.shape)} and '
                         f'{tuple(b.shape)}.')


def check_labels(labels: torch.Tensor,
                 batch_size: int,
                 num_classes: Optional[int] = None,
                 name: str = 'labels') -> None:
    """Check class-index labels against the batch and the class count.

    Shape and dtype are always checked. The value range needs the labels'
    minimum and maximum on the host, a device synchronisation that costs
    more than a whole loss on a GPU, so it is checked only for labels on
    the CPU (tests, CPU runs, debugging). On an accelerator an
    out-of-range label still fails, as an indexing error (a device-side
    assert on CUDA); run the step on CPU to get this message.

    Args:
        labels (torch.Tensor): Class indices, shape ``(B,)``.
        batch_size (int): The expected ``B``.
        num_classes (int, optional): When given, every label must lie in
            ``[0, num_classes)``. Defaults to None.
        name (str): Name of the argument in messages. Defaults to 'labels'.
    """
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f'`{name}` must be a torch.Tensor of class indices, '
                        f'but got {type(labels).__name__}.')
    if labels.dim() != 1 or labels.shape[0] != batch_size:
        raise ValueError(f'`{name}` must have shape ({batch_size},) (one '
                         f'class index per sample), but got '
                         f'{tuple(labels.shape)}.')
    if labels.is_floating_point() or labels.is_complex() \
            or labels.dtype == torch.bool:
        raise TypeError(f'`{name}` must hold integer class indices, but got '
                        f'dtype {labels.dtype}; convert one-hot or soft '
                        f'labels with `argmax(dim=1)`.')
    if (num_classes is not None and labels.numel() > 0
            and labels.device.type == 'cpu'):
        lo, hi = (int(v) for v in torch.aminmax(labels))
        if lo < 0 or hi >= num_classes:
            raise ValueError(f'`{name}` must lie in [0, {num_classes}) '
                             f'(num_classes={num_classes}), but got values '
                             f'in [{lo}, {hi}].')


def check_latents_and_prototypes(z: torch.Tensor, labels: torch.Tensor,
                                 prototypes: torch.Tensor) -> None:
    """Check ``z`` (B, D), ``labels`` (B,) and ``prototypes`` (K, D)."""
    if z.dim() != 2:
        raise ValueError('`z0_hat` must be a 2-D tensor of latents (B, D), '
                         f'but got shape {tuple(z.shape)}; flatten pooled '
                         'features first.')
    if prototypes.dim() != 2 or prototypes.shape[1] != z.shape[1]:
        raise ValueError('`prototypes` must have shape (K, D) with the '
                         f'latent dimension D={z.shape[1]} of `z0_hat`, '
                         f'but got {tuple(prototypes.shape)}.')
    check_labels(labels, z.shape[0], prototypes.shape[0])
