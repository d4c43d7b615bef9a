# Copyright (c) galddc_mm contributors. All rights reserved.
from typing import Optional

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
class CalibratedRadiusLoss(nn.Module):
    r"""Calibrated radius loss of GALD-DC (stage 2).

    Asks the distance of each denoised estimate to its class prototype to
    match the class's calibrated radius (see :class:`ClassGeometry`,
    :math:`r^{cal}_y = r^{obs}_y` for head classes and
    :math:`\lambda r^{obs}_y + (1 - \lambda) r_{prior}` for tail ones):

    .. math::
        \mathcal{L}_{rad} = w \cdot \frac{1}{B} \sum_{i=1}^{B}
            \left(\lVert \tilde{z}_{0,i} - \mathrm{sg}[\mu_{y_i}]
            \rVert_2 - \mathrm{sg}[r^{cal}_{y_i}]\right)^2.

    The norm is computed with a zero gradient at zero distance instead of
    the NaN of :math:`\nabla \sqrt{x}` at 0, so a latent sitting exactly on
    its prototype is harmless.

    Args:
        loss_weight (float): The weight :math:`w` of the loss
            (:math:`\eta_r` of the paper). Defaults to 1.0.
    """

    def __init__(self, loss_weight: float = 1.0) -> None:
        super().__init__()
        self.loss_weight = loss_weight

    def forward(self, z0_hat: torch.Tensor, labels: torch.Tensor,
                prototypes: torch.Tensor,
                r_cal: torch.Tensor,
                target_scale: Optional[torch.Tensor] = None
                ) -> torch.Tensor:
        r"""Compute the loss.

        Args:
            z0_hat (torch.Tensor): Denoised latent estimates, shape (B, D).
            labels (torch.Tensor): Class indices, shape (B,).
            prototypes (torch.Tensor): Class prototypes, shape (K, D);
                detached inside.
            r_cal (torch.Tensor): Calibrated radii, shape (K,); detached
                inside.
            target_scale (torch.Tensor, optional): Per-sample factor of
                the target, shape (B,): the posterior shrinkage
                :math:`\sqrt{s_t}` of :func:`posterior_shrinkage` (the
                target becomes :math:`r^{cal}_{y_i} \sqrt{s_{t_i}}`);
                detached inside. Defaults to None (factor 1).

        Returns:
            torch.Tensor: The weighted loss, a 0-dim tensor.
        """
        check_latents_and_prototypes(z0_hat, labels, prototypes)
        if r_cal.shape != prototypes.shape[:1]:
            raise ValueError('`r_cal` must have shape (K,) = '
                             f'({prototypes.shape[0]},) like the '
                             f'prototypes, but got {tuple(r_cal.shape)}.')
        if z0_hat.shape[0] == 0:
            return zero_loss(z0_hat)
        dtype = geometry_dtype(z0_hat, prototypes)
        with float32_geometry(z0_hat.device.type):
            diff = z0_hat.to(dtype) - prototypes.detach()[labels].to(dtype)
            # vector_norm's backward is masked to 0 where the norm is 0 (a
            # valid subgradient), unlike sqrt(sum(diff^2)) whose gradient
            # is NaN there; tests pin this.
            dist = torch.linalg.vector_norm(diff, dim=1)
            target = r_cal.detach()[labels].to(dtype)
            if target_scale is not None:
                if target_scale.shape != labels.shape:
                    raise ValueError(
                        '`target_scale` must have shape (B,) = '
                        f'({labels.shape[0]},), but got '
                        f'{tuple(target_scale.shape)}.')
                target = target * target_scale.detach().to(dtype)
            return F.mse_loss(dist, target) * self.loss_weight
