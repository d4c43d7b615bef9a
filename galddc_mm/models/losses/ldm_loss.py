# Copyright (c) galddc_mm contributors. All rights reserved.
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmpretrain.registry import MODELS

from .utils import check_same_shape, zero_loss


@MODELS.register_module()
class LDMLoss(nn.Module):
    r"""Noise-prediction loss of the latent diffusion model.

    The DDPM "simple" objective on latents:

    .. math::
        \mathcal{L}_{LDM} = w \cdot \frac{1}{B D} \sum_{i=1}^{B}
            \sum_{d=1}^{D} (\epsilon_{i,d} - \hat{\epsilon}_{i,d})^2,

    with :math:`\hat{\epsilon} = \epsilon_\theta(z_t, t, y)`, i.e. the mean
    over all elements (``F.mse_loss``), so the value does not depend on the
    batch size or the latent dimension.

    Args:
        loss_weight (float): The weight :math:`w` of the loss.
            Defaults to 1.0.
    """

    def __init__(self, loss_weight: float = 1.0) -> None:
        super().__init__()
        self.loss_weight = loss_weight

    def forward(self, pred_noise: torch.Tensor,
                noise: torch.Tensor) -> torch.Tensor:
        """Compute the loss.

        Args:
            pred_noise (torch.Tensor): Predicted noise (any shape, e.g.
                (B, D)).
            noise (torch.Tensor): The noise added by the forward process,
                same shape.

        Returns:
            torch.Tensor: The weighted loss, a 0-dim tensor (a zero keeping
            the graph for an empty batch).
        """
        check_same_shape('pred_noise', pred_noise, 'noise', noise)
        if pred_noise.numel() == 0:
            return zero_loss(pred_noise)
        return self.loss_weight * F.mse_loss(pred_noise, noise)
