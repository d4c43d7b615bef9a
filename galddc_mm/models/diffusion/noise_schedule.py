# Copyright (c) galddc_mm contributors. All rights reserved.
import math
from typing import Optional, Union

import torch
import torch.nn as nn
from mmpretrain.registry import MODELS
from torch import Tensor

_SCHEDULES = ('linear', 'cosine')


def _linear_betas(num_timesteps: int, beta_start: float,
                  beta_end: float) -> Tensor:
    """Linear betas of DDPM (Ho et al., 2020), diffusers' ``'linear'``."""
    return torch.linspace(
        beta_start, beta_end, num_timesteps, dtype=torch.float64)


def _cosine_betas(num_timesteps: int, s: float,
                  max_beta: float = 0.999) -> Tensor:
    """Cosine betas of Nichol & Dhariwal (2021), eq. 17.

    ``abar(u) = cos^2((u + s) / (1 + s) * pi / 2)`` for ``u = t / T`` and
    ``beta_t = min(1 - abar((t + 1) / T) / abar(t / T), max_beta)``. The cap
    stops the singularity at ``u = 1`` (diffusers' ``'squaredcos_cap_v2'``
    with ``s = 0.008``).
    """
    u = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    abar = torch.cos((u + s) / (1 + s) * math.pi / 2)**2
    return (1 - abar[1:] / abar[:-1]).clamp(max=max_beta)


@MODELS.register_module()
class NoiseSchedule(nn.Module):
    r"""Discrete forward-noising schedule of a diffusion model.

    Holds the schedule quantities as float32 buffers (computed in float64)
    and the closed forms that tie :math:`z_0`, :math:`z_t` and the noise
    :math:`\epsilon` together:

    .. math::
        \alpha_t = 1 - \beta_t, \quad
        \bar\alpha_t = \prod_{s \le t} \alpha_s, \\
        z_t = \sqrt{\bar\alpha_t}\, z_0 + \sqrt{1 - \bar\alpha_t}\,\epsilon.

    The buffers are non-persistent: they follow ``.to(device)`` but stay out
    of the ``state_dict`` because the config determines them.

    Args:
        num_timesteps (int): Number of training timesteps ``T``; timesteps
            are ``0, ..., T - 1``. Defaults to 1000.
        beta_schedule (str): ``'linear'`` (DDPM, ``linspace(beta_start,
            beta_end, T)``) or ``'cosine'`` (Nichol & Dhariwal, betas capped
            at 0.999). Defaults to ``'linear'``.
        beta_start (float): First beta of the linear schedule.
            Defaults to 1e-4.
        beta_end (float): Last beta of the linear schedule. Defaults to 2e-2.
        cosine_s (float): Offset ``s`` of the cosine schedule.
            Defaults to 8e-3.
    """

    def __init__(self,
                 num_timesteps: int = 1000,
                 beta_schedule: str = 'linear',
                 beta_start: float = 1e-4,
                 beta_end: float = 2e-2,
                 cosine_s: float = 8e-3):
        super().__init__()
        if (isinstance(num_timesteps, bool)
                or not isinstance(num_timesteps, int) or num_timesteps < 1):
            raise ValueError('`num_timesteps` must be a positive int, got '
                             f'{num_timesteps!r}.')
        if beta_schedule == 'linear':
            if not 0 < beta_start <= beta_end < 1:
                raise ValueError(
                    'The linear schedule needs 0 < beta_start <= beta_end < '
                    f'1, got beta_start={beta_start}, beta_end={beta_end}.')
            betas = _linear_betas(num_timesteps, beta_start, beta_end)
        elif beta_schedule == 'cosine':
            if cosine_s < 0:
                raise ValueError(
                    f'`cosine_s` must be >= 0, got {cosine_s}.')
            betas = _cosine_betas(num_timesteps, cosine_s)
        else:
            raise ValueError(f'Unknown beta_schedule {beta_schedule!r}; '
                             f'choose one of {_SCHEDULES}.')
        self.num_timesteps = num_timesteps
        self.beta_schedule = beta_schedule

        alphas = 1 - betas
        alphas_cumprod = torch.cumprod(alphas, dim=0)
        buffers = dict(
            betas=betas,
            alphas=alphas,
            alphas_cumprod=alphas_cumprod,
            sqrt_alphas_cumprod=alphas_cumprod.sqrt(),
            sqrt_one_minus_alphas_cumprod=(1 - alphas_cumprod).sqrt())
        for name, value in buffers.items():
            self.register_buffer(name, value.float(), persistent=False)
        # A host copy of abar (the same float32 values as the buffer, never
        # moved by `.to()`): samplers read per-step coefficients from it as
        # Python floats instead of launching tiny kernels on 0-d device
        # tensors at every step.
        self._host_alphas_cumprod = alphas_cumprod.float()

    @property
    def host_alphas_cumprod(self) -> Tensor:
        """``alphas_cumprod`` as a float32 CPU tensor (never on a GPU)."""
        return self._host_alphas_cumprod

    @staticmethod
    def _gather(buffer: Tensor, t: Union[int, Tensor], ndim: int) -> Tensor:
        """Pick ``buffer[t]`` shaped to broadcast against a ``ndim`` tensor.

        ``t`` may be a Python int (a scalar coefficient) or a ``(B, )``
        integer tensor (one timestep per sample, broadcast over the trailing
        dimensions).
        """
        if isinstance(t, int):
            return buffer[t]
        if t.dim() == 0:
            return buffer[t]
        if t.dim() != 1:
            raise ValueError('`t` must be an int or a (B, ) tensor of '
                             f'timesteps, got shape {tuple(t.shape)}.')
        return buffer[t].view(-1, *([1] * (ndim - 1)))

    def q_sample(self, z0: Tensor, t: Union[int, Tensor],
                 noise: Tensor) -> Tensor:
        r"""Noise clean latents: the closed-form forward process.

        .. math::
            z_t = \sqrt{\bar\alpha_t}\, z_0 + \sqrt{1 - \bar\alpha_t}\,
            \epsilon

        Args:
            z0 (Tensor): Clean latents, shape ``(B, ...)``.
            t (int | Tensor): Timestep(s), an int or shape ``(B, )``.
            noise (Tensor): :math:`\epsilon`, same shape as ``z0``.

        Returns:
            Tensor: :math:`z_t`, same shape as ``z0``.
        """
        a = self._gather(self.sqrt_alphas_cumprod, t, z0.dim())
        b = self._gather(self.sqrt_one_minus_alphas_cumprod, t, z0.dim())
        return a * z0 + b * noise

    def predict_z0(self, z_t: Tensor, t: Union[int, Tensor],
                   eps: Tensor) -> Tensor:
        r"""Clean-latent estimate from a noise prediction.

        .. math::
            \tilde z_0 = (z_t - \sqrt{1 - \bar\alpha_t}\,\epsilon) /
            \sqrt{\bar\alpha_t}

        Args:
            z_t (Tensor): Noisy latents, shape ``(B, ...)``.
            t (int | Tensor): Timestep(s), an int or shape ``(B, )``.
            eps (Tensor): Noise (prediction), same shape as ``z_t``.

        Returns:
            Tensor: :math:`\tilde z_0`, same shape as ``z_t``.
        """
        a = self._gather(self.sqrt_alphas_cumprod, t, z_t.dim())
        b = self._gather(self.sqrt_one_minus_alphas_cumprod, t, z_t.dim())
        return (z_t - b * eps) / a

    def predict_eps(self, z_t: Tensor, t: Union[int, Tensor],
                    z0: Tensor) -> Tensor:
        r"""Noise implied by a noisy latent and a clean-latent estimate.

        .. math::
            \epsilon = (z_t - \sqrt{\bar\alpha_t}\, z_0) /
            \sqrt{1 - \bar\alpha_t}

        Args:
            z_t (Tensor): Noisy latents, shape ``(B, ...)``.
            t (int | Tensor): Timestep(s), an int or shape ``(B, )``.
            z0 (Tensor): Clean latents (estimate), same shape as ``z_t``.

        Returns:
            Tensor: :math:`\epsilon`, same shape as ``z_t``.
        """
        a = self._gather(self.sqrt_alphas_cumprod, t, z_t.dim())
        b = self._gather(self.sqrt_one_minus_alphas_cumprod, t, z_t.dim())
        return (z_t - a * z0) / b

    def sample_timesteps(
            self,
            batch_size: int,
            device: Union[str, torch.device, None] = None,
            generator: Optional[torch.Generator] = None) -> Tensor:
        """Draw training timesteps uniformly from ``{0, ..., T - 1}``.

        Args:
            batch_size (int): Number of timesteps ``B``.
            device (str | torch.device, optional): Where to put them.
                Defaults to the device of the schedule buffers.
            generator (torch.Generator, optional): Random generator (on
                ``device``). Defaults to None.

        Returns:
            Tensor: Long tensor of shape ``(B, )``.
        """
        if device is None:
            device = self.betas.device
        return torch.randint(
            0,
            self.num_timesteps, (batch_size, ),
            device=device,
            generator=generator)

    def extra_repr(self) -> str:
        return (f'num_timesteps={self.num_timesteps}, '
                f'beta_schedule={self.beta_schedule!r}')
