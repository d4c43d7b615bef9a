# Copyright (c) galddc_mm contributors. All rights reserved.
import warnings
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from mmengine.dist import all_reduce
from mmengine.model import BaseModule
from mmpretrain.registry import MODELS

from galddc_mm.datasets.long_tail import head_tail_masks

from ..losses.utils import float32_geometry


def _format_classes(classes: Sequence[int], limit: int = 20) -> str:
    """``[3, 7, ...]`` with at most ``limit`` entries and the total."""
    classes = list(classes)
    shown = ', '.join(str(c) for c in classes[:limit])
    more = f', ... ({len(classes)} in all)' if len(classes) > limit else ''
    return f'[{shown}{more}]'


#: How r_obs, r_prior and the radius loss's target share a scale (see
#: ClassGeometry).
RADIUS_SCALES = ('data', 'seed', 'denoised')


def posterior_shrinkage(radius: torch.Tensor, abar: torch.Tensor,
                        inv_var: torch.Tensor) -> torch.Tensor:
    r"""How far a posterior mean sits from its class centre, relative.

    For a class :math:`z_0 \sim \mathcal{N}(\mu, \sigma^2 I)` in the
    diffusion's standardised space and :math:`z_t = \sqrt{\bar\alpha_t}
    z_0 + \sqrt{1 - \bar\alpha_t}\,\epsilon`, the denoised estimate
    :math:`E[z_0 | z_t]` deviates from :math:`\mu` with variance
    :math:`\sigma^2 s_t` per dimension, where :math:`s_t = \bar\alpha_t
    \sigma^2 / (\bar\alpha_t \sigma^2 + 1 - \bar\alpha_t)`. Returns
    :math:`\sqrt{s_t}`: the ratio of the estimate's radius to the class's.

    Args:
        radius (Tensor): The class radius in encoder space, any shape.
        abar (Tensor): :math:`\bar\alpha_t`, broadcastable to ``radius``.
        inv_var (Tensor): Scalar turning a squared encoder-space radius
            into the per-dimension variance in standardised space,
            :math:`\sum_d s_d^{-2} / D^2` for the normaliser's scales
            :math:`s_d` (exact for isotropic classes).

    Returns:
        Tensor: :math:`\sqrt{s_t}` in (0, 1], the shape of ``radius``.
    """
    var = radius.square() * inv_var
    signal = abar * var
    return (signal / (signal + 1 - abar)).clamp_min(1e-12).sqrt()


@MODELS.register_module()
class ClassGeometry(BaseModule):
    r"""Per-class latent geometry of GALD-DC: prototypes and radii.

    With :math:`n_y` training latents of class :math:`y`, head classes are
    :math:`C_{head} = \{y : n_y \ge \tau\}` and tail classes
    :math:`C_{tail} = \{y : 0 < n_y < \tau\}` (a class without any latent
    is *invalid*: neither head nor tail, see :attr:`valid_mask`).

    **Initialisation** from the real latents :math:`D_z`
    (:meth:`init_from_latents`, between stages 1 and 2):

    .. math::
        \mu_y = \frac{1}{n_y} \sum_{i: y_i = y} z_i, \qquad
        r^{real}_y = r^{obs}_y = \frac{1}{n_y} \sum_{i: y_i = y}
            \lVert z_i - \mu_y \rVert_2, \qquad
        r_{prior} = \frac{1}{|C_{head}|} \sum_{y \in C_{head}} r^{real}_y.

    **EMA during stage 2** (:meth:`ema_update`) from a batch of denoised
    estimates :math:`\tilde{z}_0`, for each class :math:`y` present in the
    (global) batch, with :math:`B_y` its samples there:

    .. math::
        m_y = \frac{1}{|B_y|} \sum_{i \in B_y} \tilde{z}_{0,i}, \qquad
        \mu_y \leftarrow (1 - \beta_p) \mu_y + \beta_p m_y,

    .. math::
        \hat{r}_y = \frac{1}{|B_y|} \sum_{i \in B_y}
            \lVert \tilde{z}_{0,i} - \mu_y \rVert_2, \qquad
        r^{obs}_y \leftarrow (1 - \beta_r) r^{obs}_y + \beta_r \hat{r}_y.

    :math:`\hat{r}_y` is measured to the prototype *after* its update in
    the same step (the seed's order: prototypes first, then radii), so
    radius and centre describe the same distribution estimate. Classes
    absent from the batch keep their statistics. :math:`r_{prior}` stays
    fixed at its initial value: it is the "healthy spread" of the real
    head classes, and letting it follow the generator would let tail
    calibration chase its own errors.

    **Calibrated radius** (:attr:`r_cal`):

    .. math::
        r^{cal}_y = \begin{cases} r^{obs}_y & y \in C_{head} \\
            \lambda r^{obs}_y + (1 - \lambda) \bar r & y \in C_{tail}
            \end{cases}

    and 0 for invalid classes. The denoised estimates :math:`\tilde z_0`
    are posterior means, which shrink towards :math:`\mu_y` as t grows
    (about half the real radius over the least-noisy half of the
    timesteps), while :math:`r_{prior}` is measured on real latents.
    ``radius_scale`` says how the two are put on one scale
    (docs/mechanism.md compares the options on a known-answer testbed):

    - ``'data'`` (default): everything on the scale of the real latents.
      :math:`r^{obs}` is the real radius (:attr:`r_real`, no EMA; the
      prototypes still follow theirs), so both terms of the tail target
      are measured the same way, and the radius loss asks each estimate
      for :math:`r^{cal}_y \sqrt{s_t}`, the distance the posterior mean
      of a class of radius :math:`r^{cal}_y` has at its timestep
      (:func:`posterior_shrinkage`). A head class whose denoiser is the
      true posterior mean meets its target exactly, so the loss no longer
      pushes every estimate outwards. An EMA of distances divided by
      :math:`\sqrt{s_t}` was tried and diverges: a larger estimate raises
      the head targets, which push the estimates further out
      (docs/mechanism.md).
    - ``'seed'`` (the seed's): raw distances into the EMA, the raw target
      :math:`r^{cal}_y` for every t, :math:`\bar r = r_{prior}`: the tail
      target mixes two scales, and the radius loss pushes the shrunk
      estimates of every class outwards.
    - ``'denoised'``: as ``'seed'``, but :math:`\bar r` is
      :attr:`r_prior_denoised`, the head classes' mean of :math:`r^{obs}`,
      so both terms of the tail target are on the scale of
      :math:`\tilde z_0`.

    Everything is stored in persistent buffers (``counts``, ``prototypes``,
    ``r_obs``, ``r_real``, ``real_prototypes``, ``r_prior``,
    ``initialized``), so checkpoints and ``--resume`` carry the geometry
    with no extra code. Initialisation takes the whole of :math:`D_z`
    (every rank holds the gathered latent cache), so every rank computes
    the same buffers without communicating. The EMA's batch sums and counts
    are all-reduced with :func:`mmengine.dist.all_reduce` (a no-op without
    distributed training), so every rank applies the update of the global
    batch.

    Args:
        num_classes (int): Number of classes :math:`K`.
        latent_dim (int): Latent dimension :math:`D`.
        tau (int | float): Head/tail threshold :math:`\tau` on the number of
            training samples. Defaults to 20.
        lam (float): Calibration weight :math:`\lambda` in [0, 1] of the
            observed radius of tail classes. Defaults to 0.5.
        proto_momentum (float): EMA momentum :math:`\beta_p` in [0, 1] of
            the prototypes. Defaults to 0.01.
        radius_momentum (float): EMA momentum :math:`\beta_r` in [0, 1] of
            the observed radii. Defaults to 0.01.
        radius_scale (str): ``'data'``, ``'seed'`` or ``'denoised'``, see
            above. Defaults to ``'data'``.
        init_cfg (dict, optional): Unused (no parameters); kept for the
            :class:`BaseModule` interface. Defaults to None.
    """

    def __init__(self,
                 num_classes: int,
                 latent_dim: int,
                 tau: Union[int, float] = 20,
                 lam: float = 0.5,
                 proto_momentum: float = 0.01,
                 radius_momentum: float = 0.01,
                 radius_scale: str = 'data',
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError('`num_classes` must be a positive int, but got '
                             f'{num_classes!r}.')
        if not isinstance(latent_dim, int) or latent_dim < 1:
            raise ValueError('`latent_dim` must be a positive int, but got '
                             f'{latent_dim!r}.')
        # tau <= 0 would make every class (even an empty one) "head".
        if not tau > 0:
            raise ValueError(f'`tau` must be > 0, but got {tau!r}.')
        for name, value in (('lam', lam), ('proto_momentum', proto_momentum),
                            ('radius_momentum', radius_momentum)):
            if not 0 <= value <= 1:
                raise ValueError(f'`{name}` must lie in [0, 1], but got '
                                 f'{value!r}.')
        if radius_scale not in RADIUS_SCALES:
            raise ValueError(f'`radius_scale` must be one of '
                             f'{RADIUS_SCALES}, but got {radius_scale!r}.')
        self.radius_scale = radius_scale
        self.num_classes = num_classes
        self.latent_dim = latent_dim
        self.tau = tau
        self.lam = lam
        self.proto_momentum = proto_momentum
        self.radius_momentum = radius_momentum

        self.register_buffer('counts',
                             torch.zeros(num_classes, dtype=torch.int64))
        self.register_buffer('prototypes',
                             torch.zeros(num_classes, latent_dim))
        self.register_buffer('r_obs', torch.zeros(num_classes))
        self.register_buffer('r_real', torch.zeros(num_classes))
        # The prototypes of the real latents, kept apart from the EMA'd
        # ``prototypes``: reports measure generated latents against them.
        self.register_buffer('real_prototypes',
                             torch.zeros(num_classes, latent_dim))
        self.register_buffer('r_prior', torch.zeros(()))
        # uint8 rather than bool: every collective backend (DDP's buffer
        # broadcast included) handles it.
        self.register_buffer('initialized', torch.zeros((),
                                                        dtype=torch.uint8))
        # Host-side memo of `initialized`, so the per-step EMA does not
        # read the buffer back from the device (a sync) every iteration.
        self._known_initialized = False

    # ------------------------------------------------------------------
    # Derived quantities
    # ------------------------------------------------------------------
    @property
    def is_initialized(self) -> bool:
        """Whether :meth:`init_from_latents` has run (or was loaded)."""
        return bool(self.initialized)

    @property
    def valid_mask(self) -> torch.Tensor:
        """Bool (K,): classes with at least one training latent."""
        return self.counts > 0

    @property
    def head_mask(self) -> torch.Tensor:
        """Bool (K,): head classes, ``counts >= tau``."""
        return head_tail_masks(self.counts, self.tau)[0]

    @property
    def tail_mask(self) -> torch.Tensor:
        """Bool (K,): tail classes, ``0 < counts < tau``."""
        return head_tail_masks(self.counts, self.tau)[1]

    @property
    def r_prior_denoised(self) -> torch.Tensor:
        """Float (): the head classes' mean EMA radius :math:`r^{obs}`."""
        head = self.head_mask
        # A masked mean without a host sync (no head class: 0).
        return (self.r_obs * head).sum() / head.sum().clamp_min(1)

    @property
    def calibration_prior(self) -> torch.Tensor:
        """Float (): the prior of the tail target (``radius_scale``)."""
        return (self.r_prior_denoised
                if self.radius_scale == 'denoised' else self.r_prior)

    def shrinkage(self, labels: torch.Tensor, abar: torch.Tensor,
                  inv_var: torch.Tensor) -> Optional[torch.Tensor]:
        """Per-sample posterior shrinkage of the radius loss and the EMA.

        Args:
            labels (Tensor): Classes of the denoised estimates, ``(B, )``.
            abar (Tensor): Their :math:`\\bar\\alpha_t`, ``(B, )``.
            inv_var (Tensor): See :func:`posterior_shrinkage`.

        Returns:
            Tensor | None: :math:`\\sqrt{s_t}` at :attr:`r_cal`, ``(B, )``,
            with ``radius_scale='data'``; None (no correction) otherwise.
        """
        if self.radius_scale != 'data':
            return None
        with float32_geometry(self.r_obs.device.type):
            return posterior_shrinkage(self.r_cal[labels],
                                       abar.to(self.r_obs), inv_var.to(
                                           self.r_obs))

    @property
    def r_cal(self) -> torch.Tensor:
        """Float (K,): calibrated radii (see the class docstring)."""
        # lerp(prior, r_obs, lam) = lam * r_obs + (1 - lam) * prior; the
        # product with valid_mask zeroes the classes without latents.
        tail = torch.lerp(self.calibration_prior, self.r_obs, self.lam)
        r_cal = torch.where(self.head_mask, self.r_obs, tail)
        return r_cal.mul_(self.valid_mask)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        # The loaded flag may differ: read the buffer again next time.
        self._known_initialized = False

    # ------------------------------------------------------------------
    # Input checks
    # ------------------------------------------------------------------
    def _check_inputs(self,
                      latents: torch.Tensor,
                      labels: torch.Tensor,
                      caller: str,
                      full_check: bool = True) -> None:
        if not isinstance(latents, torch.Tensor) or not isinstance(
                labels, torch.Tensor):
            raise TypeError(f'{caller}: `latents` and `labels` must be '
                            f'tensors, but got {type(latents).__name__} and '
                            f'{type(labels).__name__}.')
        if latents.dim() != 2 or latents.shape[1] != self.latent_dim:
            raise ValueError(f'{caller}: `latents` must have shape (N, '
                             f'{self.latent_dim}) (latent_dim='
                             f'{self.latent_dim}), but got '
                             f'{tuple(latents.shape)}.')
        if not latents.is_floating_point():
            raise TypeError(f'{caller}: `latents` must be floating point, '
                            f'but got {latents.dtype}.')
        if labels.dim() != 1 or labels.shape[0] != latents.shape[0]:
            raise ValueError(f'{caller}: `labels` must have shape '
                             f'({latents.shape[0]},) (one class index per '
                             f'latent), but got {tuple(labels.shape)}.')
        if labels.is_floating_point() or labels.dtype == torch.bool:
            raise TypeError(f'{caller}: `labels` must hold integer class '
                            f'indices, but got {labels.dtype}.')
        # The range check syncs with the device; the per-step EMA does it
        # on CPU only (out-of-range labels on a GPU still fail, as an
        # indexing error).
        if labels.numel() > 0 and (full_check
                                   or labels.device.type == 'cpu'):
            lo, hi = (int(v) for v in torch.aminmax(labels))
            if lo < 0 or hi >= self.num_classes:
                raise ValueError(f'{caller}: `labels` must lie in [0, '
                                 f'{self.num_classes}) (num_classes='
                                 f'{self.num_classes}), but got values in '
                                 f'[{lo}, {hi}].')

    def check_class_counts(self, counts: Sequence[int]) -> List[str]:
        """Check training class counts against ``tau`` before they are used.

        Without any head class :math:`r_{prior}` (the mean radius of head
        classes) is undefined: a ``ValueError`` asks for a smaller ``tau``.
        A set without any tail class (calibration is then a no-op) and
        classes without any training sample are allowed; they are returned
        as warnings for the caller to log.

        Args:
            counts (Sequence[int]): Training samples per class, (K,).

        Returns:
            list[str]: Warnings, empty when all is well.
        """
        counts = np.asarray(
            counts.cpu() if isinstance(counts, torch.Tensor) else counts)
        valid = counts > 0
        if not valid.any():
            raise ValueError('The training set has no sample in any class.')
        head, tail = head_tail_masks(counts, self.tau)
        lo, hi = int(counts[valid].min()), int(counts.max())
        if not head.any():
            raise ValueError(
                f'model.geometry.tau={self.tau} is above every class count '
                f'of the training set (counts range over [{lo}, {hi}]): no '
                'head class, so r_prior (the mean radius of head classes) '
                f'is undefined. Use model.geometry.tau <= {hi}.')
        warnings_ = []
        if not tail.any():
            warnings_.append(
                f'model.geometry.tau={self.tau} is at or below every '
                f'non-empty class count (smallest {lo}): no tail class, so '
                'calibration is a no-op (r_cal = r_obs). Use tau > '
                f'{lo} to calibrate the smallest classes.')
        if not valid.all():
            empty = np.flatnonzero(~valid).tolist()
            warnings_.append(
                f'{len(empty)} class(es) have no training sample: '
                f'{_format_classes(empty)}. The geometry marks them invalid '
                '(no prototype, excluded from r_prior, margins and '
                'pseudo-latent labels); they can still be predicted only by '
                'chance.')
        return warnings_

    # ------------------------------------------------------------------
    # Statistics
    # ------------------------------------------------------------------
    @torch.no_grad()
    def init_from_latents(
            self,
            latents: torch.Tensor,
            labels: torch.Tensor,
            class_counts: Optional[Union[torch.Tensor, np.ndarray,
                                         Sequence[int]]] = None,
            chunk_size: int = 8192) -> None:
        """Initialise the geometry from the real latents :math:`D_z`.

        ``latents`` must be the whole of :math:`D_z` (the gathered latent
        cache, which every rank holds): nothing is reduced across ranks, so
        each rank computes the same buffers. Sums are accumulated in
        float64 over chunks of ``chunk_size`` latents, which bounds the
        extra memory.

        Classes with no latent get ``valid_mask`` False, a zero prototype
        and zero radii, are left out of :math:`r_{prior}` and are named in
        a warning. Without any head class :math:`r_{prior}` is undefined:
        a ``ValueError`` asks for a smaller ``tau``. Without any tail class
        calibration is a no-op (:math:`r^{cal} = r^{obs}`); this is allowed
        (e.g. a balanced data set) but warned about (see
        :meth:`check_class_counts`).

        Args:
            latents (torch.Tensor): All real latents, (N, D).
            labels (torch.Tensor): Their class indices, (N,).
            class_counts (array-like, optional): Per-class numbers of
                training samples from the data set
                (``dataset.get_class_counts()``), shape (K,). When given,
                they must equal the numbers of latents per class, which
                catches a cache built from another split or an incomplete
                gather. Defaults to None.
            chunk_size (int): Latents processed at once. Defaults to 8192.
        """
        self._check_inputs(latents, labels, 'init_from_latents')
        device = self.prototypes.device
        num_classes, dim = self.num_classes, self.latent_dim
        if latents.shape[0] == 0:
            raise ValueError('init_from_latents: got no latent at all; '
                             'extract the latent cache first.')

        # Pass 1: per-class sums and counts -> prototypes.
        acc = torch.zeros(num_classes, dim + 1, dtype=torch.float64,
                          device=device)
        for start in range(0, latents.shape[0], chunk_size):
            z = latents[start:start + chunk_size].to(device, torch.float64)
            y = labels[start:start + chunk_size].to(device, torch.long)
            acc.index_add_(0, y, torch.cat([z, torch.ones_like(z[:, :1])],
                                           dim=1))
        counts = acc[:, -1].round().long()
        protos = acc[:, :-1] / acc[:, -1:].clamp_min(1)

        if class_counts is not None:
            if isinstance(class_counts, torch.Tensor):
                expected = class_counts.detach().cpu().long().flatten()
            else:
                expected = torch.as_tensor(
                    np.asarray(class_counts), dtype=torch.long).flatten()
            if expected.shape != (num_classes, ):
                raise ValueError('init_from_latents: `class_counts` must '
                                 f'have shape ({num_classes},), but got '
                                 f'{tuple(expected.shape)}.')
            bad = (expected.to(device) != counts).nonzero().flatten()
            if bad.numel() > 0:
                idx = bad[:20].tolist()
                raise ValueError(
                    'init_from_latents: the number of latents per class '
                    'does not match `class_counts` (the training counts '
                    f'of the data set) for classes {_format_classes(idx)}'
                    f': latents {counts[bad[:20]].tolist()} vs '
                    f'class_counts {expected[bad[:20].cpu()].tolist()}'
                    f'{" ..." if bad.numel() > 20 else ""}. Extract the '
                    'latents from the training split, gather every rank '
                    'and drop duplicated indices of the distributed '
                    'sampler.')
        for message in self.check_class_counts(counts):
            warnings.warn(f'ClassGeometry: {message}')
        head = head_tail_masks(counts, self.tau)[0]

        # Pass 2: mean distance to the prototype per class.
        dist_sum = torch.zeros(num_classes, dtype=torch.float64,
                               device=device)
        for start in range(0, latents.shape[0], chunk_size):
            z = latents[start:start + chunk_size].to(device, torch.float64)
            y = labels[start:start + chunk_size].to(device, torch.long)
            dist_sum.index_add_(0, y, (z - protos[y]).norm(dim=1))
        radii = dist_sum / counts.clamp_min(1)

        self.counts.copy_(counts)
        self.prototypes.copy_(protos)
        self.real_prototypes.copy_(protos)
        self.r_real.copy_(radii)
        self.r_obs.copy_(radii)
        self.r_prior.copy_(radii[head].mean())
        self.initialized.fill_(1)
        self._known_initialized = True

    @torch.no_grad()
    def ema_update(self, latents: torch.Tensor,
                   labels: torch.Tensor) -> None:
        """Move prototypes and observed radii towards a batch of latents.

        Implements the EMA of the class docstring for the classes present
        in the global batch (all ranks' ``latents`` together): batch sums
        and counts are all-reduced, so every rank applies the same update.
        Classes absent from the global batch are left unchanged.

        Args:
            latents (torch.Tensor): Denoised estimates
                :math:`\\tilde{z}_0` of this rank, (B, D); no gradient is
                taken.
            labels (torch.Tensor): Their class indices, (B,).
        """
        if not self._known_initialized:
            if not self.is_initialized:
                raise RuntimeError(
                    'ClassGeometry.ema_update called before '
                    'init_from_latents: initialise the geometry from the '
                    'real latents first (or load a checkpoint that carries '
                    'it).')
            self._known_initialized = True
        self._check_inputs(latents, labels, 'ema_update', full_check=False)
        # float32 whatever the autocast state (see float32_geometry).
        with float32_geometry(self.prototypes.device.type):
            self._ema_update(latents.to(self.prototypes),
                             labels.to(self.prototypes.device, torch.long))

    def _ema_update(self, z: torch.Tensor, y: torch.Tensor) -> None:
        num_classes, dim = self.num_classes, self.latent_dim

        # Batch class means m_y (sums and counts in one collective).
        acc = z.new_zeros(num_classes, dim + 1)
        acc.index_add_(0, y, torch.cat([z, torch.ones_like(z[:, :1])], 1))
        all_reduce(acc)
        n = acc[:, -1]
        present = (n > 0).to(z.dtype)
        batch_mean = acc[:, :-1].mul_((1 / n.clamp_min(1))[:, None])
        # mu <- mu + w (m - mu) with w = beta_p for present classes and 0
        # for absent ones: one in-place pass over (K, D) and no host sync
        # to find the present classes; lerp with weight 0 returns mu
        # exactly.
        self.prototypes.lerp_(batch_mean,
                              (self.proto_momentum * present)[:, None])

        if self.radius_scale == 'data':
            # r_obs stays the real radius (see the class docstring).
            return
        # Batch radii, measured to the updated prototypes.
        dist_sum = z.new_zeros(num_classes)
        dist_sum.index_add_(0, y, (z - self.prototypes[y]).norm(dim=1))
        all_reduce(dist_sum)
        batch_radius = dist_sum / n.clamp_min(1)
        self.r_obs.lerp_(batch_radius, self.radius_momentum * present)

    def summary(self) -> Dict[str, float]:
        """Small dict of floats for logging.

        Keys: ``num_head``, ``num_tail`` (class numbers), ``r_prior``,
        ``r_obs_head``, ``r_obs_tail`` (mean observed radius of head / tail
        classes), ``r_cal_tail`` (mean calibrated radius of tail classes).
        A mean over an empty set is reported as 0.0.
        """

        def _mean(values: torch.Tensor, mask: torch.Tensor) -> float:
            return float(values[mask].mean()) if bool(mask.any()) else 0.

        head, tail = self.head_mask, self.tail_mask
        return dict(
            num_head=float(head.sum()),
            num_tail=float(tail.sum()),
            r_prior=float(self.r_prior),
            r_obs_head=_mean(self.r_obs, head),
            r_obs_tail=_mean(self.r_obs, tail),
            r_cal_tail=_mean(self.r_cal, tail))
