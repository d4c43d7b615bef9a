# Copyright (c) galddc_mm contributors. All rights reserved.
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmpretrain.registry import MODELS

from .utils import (
    check_latents_and_prototypes,
    float32_geometry,
    geometry_dtype,
    zero_loss,
)


@MODELS.register_module()
class PrototypeLoss(nn.Module):
    r"""Semantic prototype loss of GALD-DC (stage 2).

    Pulls each denoised estimate :math:`\tilde{z}_0` towards the prototype
    of its class:

    .. math::
        \mathcal{L}_{proto} = w \cdot \frac{1}{B} \sum_{i=1}^{B}
            \frac{1}{D} \sum_{d=1}^{D}
            (\tilde{z}_{0,i,d} - \mathrm{sg}[\mu_{y_i,d}])^2,

    the per-element MSE of the seed (``F.mse_loss``), where
    :math:`\mathrm{sg}` stops the gradient: the prototypes are EMA
    statistics (buffers of :class:`ClassGeometry`), not parameters.

    Args:
        loss_weight (float): The weight :math:`w` of the loss
            (:math:`\eta_p` of the paper). Defaults to 1.0.
    """

    def __init__(self, loss_weight: float = 1.0) -> None:
        super().__init__()
        self.loss_weight = loss_weight

    def forward(self, z0_hat: torch.Tensor, labels: torch.Tensor,
                prototypes: torch.Tensor) -> torch.Tensor:
        """Compute the loss.

        Args:
            z0_hat (torch.Tensor): Denoised latent estimates, shape (B, D).
            labels (torch.Tensor): Class indices, shape (B,).
            prototypes (torch.Tensor): Class prototypes, shape (K, D);
                detached inside.

        Returns:
            torch.Tensor: The weighted loss, a 0-dim tensor.
        """
        check_latents_and_prototypes(z0_hat, labels, prototypes)
        if z0_hat.shape[0] == 0:
            return zero_loss(z0_hat)
        # Every row has D elements, so the element mean of F.mse_loss
        # equals mean_i mean_d. In float32 whatever the autocast state.
        dtype = geometry_dtype(z0_hat, prototypes)
        with float32_geometry(z0_hat.device.type):
            target = prototypes.detach()[labels].to(dtype)
            return F.mse_loss(z0_hat.to(dtype), target) * self.loss_weight
