# Copyright (c) galddc_mm contributors. All rights reserved.
from typing import Tuple

import torch
from mmengine.model import BaseModule
from mmpretrain.registry import MODELS


@MODELS.register_module()
class LatentPassThrough(BaseModule):
    """An identity encoder: the inputs already are latents.

    For data sets whose samples are latents (``GaussianLatentLT``, the
    known-answer testbed): the ``(B, D)`` inputs come out as a one-position
    feature map ``(B, D, 1)``, so ``GlobalAveragePooling(dim=1)`` hands them
    to the heads unchanged and every other part of the model (the frozen
    encoder copy, the latent cache, the stages) runs as on images.

    Args:
        latent_dim (int, optional): When given, inputs must have this
            dimension. Defaults to None.
    """

    def __init__(self, latent_dim=None, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.latent_dim = latent_dim

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor]:
        if x.dim() != 2 or (self.latent_dim is not None
                            and x.size(1) != self.latent_dim):
            raise ValueError(
                'LatentPassThrough takes latents of shape (B, '
                f'{self.latent_dim or "D"}), got {tuple(x.shape)}.')
        return (x.unsqueeze(-1), )
