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
class PrototypeMarginLoss(nn.Module):
    r"""Discriminative prototype margin loss of GALD-DC (stage 2).

    A triplet-style hinge on squared Euclidean distances: each denoised
    estimate must be closer to its own prototype than to the nearest other
    (valid) prototype by at least the margin :math:`m`:

    .. math::
        \mathcal{L}_{margin} = w \cdot \frac{1}{B} \sum_{i=1}^{B}
            \left[ m + \lVert \tilde{z}_{0,i} - \mu_{y_i} \rVert_2^2
            - \min_{k \neq y_i,\ k\ \mathrm{valid}}
            \lVert \tilde{z}_{0,i} - \mu_k \rVert_2^2 \right]_+ .

    All distances come from one matrix product,
    :math:`\lVert z \rVert^2 - 2 z \mu^\top + \lVert \mu \rVert^2`, in
    which :math:`\lVert z \rVert^2` cancels (it is common to the positive
    and every negative), and the nearest negative from a masked ``min``: no
    loop over samples or classes, and the gradient
    :math:`2 (\mu_{y^-} - \mu_{y})` stays finite at zero distance. The
    product follows the matmul precision setting (TF32, if enabled, rounds
    it). A sample without any valid negative (e.g. :math:`K = 1`)
    contributes 0 but still counts in the mean over :math:`B`. Prototypes
    are EMA statistics and are detached.

    Args:
        margin (float): The margin :math:`m` (in squared latent units).
            Defaults to 1.0.
        loss_weight (float): The weight :math:`w` of the loss
            (:math:`\eta_m` of the paper). Defaults to 1.0.
    """

    def __init__(self, margin: float = 1.0, loss_weight: float = 1.0) -> None:
        super().__init__()
        if margin < 0:
            raise ValueError(f'`margin` must be >= 0, but got {margin}.')
        self.margin = margin
        self.loss_weight = loss_weight

    def forward(self,
                z0_hat: torch.Tensor,
                labels: torch.Tensor,
                prototypes: torch.Tensor,
                valid_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Compute the loss.

        Args:
            z0_hat (torch.Tensor): Denoised latent estimates, shape (B, D).
            labels (torch.Tensor): Class indices, shape (B,).
            prototypes (torch.Tensor): Class prototypes, shape (K, D);
                detached inside.
            valid_mask (torch.Tensor, optional): Bool mask (K,) of the
                prototypes that may serve as negatives, e.g.
                ``ClassGeometry.valid_mask`` (classes with no training
                latent have a meaningless zero prototype). Defaults to None
                (all valid).

        Returns:
            torch.Tensor: The weighted loss, a 0-dim tensor.
        """
        check_latents_and_prototypes(z0_hat, labels, prototypes)
        num_classes = prototypes.shape[0]
        if valid_mask is not None and (valid_mask.shape != (num_classes, )
                                       or valid_mask.dtype != torch.bool):
            raise ValueError('`valid_mask` must be a bool tensor of shape '
                             f'(K,) = ({num_classes},), but got '
                             f'{valid_mask.dtype} of shape '
                             f'{tuple(valid_mask.shape)}.')
        if z0_hat.shape[0] == 0:
            return zero_loss(z0_hat)

        dtype = geometry_dtype(z0_hat, prototypes)
        with float32_geometry(z0_hat.device.type):
            return self._hinge(z0_hat.to(dtype),
                               prototypes.detach().to(dtype), labels,
                               valid_mask) * self.loss_weight

    def _hinge(self, z0_hat: torch.Tensor, protos: torch.Tensor,
               labels: torch.Tensor,
               valid_mask: Optional[torch.Tensor]) -> torch.Tensor:
        # ||z_i - mu_k||^2 = ||z_i||^2 + ||mu_k||^2 - 2 z_i . mu_k. The term
        # ||z_i||^2 is the same for the positive and every negative of row
        # i, so it cancels in the hinge and in the argmin: one addmm gives
        # a_ik = ||mu_k||^2 - 2 z_i . mu_k for all (i, k), and
        # ||z_i - mu_y||^2 - ||z_i - mu_k||^2 = a_iy - a_ik exactly. In
        # bf16/fp16 the expansion cancels badly, hence float32 above.
        a = torch.addmm(protos.pow(2).sum(dim=1), z0_hat, protos.t(),
                        alpha=-2)  # (B, K)
        index = labels.long()[:, None]
        pos = a.gather(1, index)  # (B, 1)
        # Own class and invalid prototypes are no negatives: +inf. A row
        # with no negative left gets min = +inf and a hinge of
        # relu(-inf) = 0; the gradient through the +inf entries is cut by
        # scatter / masked_fill, so no NaN appears.
        neg = a.scatter(1, index, float('inf'))
        if valid_mask is not None:
            neg = neg.masked_fill(~valid_mask.to(neg.device), float('inf'))
        hinge = F.relu(pos - neg.amin(dim=1, keepdim=True) + self.margin)
        return hinge.mean()
