# Copyright (c) galddc_mm contributors. All rights reserved.
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmpretrain.registry import MODELS

from .utils import check_labels

REDUCTIONS = ('none', 'mean', 'sum')


@MODELS.register_module()
class LabelSmoothCELoss(nn.Module):
    r"""Label-smoothing cross-entropy with no host-device synchronisation.

    The value of mmpretrain's ``LabelSmoothLoss(mode='original')``: with
    :math:`K` classes, smoothing :math:`\epsilon` and logits :math:`s_i`,

    .. math::
        \ell_i = -\sum_{k=1}^{K} \left[(1 - \epsilon)\, q_{ik}
            + \frac{\epsilon}{K}\right] \log \mathrm{softmax}(s_i)_k,

    where :math:`q_i` is the one-hot vector of the class index :math:`y_i`
    (or a given soft label), computed by ``F.cross_entropy(...,
    label_smoothing=eps)``. Upstream's loss first checks
    ``torch.max(label).item() < K``: a synchronisation in the middle of
    every training step, after the forward pass, which leaves the GPU idle
    while the host launches the backward pass (2-3 ms, 4-5% of a ResNet-50
    step at batch 256 on an H200, see docs/benchmarks.md). Here the range
    is checked on CPU tensors only; on a GPU an out-of-range label fails
    as an indexing error.

    Args:
        label_smooth_val (float): :math:`\epsilon` in [0, 1).
            Defaults to 0.1.
        loss_weight (float): Weight of the loss. Defaults to 1.0.
        reduction (str): ``'none'``, ``'mean'`` or ``'sum'``.
            Defaults to ``'mean'``.
    """

    def __init__(self,
                 label_smooth_val: float = 0.1,
                 loss_weight: float = 1.0,
                 reduction: str = 'mean') -> None:
        super().__init__()
        if not 0 <= label_smooth_val < 1:
            raise ValueError('`label_smooth_val` must lie in [0, 1), but '
                             f'got {label_smooth_val}.')
        if reduction not in REDUCTIONS:
            raise ValueError(f'`reduction` must be one of {REDUCTIONS}, but '
                             f'got {reduction!r}.')
        self.label_smooth_val = label_smooth_val
        self.loss_weight = loss_weight
        self.reduction = reduction

    def forward(self,
                cls_score: torch.Tensor,
                label: torch.Tensor,
                weight: Optional[torch.Tensor] = None,
                avg_factor: Optional[float] = None,
                reduction_override: Optional[str] = None,
                **kwargs) -> torch.Tensor:
        """Compute the loss.

        Args:
            cls_score (torch.Tensor): Logits, shape (N, K).
            label (torch.Tensor): Class indices (N,) or soft labels (N, K).
            weight (torch.Tensor, optional): Per-sample weights (N,).
                Defaults to None.
            avg_factor (float, optional): Divisor of the summed loss for
                ``'mean'`` (mmpretrain's heads pass the batch size).
                Defaults to None (the number of samples).
            reduction_override (str, optional): Overrides ``reduction``.

        Returns:
            torch.Tensor: The weighted loss.
        """
        reduction = reduction_override or self.reduction
        if reduction not in REDUCTIONS:
            raise ValueError(f'`reduction_override` must be one of '
                             f'{REDUCTIONS}, but got {reduction!r}.')
        if cls_score.dim() != 2:
            raise ValueError('`cls_score` must have shape (N, K), but got '
                             f'{tuple(cls_score.shape)}.')
        if label.dim() == 2:
            if label.shape != cls_score.shape:
                raise ValueError('Soft labels must have the shape of '
                                 f'`cls_score` {tuple(cls_score.shape)}, '
                                 f'but got {tuple(label.shape)}.')
            target = label.to(cls_score.dtype)
        else:
            label = label.reshape(-1)
            check_labels(label, cls_score.shape[0], cls_score.shape[1],
                         name='label')
            target = label.long()
        loss = F.cross_entropy(
            cls_score, target, reduction='none',
            label_smoothing=self.label_smooth_val)
        if weight is not None:
            loss = loss * weight.to(loss.dtype)
        if reduction == 'sum':
            loss = loss.sum()
        elif reduction == 'mean':
            loss = (loss.sum() /
                    avg_factor if avg_factor is not None else loss.mean())
        return self.loss_weight * loss
