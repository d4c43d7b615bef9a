# Copyright (c) galddc_mm contributors. All rights reserved.
import torch
import torch.nn as nn
from mmpretrain.registry import MODELS

from .utils import check_same_shape, zero_loss


@MODELS.register_module()
class FeatureConsistencyLoss(nn.Module):
    r"""Encoder consistency loss of GALD-DC's hybrid stage 3.

    Keeps the trainable encoder :math:`E^{(t)}` close to its frozen copy
    :math:`E^{(0)}`, so the latent space the diffusion model was trained on
    does not drift away:

    .. math::
        \mathcal{L}_{cons} = w \cdot \frac{1}{B D} \sum_{i=1}^{B}
            \sum_{d=1}^{D} \left(E^{(t)}(x_i)_d
            - \mathrm{sg}[E^{(0)}(x_i)_d]\right)^2,

    the element mean (``F.mse_loss``); the anchor is detached inside, so
    the gradient reaches only :math:`E^{(t)}`.

    Args:
        loss_weight (float): The weight :math:`w` of the loss
            (:math:`\beta` of the paper). Defaults to 1.0.
    """

    def __init__(self, loss_weight: float = 1.0) -> None:
        super().__init__()
        self.loss_weight = loss_weight

    def forward(self, feats: torch.Tensor,
                anchor_feats: torch.Tensor) -> torch.Tensor:
        """Compute the loss.

        Args:
            feats (torch.Tensor): Features of the trainable encoder, e.g.
                (B, D).
            anchor_feats (torch.Tensor): Features of the frozen encoder copy
                for the same inputs, same shape; detached inside.

        Returns:
            torch.Tensor: The weighted loss, a 0-dim tensor.
        """
        check_same_shape('feats', feats, 'anchor_feats', anchor_feats)
        if feats.numel() == 0:
            return zero_loss(feats)
        return self.loss_weight * (feats - anchor_feats.detach()).pow(2).mean()
