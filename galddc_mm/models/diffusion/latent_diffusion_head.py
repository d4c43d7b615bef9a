# Copyright (c) galddc_mm contributors. All rights reserved.
import copy
from collections import OrderedDict
from typing import NamedTuple, Optional, Tuple, Union

import torch
import torch.nn as nn
from mmengine.model import BaseModule
from mmpretrain.registry import MODELS
from torch import Tensor

from galddc_mm.utils.compiled_call import CompiledCall, compile_kwargs


class DiffusionOutput(NamedTuple):
    """Training-time outputs of :class:`LatentDiffusionHead`.

    Attributes:
        noise (Tensor): The noise :math:`\\epsilon` added, standardised
            space, ``(B, D)``.
        pred_noise (Tensor): :math:`\\epsilon_\\theta(z_t, t, y)`,
            standardised space, ``(B, D)``.
        t (Tensor): Timesteps, ``(B, )`` long.
        z_t (Tensor): Noisy latents, standardised space, ``(B, D)``.
        pred_z0 (Tensor): Denoised estimate :math:`\\tilde z_0` in ENCODER
            space (denormalised), ``(B, D)``, differentiable w.r.t. the
            denoiser parameters.
    """
    noise: Tensor
    pred_noise: Tensor
    t: Tensor
    z_t: Tensor
    pred_z0: Tensor


class GeometryBatch(NamedTuple):
    """The denoised estimates a stage-2 step fed to the geometry losses.

    Attributes:
        latents (Tensor): :math:`\\tilde z_0` in encoder space (clamped,
            detached), ``(B', D)``.
        labels (Tensor): Their classes, ``(B', )``.
    """
    latents: Tensor
    labels: Tensor


def _build(cfg: Union[dict, nn.Module], **defaults) -> nn.Module:
    """Build ``cfg`` with ``defaults`` filled in, or check a built module.

    A value in ``cfg`` (or an attribute of a built module) that contradicts
    a default is an error: the head's ``latent_dim``/``num_classes`` are the
    single source of truth.
    """
    if isinstance(cfg, nn.Module):
        for key, value in defaults.items():
            if getattr(cfg, key, value) != value:
                raise ValueError(
                    f'{type(cfg).__name__}.{key}={getattr(cfg, key)} does '
                    f'not match the head\'s {key}={value}.')
        return cfg
    if not isinstance(cfg, dict):
        raise TypeError('Expected a config dict or an nn.Module, got '
                        f'{type(cfg).__name__}.')
    cfg = dict(cfg)
    for key, value in defaults.items():
        if cfg.setdefault(key, value) != value:
            raise ValueError(
                f'{cfg.get("type")} config sets {key}={cfg[key]}, but the '
                f'head has {key}={value}; drop {key} from the sub-config.')
    return MODELS.build(cfg)


def _autocast_dtype(device_type: str) -> Optional[torch.dtype]:
    """The 16-bit autocast dtype active on ``device_type``, else None."""
    if not torch.is_autocast_enabled(device_type):
        return None
    dtype = torch.get_autocast_dtype(device_type)
    return dtype if dtype in (torch.float16, torch.bfloat16) else None


@MODELS.register_module()
class LatentDiffusionHead(BaseModule):
    r"""Class-conditional latent diffusion on pooled encoder features.

    Owns the four pieces of the latent diffusion model: a
    :class:`NoiseSchedule`, a denoiser :math:`\epsilon_\theta(z_t, t, y)`
    (default :class:`ResMLPDenoiser`), a :class:`DDIMSampler` and a
    :class:`LatentNormalizer`. Diffusion runs on standardised latents
    :math:`\hat z = (z - m) / s`; inputs and outputs of the head are in
    encoder space.

    Training (:meth:`forward`), with :math:`t \sim U\{0..T-1\}`,
    :math:`\epsilon \sim N(0, I)`:

    .. math::
        \hat z_t = \sqrt{\bar\alpha_t}\, \hat z_0
                 + \sqrt{1 - \bar\alpha_t}\, \epsilon, \quad
        \tilde z_0 = s \odot \frac{\hat z_t - \sqrt{1 - \bar\alpha_t}\,
                     \epsilon_\theta(\hat z_t, t, y)}{\sqrt{\bar\alpha_t}}
                     + m

    For classifier-free guidance, each label is replaced by the null class
    with probability ``cond_drop_prob`` (training mode only).

    The head owns the losses of stage 2 (:meth:`loss`), as MMPretrain heads
    own theirs: :math:`L_{LDM} + \eta_p L_{proto} + \eta_r L_{rad} +
    \eta_m L_{margin}`, the geometry terms computed from :math:`\tilde z_0`
    against the class geometry's prototypes and calibrated radii. Setting
    the three geometry weights to 0 gives plain LDMLR-style latent
    diffusion. It also owns the bound of :math:`\tilde z_0`
    (``feature_clamp_max``), applied the same way in the losses and at
    every sampling step.

    Args:
        latent_dim (int): Latent dimension ``D``.
        num_classes (int): Number of classes ``K``.
        schedule (dict | nn.Module): The noise schedule.
            Defaults to ``dict(type='NoiseSchedule')``.
        denoiser (dict | nn.Module): The noise predictor; ``latent_dim``
            and ``num_classes`` are filled in. It must expose ``null_class``
            for guidance. Defaults to ``dict(type='ResMLPDenoiser')``.
        sampler (dict | nn.Module): The sampler.
            Defaults to ``dict(type='DDIMSampler')``.
        cond_drop_prob (float): Probability of dropping the label during
            training. Defaults to 0.0.
        init_cfg (dict | list[dict], optional): Initialisation config.
            Defaults to None.
        normalizer (dict | nn.Module): The latent standardisation;
            ``latent_dim`` is filled in.
            Defaults to ``dict(type='LatentNormalizer')``.
        ldm_loss (dict): The noise-prediction loss L_LDM.
            Defaults to ``dict(type='LDMLoss')``.
        proto_loss (dict): L_proto, its ``loss_weight`` is eta_p.
            Defaults to ``dict(type='PrototypeLoss')``.
        radius_loss (dict): L_rad, its ``loss_weight`` is eta_r.
            Defaults to ``dict(type='CalibratedRadiusLoss')``.
        margin_loss (dict): L_margin, its ``loss_weight`` is eta_m.
            Defaults to ``dict(type='PrototypeMarginLoss')``.
        feature_clamp_max (float, optional): Clamp, in encoder space, of the
            denoised estimates and prototypes before the geometry losses and
            of the DDIM z0 estimate at every sampling step (the seed's
            ``feature_clamp_max``). Defaults to None (no clamp).
        clip_z0 (str | float, optional): Bound of the DDIM z0 estimate at
            every sampling step, in standardised units. ``'data'``: each
            dimension within the range the standardised training latents
            take (``normalizer.data_min``/``data_max``, recorded when the
            normaliser is fitted): diffusers' ``clip_sample`` for latents,
            whose range is the data's, not [-1, 1]. A float ``c``: within
            ``[-c, c]``. At large t the estimate divides the noise error by
            sqrt(abar_t) (~1/157 at t = 960 of the linear schedule), so an
            under-trained denoiser otherwise samples latents hundreds of
            radii wide. Defaults to None (unbounded).
        geometry_t_fraction (float): The fraction of each batch, the
            samples with the smallest t, that enters the geometry losses and
            the EMA of the class statistics. At large t the estimate z~0
            divides the noise-prediction error by sqrt(abar_t) ~ 0, so its
            geometry is noise and its gradient is amplified up to
            1/sqrt(abar_T) (~150x for the linear schedule); the seed only
            clamps it. A fixed-size selection (top-k of -t) keeps the step
            free of host-device syncs. Defaults to 1.0 (every sample, as the
            seed).
    """

    #: Captured sampling graphs kept (see :meth:`sample`, ``cuda_graph``).
    MAX_GRAPHS = 4

    # The dict defaults follow OpenMMLab's convention; `_build` copies them
    # before use, so they are never mutated (hence the B006 waivers).
    def __init__(
            self,
            latent_dim: int,
            num_classes: int,
            schedule: Union[dict, nn.Module] = dict(  # noqa: B006
                type='NoiseSchedule'),
            denoiser: Union[dict, nn.Module] = dict(  # noqa: B006
                type='ResMLPDenoiser'),
            sampler: Union[dict, nn.Module] = dict(  # noqa: B006
                type='DDIMSampler'),
            cond_drop_prob: float = 0.0,
            init_cfg: Optional[Union[dict, list]] = None,
            normalizer: Union[dict, nn.Module] = dict(  # noqa: B006
                type='LatentNormalizer'),
            ldm_loss: dict = dict(type='LDMLoss'),  # noqa: B006
            proto_loss: dict = dict(type='PrototypeLoss'),  # noqa: B006
            radius_loss: dict = dict(  # noqa: B006
                type='CalibratedRadiusLoss'),
            margin_loss: dict = dict(  # noqa: B006
                type='PrototypeMarginLoss'),
            feature_clamp_max: Optional[float] = None,
            geometry_t_fraction: float = 1.0,
            clip_z0: Optional[Union[str, float]] = None):
        super().__init__(init_cfg=init_cfg)
        for name, value in (('latent_dim', latent_dim), ('num_classes',
                                                         num_classes)):
            if (isinstance(value, bool) or not isinstance(value, int)
                    or value < 1):
                raise ValueError(f'`{name}` must be an int >= 1, got '
                                 f'{value!r}.')
        if not 0 <= cond_drop_prob <= 1:
            raise ValueError('`cond_drop_prob` must be in [0, 1], got '
                             f'{cond_drop_prob!r}.')
        self.latent_dim = latent_dim
        self.num_classes = num_classes
        self.cond_drop_prob = float(cond_drop_prob)
        self.schedule = _build(schedule)
        self.denoiser = _build(
            denoiser, latent_dim=latent_dim, num_classes=num_classes)
        self.sampler = _build(sampler)
        self.normalizer = _build(normalizer, latent_dim=latent_dim)
        self.check_sampling_steps(self.sampler.num_steps,
                                  'model.diffusion_head.sampler.num_steps')
        self.ldm_loss = _build(ldm_loss)
        self.proto_loss = _build(proto_loss)
        self.radius_loss = _build(radius_loss)
        self.margin_loss = _build(margin_loss)
        for name in ('ldm_loss', 'proto_loss', 'radius_loss', 'margin_loss'):
            weight = getattr(getattr(self, name), 'loss_weight', 1.0)
            if weight < 0:
                raise ValueError(f'{name}.loss_weight must be >= 0, got '
                                 f'{weight}.')
        if feature_clamp_max is not None and not feature_clamp_max > 0:
            raise ValueError('feature_clamp_max must be positive or None, '
                             f'got {feature_clamp_max}.')
        if not 0 < geometry_t_fraction <= 1:
            raise ValueError('geometry_t_fraction must lie in (0, 1], got '
                             f'{geometry_t_fraction}.')
        if not (clip_z0 is None or clip_z0 == 'data' or
                (isinstance(clip_z0, (int, float))
                 and not isinstance(clip_z0, bool) and clip_z0 > 0)):
            raise ValueError("clip_z0 must be None, 'data' or a float > 0, "
                             f'got {clip_z0!r}.')
        self.feature_clamp_max = feature_clamp_max
        self.geometry_t_fraction = float(geometry_t_fraction)
        self.clip_z0 = clip_z0

    def check_sampling_steps(self, num_steps: Optional[int],
                             key: str) -> None:
        """Fail early when DDIM would take more steps than the schedule.

        Args:
            num_steps (int, optional): The steps asked for (None: the
                sampler's default, already checked).
            key (str): The config key that asked, for the message.
        """
        num_timesteps = self.schedule.num_timesteps
        if num_steps is not None and num_steps > num_timesteps:
            raise ValueError(
                f'{key}={num_steps} exceeds the T={num_timesteps} training '
                'timesteps of the noise schedule (model.diffusion_head.'
                'schedule.num_timesteps); DDIM needs 1 <= num_steps <= T.')

    def _clamp(self, x: Tensor) -> Tensor:
        c = self.feature_clamp_max
        return x if c is None else x.clamp(-c, c)

    def loss(self, latents: Tensor, labels: Tensor,
             geometry) -> Tuple[dict, GeometryBatch]:
        """Stage 2: L_LDM + eta_p L_proto + eta_r L_rad + eta_m L_margin.

        The geometry losses see the least-noisy ``geometry_t_fraction`` of
        the batch, their denoised estimates and the prototypes clamped by
        ``feature_clamp_max`` (the seed clamps both to stop blow-ups at
        large t, where z~0 divides by sqrt(abar_t) ~ 0). A loss whose
        weight is 0 is not computed.

        Args:
            latents (Tensor): Encoder-space latents z0, ``(B, D)``.
            labels (Tensor): Their classes, ``(B, )``.
            geometry (ClassGeometry): The class geometry (prototypes,
                calibrated radii, valid classes); only read.

        Returns:
            tuple: The losses (``loss_ldm`` and, for non-zero weights,
            ``loss_proto``, ``loss_rad``, ``loss_margin``) and the detached
            :class:`GeometryBatch` the geometry losses saw, from which the
            class statistics' EMA is updated
            (:class:`~galddc_mm.engine.hooks.ClassGeometryHook`).
        """
        out = self(latents, labels)
        losses = dict(loss_ldm=self.ldm_loss(out.pred_noise, out.noise))
        z0 = self._clamp(out.pred_z0)
        t = out.t
        if self.geometry_t_fraction < 1:
            k = max(1, round(self.geometry_t_fraction * z0.size(0)))
            keep = torch.topk(t, k, largest=False, sorted=False).indices
            z0, labels, t = z0[keep], labels[keep], t[keep]
        # Per-dimension standardised variance per squared encoder-space
        # radius (isotropic classes): sum_d std_d^-2 / D^2.
        inv_var = self.normalizer.std.float().pow(-2).sum() / (
            self.latent_dim**2)
        shrinkage = geometry.shrinkage(labels,
                                       self.schedule.alphas_cumprod[t],
                                       inv_var)
        # A copy: the EMA updates the buffer in place after this step, and
        # autograd keeps the prototypes for the backward pass of these
        # losses.
        protos = self._clamp(geometry.prototypes).clone()
        if self.proto_loss.loss_weight > 0:
            losses['loss_proto'] = self.proto_loss(z0, labels, protos)
        if self.radius_loss.loss_weight > 0:
            losses['loss_rad'] = self.radius_loss(
                z0, labels, protos, geometry.r_cal, target_scale=shrinkage)
        if self.margin_loss.loss_weight > 0:
            losses['loss_margin'] = self.margin_loss(z0, labels, protos,
                                                     geometry.valid_mask)
        return losses, GeometryBatch(z0.detach(), labels)

    @property
    def null_class(self) -> int:
        """Label that means "no class" (classifier-free guidance)."""
        return getattr(self.denoiser, 'null_class', self.num_classes)

    def forward(self,
                z0: Tensor,
                labels: Tensor,
                noise: Optional[Tensor] = None,
                t: Optional[Tensor] = None,
                generator: Optional[torch.Generator] = None,
                mode: str = 'tensor',
                geometry=None) -> DiffusionOutput:
        """Training-time forward: noise the latents and predict the noise.

        ``mode='loss'`` returns :meth:`loss` instead (with ``geometry``), so
        that a caller holding the head's DDP wrapper computes the losses
        through the wrapper's ``forward``, as mmengine models do.

        Args:
            z0 (Tensor): Encoder-space latents, shape ``(B, D)``.
            labels (Tensor): Class labels, shape ``(B, )``.
            noise (Tensor, optional): :math:`\\epsilon` in standardised
                space; drawn from ``N(0, I)`` when None. Defaults to None.
            t (Tensor, optional): Timesteps ``(B, )``; uniform when None.
                Defaults to None.
            generator (torch.Generator, optional): Generator (on the device
                of ``z0``) for ``t``, ``noise`` and label dropping.
                Defaults to None.

            mode (str): ``'tensor'`` or ``'loss'``. Defaults to 'tensor'.
            geometry (ClassGeometry, optional): Needed by ``mode='loss'``.

        Returns:
            DiffusionOutput: ``noise``, ``pred_noise``, ``t``, ``z_t``
            (standardised space) and ``pred_z0`` (encoder space).
        """
        if mode == 'loss':
            return self.loss(z0, labels, geometry)
        if mode != 'tensor':
            raise ValueError(f"mode must be 'tensor' or 'loss', got {mode!r}.")
        if z0.dim() != 2 or z0.size(1) != self.latent_dim:
            raise ValueError(f'`z0` must have shape (B, {self.latent_dim}), '
                             f'got {tuple(z0.shape)}.')
        batch, device = z0.size(0), z0.device
        if labels.shape != (batch, ):
            raise ValueError(f'`labels` must have shape ({batch}, ), got '
                             f'{tuple(labels.shape)}.')
        z0_std = self.normalizer.normalize(z0)
        if t is None:
            t = self.schedule.sample_timesteps(
                batch, device, generator=generator)
        elif t.shape != (batch, ):
            raise ValueError(f'`t` must have shape ({batch}, ), got '
                             f'{tuple(t.shape)}.')
        if noise is None:
            noise = torch.randn(
                z0_std.shape,
                generator=generator,
                device=device,
                dtype=z0_std.dtype)
        elif noise.shape != z0.shape:
            raise ValueError(f'`noise` must have shape {tuple(z0.shape)}, '
                             f'got {tuple(noise.shape)}.')
        cond = labels
        if self.training and self.cond_drop_prob > 0:
            drop = torch.rand(
                batch, generator=generator,
                device=device) < self.cond_drop_prob
            cond = torch.where(drop, torch.full_like(labels, self.null_class),
                               labels)
        z_t = self.schedule.q_sample(z0_std, t, noise)
        pred_noise = self.denoiser(z_t, t, cond)
        pred_z0 = self.normalizer.denormalize(
            self.schedule.predict_z0(z_t, t, pred_noise))
        return DiffusionOutput(noise, pred_noise, t, z_t, pred_z0)

    @torch.no_grad()
    def sample(self,
               labels: Tensor,
               num_steps: Optional[int] = None,
               eta: Optional[float] = None,
               guidance_scale: Optional[float] = None,
               generator: Optional[torch.Generator] = None,
               z_T: Optional[Tensor] = None,
               cuda_graph: bool = False,
               compile_denoiser: Union[bool, dict] = False) -> Tensor:
        """Draw latents :math:`\\hat z_0 \\sim p_\\theta(z_0 | y)` by DDIM.

        The :math:`\\hat z_0` estimate is bounded at every step (and so is
        the result) by ``clip_z0`` in standardised units and by
        ``feature_clamp_max`` in encoder space, as in the stage-2 losses.

        Sampling uses the denoiser as it is; call ``.eval()`` first if it
        has dropout. Under autocast with a 16-bit dtype, the linear layers
        run from a 16-bit copy of their weights (refreshed whenever the
        weights change): autocast caches its weight casts only for weights
        that require grad, so a frozen denoiser (stage 3) would otherwise
        re-cast every weight at every step. The copy holds the very values
        autocast would produce, so the result is unchanged.

        Args:
            labels (Tensor): Class of each sample, shape ``(B, )``.
            num_steps (int, optional): DDIM steps. Defaults to the
                sampler's.
            eta (float, optional): DDIM :math:`\\eta`. Defaults to the
                sampler's.
            guidance_scale (float, optional): Classifier-free guidance
                scale. Defaults to the sampler's.
            generator (torch.Generator, optional): Generator on the device
                of ``labels``. Defaults to None.
            z_T (Tensor, optional): Starting noise, standardised space,
                ``(B, D)``. Defaults to None.
            cuda_graph (bool): On a CUDA device, capture the whole chain
                (every step's denoiser call and update) in one CUDA graph
                per batch size and setting, and replay it: one launch
                instead of ~60 per step. Ignored on other devices and with
                a ``generator``. The output is a fresh tensor. Defaults to
                False.
            compile_denoiser (bool | dict): On a CUDA device, run the
                denoiser through ``torch.compile`` (a dict gives its keyword
                arguments; True means ``dict(dynamic=False)``, one
                compilation per batch size): the element-wise work between
                its matrix products (LayerNorm, SiLU, FiLM, casts), most of
                a large batch's time, fused into few kernels. Same function
                up to float rounding; a failed compilation falls back to
                eager, said once in the log. Defaults to False.

        Returns:
            Tensor: Encoder-space latents, shape ``(B, D)``.
        """
        self.check_sampling_steps(num_steps, 'num_steps')
        clamp = self.feature_clamp_max
        compile_cfg = compile_kwargs(compile_denoiser, 'compile_denoiser')
        if cuda_graph and labels.is_cuda and generator is None:
            return self._graphed_sample(labels, num_steps, eta,
                                        guidance_scale, clamp, z_T,
                                        compile_cfg)
        return self._sample(labels, num_steps, eta, guidance_scale, clamp,
                            generator, z_T, compile_cfg)

    def _sample(self, labels: Tensor, num_steps: Optional[int],
                eta: Optional[float], guidance_scale: Optional[float],
                clamp: Optional[float],
                generator: Optional[torch.Generator],
                z_T: Optional[Tensor],
                compile_cfg: Optional[dict] = None) -> Tensor:
        """The eager sampling chain behind :meth:`sample`."""
        lo = hi = None
        if self.clip_z0 == 'data':
            lo, hi = self.normalizer.data_min, self.normalizer.data_max
        elif self.clip_z0 is not None:
            lo, hi = -float(self.clip_z0), float(self.clip_z0)
        z0_fn = None
        if clamp is not None or lo is not None:

            def z0_fn(z: Tensor) -> Tensor:
                if lo is not None:
                    z = torch.clamp(z, lo, hi)
                if clamp is not None:
                    z = self.normalizer.denormalize(z).clamp(-clamp, clamp)
                    z = self.normalizer.normalize(z)
                return z

        denoiser = self._sampling_denoiser(labels.device)
        if compile_cfg is not None:
            denoiser = self._compiled(denoiser, compile_cfg)
        z0 = self.sampler.sample(
            denoiser,
            self.schedule,
            labels,
            self.latent_dim,
            num_steps=num_steps,
            eta=eta,
            guidance_scale=guidance_scale,
            null_label=self.null_class,
            generator=generator,
            z0_fn=z0_fn,
            z_T=z_T)
        z0 = self.normalizer.denormalize(z0)
        if clamp is not None:
            # The last step returns the clamped estimate; clamp again only
            # to remove the round-off of normalise -> denormalise.
            z0 = z0.clamp(-clamp, clamp)
        return z0

    def _sampling_denoiser(self, device: torch.device) -> nn.Module:
        """The denoiser, or its 16-bit-linear copy under 16-bit autocast.

        The copy is kept outside the module tree (not in ``state_dict``,
        ``parameters()`` or DDP) and refreshed in place from the denoiser
        at every call, so its storage stays put for captured CUDA graphs
        and it can never be stale (however the weights were changed). The
        refresh is one pass over the weights, what autocast would spend at
        every single step.
        """
        dtype = _autocast_dtype(device.type)
        linears = [
            m for m in self.denoiser.modules() if isinstance(m, nn.Linear)
        ]
        if (dtype is None or not linears
                or any(m.weight.dtype != torch.float32 for m in linears)):
            return self.denoiser
        params = list(self.denoiser.parameters())
        layout = (dtype, params[0].device,
                  tuple(p.shape for p in params))
        cached = self.__dict__.get('_lowp_denoiser')
        if cached is None or cached[0] != layout:
            shadow = copy.deepcopy(self.denoiser).requires_grad_(False)
            for module in shadow.modules():
                if isinstance(module, nn.Linear):
                    module.to(dtype)
            cached = (layout, shadow)
            # Plain attribute: nn.Module would register it as a child.
            self.__dict__['_lowp_denoiser'] = cached
        else:
            with torch.no_grad():
                torch._foreach_copy_(list(cached[1].parameters()), params)
        shadow = cached[1]
        if shadow.training != self.denoiser.training:
            shadow.train(self.denoiser.training)
        return shadow

    def _compiled(self, denoiser: nn.Module,
                  compile_cfg: dict) -> CompiledCall:
        """``denoiser`` through ``torch.compile``, kept while it is used.

        The sampling denoiser is one object refreshed in place (see
        :meth:`_sampling_denoiser`), so one compiled call serves every
        sampling of a run. Switching between autocast and float32 sampling
        switches between the denoiser and its 16-bit copy, each switch a
        new compilation; past dynamo's recompilation limit (8) it runs
        eagerly without a word.
        """
        cached = self.__dict__.get('_compiled_denoiser')
        if (cached is None or cached[0] is not denoiser
                or cached[1].compile_cfg != compile_cfg):
            cached = (denoiser,
                      CompiledCall(denoiser, compile_cfg,
                                   name='compile_denoiser: the sampling '
                                   'denoiser'))
            # Plain attribute: nn.Module would register it as a child.
            self.__dict__['_compiled_denoiser'] = cached
        return cached[1]

    def _graphed_sample(self, labels: Tensor, num_steps: Optional[int],
                        eta: Optional[float], guidance_scale: Optional[float],
                        clamp: Optional[float], z_T: Optional[Tensor],
                        compile_cfg: Optional[dict] = None) -> Tensor:
        """:meth:`_sample` captured once as a CUDA graph, then replayed.

        A graph is kept per batch size, device, sampling setting, autocast
        dtype and weight storage (at most :attr:`MAX_GRAPHS`, the oldest
        dropped). Inputs are copied into the graph's static tensors; the
        starting noise is drawn outside the graph, the ``eta`` noise inside
        (CUDA graphs replay the default generator with fresh offsets).
        """
        device = labels.device
        dtype = _autocast_dtype(device.type)
        # The graph reads the weights where they are (or refreshes the
        # 16-bit copy from them inside the graph): new storage, new graph.
        key = (labels.shape[0], str(device), num_steps, eta, guidance_scale,
               clamp, self.clip_z0, dtype, repr(compile_cfg),
               tuple(p.data_ptr() for p in self.denoiser.parameters()))
        graphs = self.__dict__.setdefault('_sample_graphs', OrderedDict())
        entry = graphs.get(key)
        if entry is None:
            static_labels = labels.clone()
            static_z = torch.randn(
                labels.shape[0], self.latent_dim, device=device)

            def run() -> Tensor:
                return self._sample(static_labels, num_steps, eta,
                                    guidance_scale, clamp, None, static_z,
                                    compile_cfg)

            # Warm up on a side stream (lazy cuBLAS/cuDNN initialisation
            # must not happen during capture), as torch.cuda.graph asks.
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                run()
            torch.cuda.current_stream(device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            # thread_local: NCCL's watchdog thread may query events while
            # this thread captures (DDP). No autocast cache in the capture:
            # a cached cast is freed when the caller's autocast exits.
            with torch.cuda.graph(graph, capture_error_mode='thread_local'):
                with torch.autocast(
                        device.type,
                        dtype=dtype or torch.float32,
                        enabled=dtype is not None,
                        cache_enabled=False):
                    static_out = run()
            entry = (graph, static_labels, static_z, static_out)
            graphs[key] = entry
            while len(graphs) > self.MAX_GRAPHS:
                graphs.popitem(last=False)
        graph, static_labels, static_z, static_out = entry
        static_labels.copy_(labels)
        if z_T is None:
            static_z.normal_()
        else:
            static_z.copy_(z_T)
        graph.replay()
        return static_out.clone()
