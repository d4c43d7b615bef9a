# Copyright (c) galddc_mm contributors. All rights reserved.
import torch
import torch.nn as nn
from mmpretrain.registry import MODELS
from torch import Tensor


@MODELS.register_module()
class LatentNormalizer(nn.Module):
    r"""Per-dimension standardisation of encoder latents.

    .. math::
        \hat z = (z - m) / s, \qquad z = \hat z\, s + m

    with :math:`m, s` the per-dimension mean and (population) standard
    deviation of the real latents :math:`D_z`, :math:`s` clamped to at
    least ``eps`` so dead (constant) dimensions do not divide by zero.
    Pooled CNN features are non-negative with very different scales per
    channel; diffusion assumes roughly unit-scale data, hence this step.

    :meth:`fit` also records the range the standardised latents take,
    ``data_min``/``data_max`` per dimension, so that sampling can bound its
    estimate by the data (see ``LatentDiffusionHead(clip_z0='data')``).

    ``mean``, ``std``, ``data_min``, ``data_max`` and ``fitted`` are
    persistent buffers: checkpoints and resume carry them. Before
    :meth:`fit` the map is the identity and the range unbounded.

    Args:
        latent_dim (int): Latent dimension ``D``.
        eps (float): Lower bound of the std. Defaults to 1e-5.
    """

    def __init__(self, latent_dim: int, eps: float = 1e-5):
        super().__init__()
        if (isinstance(latent_dim, bool) or not isinstance(latent_dim, int)
                or latent_dim < 1):
            raise ValueError('`latent_dim` must be an int >= 1, got '
                             f'{latent_dim!r}.')
        if not eps > 0:
            raise ValueError(f'`eps` must be > 0, got {eps!r}.')
        self.latent_dim = latent_dim
        self.eps = eps
        self.register_buffer('mean', torch.zeros(latent_dim))
        self.register_buffer('std', torch.ones(latent_dim))
        self.register_buffer('data_min',
                             torch.full((latent_dim, ), -float('inf')))
        self.register_buffer('data_max',
                             torch.full((latent_dim, ), float('inf')))
        self.register_buffer('fitted', torch.tensor(False))

    def _check(self, z: Tensor, name: str) -> None:
        if z.dim() != 2 or z.size(1) != self.latent_dim:
            raise ValueError(
                f'`{name}` must have shape (N, {self.latent_dim}), got '
                f'{tuple(z.shape)}.')

    @torch.no_grad()
    def fit(self, latents: Tensor) -> None:
        """Set ``mean``/``std`` from the real latents and mark as fitted.

        The statistics are computed in float64 (D_z can hold ~1e5 rows).
        Under DDP, pass the full gathered D_z on every rank so that all
        ranks hold the same statistics.

        Args:
            latents (Tensor): Real latents :math:`D_z`, shape ``(N, D)``,
                ``N >= 2``.
        """
        self._check(latents, 'latents')
        if latents.size(0) < 2:
            raise ValueError(
                'Fitting the normalizer needs at least 2 latents, got '
                f'{latents.size(0)}.')
        var, mean = torch.var_mean(
            latents.double(), dim=0, correction=0)
        self.mean.copy_(mean)
        self.std.copy_(var.sqrt().clamp(min=self.eps))
        standardised = self.normalize(latents.to(self.mean))
        self.data_min.copy_(standardised.amin(dim=0))
        self.data_max.copy_(standardised.amax(dim=0))
        self.fitted.fill_(True)

    def normalize(self, z: Tensor) -> Tensor:
        """Encoder space to standardised space: ``(z - mean) / std``."""
        self._check(z, 'z')
        return (z - self.mean) / self.std

    def denormalize(self, z: Tensor) -> Tensor:
        """Standardised space to encoder space: ``z * std + mean``."""
        self._check(z, 'z')
        return z * self.std + self.mean

    def extra_repr(self) -> str:
        return f'latent_dim={self.latent_dim}, eps={self.eps}'
