# Copyright (c) galddc_mm contributors. All rights reserved.
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmpretrain.registry import MODELS

from .utils import check_labels, zero_loss


@MODELS.register_module()
class PseudoLatentCELoss(nn.Module):
    r"""Cross-entropy of the classifier on generated pseudo-latents.

    The stage-3 term :math:`\mathcal{L}_{ge}` on
    :math:`\hat{z}_0 \sim p_\theta(z_0 \mid y)`, with optional label
    smoothing :math:`\epsilon` in the "original" form of
    ``LabelSmoothLoss`` (targets :math:`(1 - \epsilon)\delta_{k,y} +
    \epsilon / K`):

    .. math::
        \mathcal{L}_{ge} = -w \cdot \frac{1}{B} \sum_{i=1}^{B}
            \sum_{k=1}^{K} \left[(1 - \epsilon)\delta_{k, y_i}
            + \frac{\epsilon}{K}\right] \log \mathrm{softmax}(s_i)_k,

    where :math:`s_i = G(\mathrm{sg}[\hat{z}_{0,i}])` are the logits. The
    pseudo-latents are detached by the caller, so only :math:`G` learns.

    Args:
        loss_weight (float): The weight :math:`w` of the loss
            (:math:`\gamma` of the paper). Defaults to 1.0.
        label_smooth_val (float): Label smoothing :math:`\epsilon` in
            [0, 1). Defaults to 0.0.
    """

    def __init__(self,
                 loss_weight: float = 1.0,
                 label_smooth_val: float = 0.0) -> None:
        super().__init__()
        if not 0 <= label_smooth_val < 1:
            raise ValueError('`label_smooth_val` must lie in [0, 1), but '
                             f'got {label_smooth_val}.')
        self.loss_weight = loss_weight
        self.label_smooth_val = label_smooth_val

    def forward(self, logits: torch.Tensor,
                labels: torch.Tensor) -> torch.Tensor:
        """Compute the loss.

        Args:
            logits (torch.Tensor): Classifier logits, shape (B, K).
            labels (torch.Tensor): Class indices, shape (B,).

        Returns:
            torch.Tensor: The weighted loss, a 0-dim tensor.
        """
        if logits.dim() != 2:
            raise ValueError('`logits` must have shape (B, K), but got '
                             f'{tuple(logits.shape)}.')
        check_labels(labels, logits.shape[0], logits.shape[1])
        if logits.shape[0] == 0:
            return zero_loss(logits)
        return self.loss_weight * F.cross_entropy(
            logits, labels.long(), label_smoothing=self.label_smooth_val)
