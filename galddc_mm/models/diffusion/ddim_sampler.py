# Copyright (c) galddc_mm contributors. All rights reserved.
import weakref
from numbers import Real
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from mmpretrain.registry import MODELS
from torch import Tensor

from .noise_schedule import NoiseSchedule

DenoiseFn = Callable[[Tensor, Tensor, Tensor], Tensor]
Z0Fn = Callable[[Tensor], Tensor]


def _check_eta(eta) -> None:
    if isinstance(eta, bool) or not isinstance(eta, Real) or eta < 0:
        raise ValueError(f'`eta` must be a float >= 0, got {eta!r}.')


@MODELS.register_module()
class DDIMSampler(nn.Module):
    r"""DDIM sampler (Song et al., 2021) for latent diffusion.

    The sampler has no parameters and knows nothing about the network: it
    receives a ``denoise_fn(z_t, t, labels) -> eps`` and a
    :class:`NoiseSchedule`. One step is eq. 12 of the DDIM paper,

    .. math::
        z_{t'} = \sqrt{\bar\alpha_{t'}}\,\hat z_0
               + \sqrt{1 - \bar\alpha_{t'} - \sigma_t^2}\,\epsilon_\theta
               + \sigma_t \epsilon, \\
        \hat z_0 = (z_t - \sqrt{1 - \bar\alpha_t}\,\epsilon_\theta) /
                   \sqrt{\bar\alpha_t}, \quad
        \sigma_t = \eta \sqrt{(1 - \bar\alpha_{t'}) / (1 - \bar\alpha_t)}
                   \sqrt{1 - \bar\alpha_t / \bar\alpha_{t'}},

    where :math:`t'` is the previous timestep of the respaced chain and
    :math:`\bar\alpha_{-1} = 1`, so the last step lands on
    :math:`\hat z_0` (``eta = 0``: deterministic DDIM, ``eta = 1``: DDPM
    posterior variance). With a guidance scale :math:`s \ne 1`,
    classifier-free guidance (Ho & Salimans, 2021) replaces the prediction by
    :math:`\epsilon_u + s (\epsilon_c - \epsilon_u)`.

    The latents are standardised features, not images: :math:`\hat z_0` is
    never clipped to ``[-1, 1]``; ``clip_z0`` is an optional clamp in
    standardised units and ``z0_fn`` any other projection (e.g. a clamp in
    encoder space).

    Args:
        num_steps (int): Default number of sampling steps. Defaults to 25.
        eta (float): Default :math:`\eta`. Defaults to 0.0.
        guidance_scale (float): Default classifier-free guidance scale;
            1 means plain conditional sampling. Defaults to 1.0.
        clip_z0 (float, optional): Clamp :math:`\hat z_0` to
            ``[-clip_z0, clip_z0]`` at every step. None means no clamp.
            Defaults to None.
    """

    def __init__(self,
                 num_steps: int = 25,
                 eta: float = 0.0,
                 guidance_scale: float = 1.0,
                 clip_z0: Optional[float] = None):
        super().__init__()
        self._check_num_steps(num_steps)
        _check_eta(eta)
        if isinstance(guidance_scale, bool) or not isinstance(
                guidance_scale, Real):
            raise ValueError('`guidance_scale` must be a float, got '
                             f'{guidance_scale!r}.')
        if clip_z0 is not None and not clip_z0 > 0:
            raise ValueError(
                f'`clip_z0` must be None or a float > 0, got {clip_z0!r}.')
        self.num_steps = num_steps
        self.eta = float(eta)
        self.guidance_scale = float(guidance_scale)
        self.clip_z0 = clip_z0
        # {schedule: {(chain, eta): per-step host scalars}}, see
        # `host_coefficients`; weak keys so a dropped schedule is dropped.
        self._host_cache = weakref.WeakKeyDictionary()

    @staticmethod
    def _check_num_steps(num_steps) -> None:
        if (isinstance(num_steps, bool) or not isinstance(num_steps, int)
                or num_steps < 1):
            raise ValueError('`num_steps` must be an int >= 1, got '
                             f'{num_steps!r}.')

    def timesteps(self,
                  num_train_timesteps: int,
                  num_steps: Optional[int] = None) -> Tensor:
        """Respaced timesteps of the sampling chain, in descending order.

        "Leading" spacing with no offset (diffusers' ``DDIMScheduler`` with
        ``timestep_spacing='leading'`` and ``steps_offset=0``, the spacing of
        the DDIM paper): with ``k = T // S``, the chain is
        ``(S - 1) k, ..., k, 0``. It always ends at ``t = 0``, the step whose
        :math:`\\bar\\alpha` is closest to 1, and its steps are evenly
        spaced so ``t - k`` is the previous timestep; the price is that the
        chain starts at ``(S - 1) k <= T - 1`` rather than ``T - 1``, where
        the signal left is slightly larger (linear, T = 1000, S = 25:
        ``abar`` = 8.7e-5 at t = 960 vs 4.0e-5 at t = 999; cosine: 3.7e-3
        vs 2.4e-9). The chain is built on the CPU so that the sampling loop
        reads plain ints without device syncs.

        Args:
            num_train_timesteps (int): ``T`` of the schedule.
            num_steps (int, optional): Number of steps ``S``. Defaults to
                :attr:`num_steps`.

        Returns:
            Tensor: Long tensor of shape ``(S, )`` on the CPU.
        """
        num_steps = self.num_steps if num_steps is None else num_steps
        self._check_num_steps(num_steps)
        if num_steps > num_train_timesteps:
            raise ValueError(
                f'`num_steps`={num_steps} exceeds the {num_train_timesteps} '
                'training timesteps of the schedule; use at most '
                f'{num_train_timesteps} sampling steps.')
        ratio = num_train_timesteps // num_steps
        return torch.arange(num_steps - 1, -1, -1, dtype=torch.long) * ratio

    def step(self,
             schedule: NoiseSchedule,
             eps: Tensor,
             t: int,
             t_prev: int,
             z_t: Tensor,
             eta: Optional[float] = None,
             noise: Optional[Tensor] = None,
             z0_fn: Optional[Z0Fn] = None) -> Tuple[Tensor, Tensor]:
        """One DDIM update ``z_t -> z_{t_prev}`` (eq. 12 of DDIM).

        Args:
            schedule (NoiseSchedule): The training noise schedule.
            eps (Tensor): Noise prediction :math:`\\epsilon_\\theta(z_t)`,
                shape ``(B, D)``.
            t (int): Current timestep.
            t_prev (int): Previous timestep of the chain, ``-1`` for the
                final step (:math:`\\bar\\alpha = 1`).
            z_t (Tensor): Current latents, shape ``(B, D)``.
            eta (float, optional): :math:`\\eta`. Defaults to :attr:`eta`.
            noise (Tensor, optional): The :math:`\\epsilon` of the
                :math:`\\sigma_t \\epsilon` term; drawn with ``randn_like``
                when None and ``eta > 0``. Defaults to None.
            z0_fn (callable, optional): Applied to :math:`\\hat z_0` (after
                ``clip_z0``) before it is used. Defaults to None.

        Returns:
            tuple[Tensor, Tensor]: ``(z_prev, z0_hat)``.
        """
        eta = self.eta if eta is None else eta
        _check_eta(eta)
        if not 0 <= t < schedule.num_timesteps or not -1 <= t_prev < t:
            raise ValueError(
                'Need 0 <= t < T and -1 <= t_prev < t, got '
                f't={t}, t_prev={t_prev}, T={schedule.num_timesteps}.')
        # Python-int indexing gives 0-d tensors on the schedule's device: no
        # host-device transfer.
        abar_t = schedule.alphas_cumprod[t]
        abar_prev = (
            schedule.alphas_cumprod[t_prev]
            if t_prev >= 0 else torch.ones_like(abar_t))
        coefs = self._coefficients(abar_t, abar_prev, eta)
        return self._update(coefs, eps, z_t, eta, noise, z0_fn)

    @staticmethod
    def _coefficients(abar_t: Tensor, abar_prev: Tensor,
                      eta: float) -> Tuple[Tensor, ...]:
        """The scalars of eq. 12 for one step, from 0-d ``abar`` tensors.

        Returns ``(sqrt(abar_t), sqrt(1 - abar_t), sqrt(abar_prev),
        sqrt(1 - abar_prev - sigma_t^2), sigma_t)``.
        """
        # sigma_t of eq. 16; eta = 1 gives the DDPM posterior std.
        # (The clamp guards the sqrt against float round-off only.)
        sigma = eta * ((1 - abar_prev) / (1 - abar_t)).sqrt() * (
            1 - abar_t / abar_prev).clamp(min=0).sqrt()
        # Coefficient of the "direction pointing to x_t" of eq. 12. The
        # clamp only matters for eta > 1, where the variance would exceed
        # 1 - abar_prev.
        direction = (1 - abar_prev - sigma**2).clamp(min=0).sqrt()
        return (abar_t.sqrt(), (1 - abar_t).sqrt(), abar_prev.sqrt(),
                direction, sigma)

    def _update(self, coefs: Sequence, eps: Tensor, z_t: Tensor, eta: float,
                noise: Optional[Tensor],
                z0_fn: Optional[Z0Fn]) -> Tuple[Tensor, Tensor]:
        """Apply eq. 12 with the step's scalars (0-d tensors or floats)."""
        sqrt_abar_t, sqrt_one_minus_abar_t, sqrt_abar_prev, direction, \
            sigma = coefs
        # "predicted x_0" of eq. 12.
        z0_hat = (z_t - sqrt_one_minus_abar_t * eps) / sqrt_abar_t
        if self.clip_z0 is not None or z0_fn is not None:
            if self.clip_z0 is not None:
                z0_hat = z0_hat.clamp(-self.clip_z0, self.clip_z0)
            if z0_fn is not None:
                z0_hat = z0_fn(z0_hat)
            # Keep (z0_hat, eps) consistent with z_t, i.e. the noise that
            # the modified z0_hat implies (diffusers'
            # `use_clipped_model_output`, as in GLIDE).
            eps = (z_t - sqrt_abar_t * z0_hat) / sqrt_one_minus_abar_t
        # "direction pointing to x_t" of eq. 12.
        z_prev = sqrt_abar_prev * z0_hat + direction * eps
        if eta > 0:
            # "random noise" term of eq. 12.
            if noise is None:
                noise = torch.randn_like(z_t)
            z_prev = z_prev + sigma * noise
        return z_prev, z0_hat

    def host_coefficients(self, schedule: NoiseSchedule, chain: Sequence[int],
                          eta: float) -> List[Tuple[float, ...]]:
        """Per-step scalars of a chain as Python floats, computed on the CPU.

        The same float32 arithmetic as :meth:`step`, done once per
        ``(schedule, chain, eta)`` on a host copy of ``abar`` and cached, so
        that the sampling loop launches no kernel for scalars (a dozen tiny
        kernels per step otherwise) and never reads the device.

        Args:
            schedule (NoiseSchedule): The schedule.
            chain (Sequence[int]): Timesteps of the chain, descending.
            eta (float): :math:`\\eta`.

        Returns:
            list[tuple[float, ...]]: One :meth:`_coefficients` tuple per
            step.
        """
        key = (tuple(chain), float(eta))
        cache = self._host_cache.setdefault(schedule, {})
        if key not in cache:
            abar = getattr(schedule, 'host_alphas_cumprod', None)
            if abar is None:  # a schedule without a host copy
                abar = schedule.alphas_cumprod.detach().float().cpu()
            table = []
            for i, t in enumerate(chain):
                t_prev = chain[i + 1] if i + 1 < len(chain) else -1
                abar_prev = abar[t_prev] if t_prev >= 0 else torch.ones(())
                table.append(
                    tuple(
                        float(c) for c in self._coefficients(
                            abar[t], abar_prev, eta)))
            cache[key] = table
        return cache[key]

    def sample(self,
               denoise_fn: DenoiseFn,
               schedule: NoiseSchedule,
               labels: Tensor,
               latent_dim: int,
               num_steps: Optional[int] = None,
               eta: Optional[float] = None,
               guidance_scale: Optional[float] = None,
               null_label: Optional[int] = None,
               generator: Optional[torch.Generator] = None,
               z0_fn: Optional[Z0Fn] = None,
               z_T: Optional[Tensor] = None) -> Tensor:
        """Run the DDIM chain from ``z_T ~ N(0, I)`` down to ``z_0``.

        All samples are denoised together (one network call per step, two
        stacked batches under guidance); the only Python loop is over
        timesteps, and it reads no values back from the device.

        Args:
            denoise_fn (callable): ``denoise_fn(z_t, t, labels) -> eps``
                with ``t`` a ``(B, )`` long tensor, or a 0-d one when
                ``denoise_fn.accepts_shared_timestep`` is true.
            schedule (NoiseSchedule): The training noise schedule.
            labels (Tensor): Class of each sample, shape ``(B, )``; sets the
                device.
            latent_dim (int): ``D``.
            num_steps (int, optional): Defaults to :attr:`num_steps`.
            eta (float, optional): Defaults to :attr:`eta`.
            guidance_scale (float, optional): ``s``; ``eps = eps_u + s (eps_c
                - eps_u)``. Defaults to :attr:`guidance_scale`.
            null_label (int, optional): Label of the unconditional branch;
                required when ``s != 1``. Defaults to None.
            generator (torch.Generator, optional): Generator (on the device
                of ``labels``) for ``z_T`` and the ``eta`` noise.
                Defaults to None.
            z0_fn (callable, optional): See :meth:`step`. Defaults to None.
            z_T (Tensor, optional): Starting point, shape ``(B, D)``;
                drawn from ``N(0, I)`` when None. Defaults to None.

        Returns:
            Tensor: Samples :math:`z_0` in standardised space, ``(B, D)``.
        """
        eta = self.eta if eta is None else eta
        _check_eta(eta)
        scale = (
            self.guidance_scale
            if guidance_scale is None else float(guidance_scale))
        guided = scale != 1.0
        if guided and null_label is None:
            raise ValueError(
                f'guidance_scale={scale} needs `null_label`, the label of '
                'the unconditional branch (the denoiser\'s null class).')
        if labels.dim() != 1:
            raise ValueError('`labels` must have shape (B, ), got '
                             f'{tuple(labels.shape)}.')
        batch, device = labels.size(0), labels.device
        dtype = schedule.alphas_cumprod.dtype
        if z_T is None:
            z = torch.randn(
                batch,
                latent_dim,
                generator=generator,
                device=device,
                dtype=dtype)
        else:
            if z_T.shape != (batch, latent_dim):
                raise ValueError(
                    f'`z_T` must have shape ({batch}, {latent_dim}), got '
                    f'{tuple(z_T.shape)}.')
            z = z_T
        if guided:
            labels_in = torch.cat(
                [labels, torch.full_like(labels, null_label)])

        chain = self.timesteps(schedule.num_timesteps, num_steps).tolist()
        coefs = self.host_coefficients(schedule, chain, eta)
        # Every row is at the same timestep: a denoiser that says it can
        # use that (`accepts_shared_timestep`) gets one 0-d t.
        shared_t = getattr(denoise_fn, 'accepts_shared_timestep', False)
        rows = 2 * batch if guided else batch
        for i, t in enumerate(chain):
            t_in = torch.full(() if shared_t else (rows, ),
                              t,
                              dtype=torch.long,
                              device=device)
            if guided:
                eps_c, eps_u = denoise_fn(torch.cat([z, z]), t_in,
                                          labels_in).chunk(2)
                eps = eps_u + scale * (eps_c - eps_u)
            else:
                eps = denoise_fn(z, t_in, labels)
            noise = None
            if eta > 0:
                noise = torch.randn(
                    z.shape, generator=generator, device=device,
                    dtype=z.dtype)
            z, _ = self._update(coefs[i], eps, z, eta, noise, z0_fn)
        return z

    def extra_repr(self) -> str:
        return (f'num_steps={self.num_steps}, eta={self.eta}, '
                f'guidance_scale={self.guidance_scale}, '
                f'clip_z0={self.clip_z0}')
