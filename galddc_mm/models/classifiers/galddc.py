# Copyright (c) galddc_mm contributors. All rights reserved.
import copy
from typing import Dict, List, Optional, Sequence, Union

import torch
import torch.nn as nn
from mmengine.model import is_model_wrapper
from mmengine.optim import OptimWrapper, OptimWrapperDict
from mmpretrain.models.classifiers import ImageClassifier
from mmpretrain.registry import MODELS
from mmpretrain.structures import DataSample

STAGES = ('representation', 'diffusion', 'finetune')
FINETUNE_MODES = ('stable', 'hybrid')
PSEUDO_LABEL_DISTS = ('inverse', 'tail', 'uniform')

# Which optimiser wrapper (part) each stage trains.
STAGE_PARTS = {
    ('representation', None): ('encoder', 'head'),
    ('diffusion', None): ('diffusion', ),
    ('finetune', 'stable'): ('head', ),
    ('finetune', 'hybrid'): ('encoder', 'head'),
}


def _plain(module: nn.Module) -> nn.Module:
    """The module behind a (separate) DDP wrapper, or the module itself."""
    return module.module if is_model_wrapper(module) else module


def _build(cfg_or_module, **defaults) -> nn.Module:
    if isinstance(cfg_or_module, nn.Module):
        return cfg_or_module
    cfg = dict(cfg_or_module)
    for key, value in defaults.items():
        cfg.setdefault(key, value)
    return MODELS.build(cfg)


@MODELS.register_module()
class GALDDCClassifier(ImageClassifier):
    """GALD-DC: geometry-aware latent diffusion with distribution calibration.

    One classifier owns every part of the method: the encoder E (backbone +
    neck; its pooled output is the latent ``z``), the classification head G,
    the latent diffusion head (noise predictor eps_theta, schedule, DDIM
    sampler, latent normalisation), the class geometry (prototypes, radii,
    head/tail split) and a frozen copy E^(0) of the encoder. The current
    stage, set by :class:`GALDDCTrainLoop` through :meth:`set_stage`,
    decides what :meth:`loss` computes and which parts train:

    - ``representation``: ``L_CE(G(E(x)), y)`` on E and G.
    - ``diffusion``: ``L_LDM + eta_p L_proto + eta_r L_rad + eta_m L_margin``
      on theta only, computed from the denoised estimate
      ``z~0 = (z_t - sqrt(1 - abar_t) eps_theta) / sqrt(abar_t)``, followed by
      the EMA update of the class geometry.
    - ``finetune`` / ``stable``: ``L_CE(G(z)) + gamma L_CE(G(z^0), y^)`` on G,
      with E frozen and fresh DDIM pseudo-latents ``z^0`` every iteration.
    - ``finetune`` / ``hybrid``: ``L_CE(G(E(x))) + gamma L_CE(G(sg(z^0)))
      + beta ||E(x) - sg(E^(0)(x))||^2`` on E and G; the pseudo-latent term
      reaches G only.

    The loss weights eta_p, eta_r, eta_m, gamma and beta are the
    ``loss_weight`` of the corresponding loss configs. Setting the three
    geometry weights to 0 (and ``lam=1`` in the geometry) gives the plain
    LDMLR-style conditional latent diffusion.

    Args:
        backbone (dict): The backbone config.
        neck (dict): The neck config; must pool to a ``(B, D)`` latent.
        head (dict): The classification head config (``num_classes`` and
            ``in_channels`` are read from it).
        diffusion_head (dict): The :class:`LatentDiffusionHead` config;
            ``latent_dim`` and ``num_classes`` default to the head's.
        geometry (dict): The :class:`ClassGeometry` config; ``latent_dim``
            and ``num_classes`` default to the head's.
        ldm_loss (dict): The noise-prediction loss. Defaults to
            ``dict(type='LDMLoss')``.
        proto_loss (dict): L_proto, ``loss_weight`` is eta_p.
        radius_loss (dict): L_rad, ``loss_weight`` is eta_r.
        margin_loss (dict): L_margin, ``loss_weight`` is eta_m.
        pseudo_loss (dict): L_ge on pseudo-latents, ``loss_weight`` is gamma.
        consistency_loss (dict): L_cons (hybrid), ``loss_weight`` is beta.
        feature_clamp_max (float, optional): Clamp of denoised estimates and
            prototypes before the geometry losses, and of the DDIM z0
            estimate while sampling (the seed's ``feature_clamp_max``).
            Defaults to None (no clamp).
        pseudo_batch_size (int, optional): Pseudo-latents drawn per
            iteration in stage 3. Defaults to None (the real batch size).
        pseudo_label_dist (str): How pseudo labels are drawn: ``'inverse'``
            (p ~ 1 / n_y), ``'tail'`` (uniform over tail classes) or
            ``'uniform'``. Defaults to ``'inverse'``.
        pseudo_sampling (dict, optional): Overrides of the DDIM sampler for
            stage 3 (``num_steps``, ``eta``, ``guidance_scale``).
        update_geometry (bool): Whether stage 2 updates the geometry EMA.
            Defaults to True.
        geometry_t_fraction (float): The fraction of each stage-2 batch, the
            samples with the smallest t, that enters the geometry losses and
            the EMA. At large t the estimate z~0 divides the noise-prediction
            error by sqrt(abar_t) ~ 0, so its geometry is noise and its
            gradient is amplified up to 1/sqrt(abar_T) (~150x for the linear
            schedule); the seed only clamps it. A fixed-size selection
            (top-k of -t) keeps the step free of host-device syncs.
            Defaults to 1.0 (every sample, as the seed).
        pretrained, train_cfg, data_preprocessor, init_cfg: As
            :class:`mmpretrain.models.ImageClassifier`.
    """

    def __init__(self,
                 backbone: dict,
                 neck: dict,
                 head: dict,
                 diffusion_head: dict,
                 geometry: dict = dict(type='ClassGeometry'),
                 ldm_loss: dict = dict(type='LDMLoss'),
                 proto_loss: dict = dict(type='PrototypeLoss'),
                 radius_loss: dict = dict(type='CalibratedRadiusLoss'),
                 margin_loss: dict = dict(type='PrototypeMarginLoss'),
                 pseudo_loss: dict = dict(type='PseudoLatentCELoss'),
                 consistency_loss: dict = dict(
                     type='FeatureConsistencyLoss'),
                 feature_clamp_max: Optional[float] = None,
                 pseudo_batch_size: Optional[int] = None,
                 pseudo_label_dist: str = 'inverse',
                 pseudo_sampling: Optional[dict] = None,
                 update_geometry: bool = True,
                 geometry_t_fraction: float = 1.0,
                 pretrained: Optional[str] = None,
                 train_cfg: Optional[dict] = None,
                 data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None):
        if neck is None:
            raise ValueError(
                'GALDDCClassifier needs a neck that pools the backbone '
                "output to a (B, D) latent, e.g. neck=dict(type="
                "'GlobalAveragePooling').")
        super().__init__(
            backbone=backbone,
            neck=neck,
            head=head,
            pretrained=pretrained,
            train_cfg=train_cfg,
            data_preprocessor=data_preprocessor,
            init_cfg=init_cfg)
        num_classes = getattr(self.head, 'num_classes', None)
        latent_dim = getattr(self.head, 'in_channels', None)
        if num_classes is None or latent_dim is None:
            raise ValueError(
                'The cls head must expose `num_classes` and `in_channels` '
                '(e.g. LinearClsHead); got '
                f'{type(self.head).__name__}.')

        self.diffusion_head = _build(
            diffusion_head, latent_dim=latent_dim, num_classes=num_classes)
        self.geometry = _build(
            geometry, latent_dim=latent_dim, num_classes=num_classes)
        self._check_dims(num_classes, latent_dim)

        self.ldm_loss = _build(ldm_loss)
        self.proto_loss = _build(proto_loss)
        self.radius_loss = _build(radius_loss)
        self.margin_loss = _build(margin_loss)
        self.pseudo_loss = _build(pseudo_loss)
        self.consistency_loss = _build(consistency_loss)

        if pseudo_label_dist not in PSEUDO_LABEL_DISTS:
            raise ValueError(
                f'pseudo_label_dist must be one of {PSEUDO_LABEL_DISTS}, '
                f'got {pseudo_label_dist!r}.')
        if feature_clamp_max is not None and feature_clamp_max <= 0:
            raise ValueError('feature_clamp_max must be positive or None, '
                             f'got {feature_clamp_max}.')
        if pseudo_batch_size is not None and pseudo_batch_size < 1:
            raise ValueError('pseudo_batch_size must be >= 1 or None, got '
                             f'{pseudo_batch_size}.')
        for name in ('proto_loss', 'radius_loss', 'margin_loss',
                     'pseudo_loss', 'consistency_loss', 'ldm_loss'):
            weight = getattr(getattr(self, name), 'loss_weight', 1.0)
            if weight < 0:
                raise ValueError(f'{name}.loss_weight must be >= 0, got '
                                 f'{weight}.')
        self.num_classes = num_classes
        self.latent_dim = latent_dim
        self.feature_clamp_max = feature_clamp_max
        self.pseudo_batch_size = pseudo_batch_size
        self.pseudo_label_dist = pseudo_label_dist
        self.pseudo_sampling = dict(pseudo_sampling or {})
        self.update_geometry = update_geometry
        if not 0 < geometry_t_fraction <= 1:
            raise ValueError('geometry_t_fraction must lie in (0, 1], got '
                             f'{geometry_t_fraction}.')
        self.geometry_t_fraction = float(geometry_t_fraction)

        # E^(0): a frozen copy of the encoder, synchronised from E when the
        # diffusion stage starts (see `freeze_encoder_copy`). It lives in the
        # state dict so that resume restores the anchor of stage 3.
        self.frozen_encoder = nn.ModuleDict(
            dict(
                backbone=copy.deepcopy(self.backbone),
                neck=copy.deepcopy(self.neck)))
        self.frozen_encoder.requires_grad_(False)

        self.stage = 'representation'
        self.finetune_mode = None

    # ------------------------------------------------------------------
    # construction helpers
    # ------------------------------------------------------------------
    def _check_dims(self, num_classes: int, latent_dim: int) -> None:
        for name in ('diffusion_head', 'geometry'):
            part = getattr(self, name)
            for attr, expected in (('latent_dim', latent_dim),
                                   ('num_classes', num_classes)):
                got = getattr(part, attr, expected)
                if got != expected:
                    raise ValueError(
                        f'{name}.{attr}={got} disagrees with the cls head '
                        f'({attr}={expected}, from head.in_channels / '
                        'head.num_classes); leave it unset to inherit it '
                        'or make the two equal.')

    def init_weights(self):
        super().init_weights()
        # Whatever init_cfg did, the frozen copy starts equal to E.
        self.freeze_encoder_copy()

    # ------------------------------------------------------------------
    # stages
    # ------------------------------------------------------------------
    @staticmethod
    def trainable_parts(stage: str, mode: Optional[str] = None) -> tuple:
        """The optimiser-wrapper names a stage trains."""
        key = (stage, mode if stage == 'finetune' else None)
        if key not in STAGE_PARTS:
            raise ValueError(
                f'Unknown stage {stage!r} (mode {mode!r}); stages are '
                f'{STAGES} and finetune modes {FINETUNE_MODES}.')
        return STAGE_PARTS[key]

    def set_stage(self, stage: str, mode: Optional[str] = None) -> None:
        """Switch the stage: what ``loss`` computes and what is trainable.

        Args:
            stage (str): One of ``'representation'``, ``'diffusion'``,
                ``'finetune'``.
            mode (str, optional): ``'stable'`` or ``'hybrid'`` for the
                finetune stage. Defaults to None.
        """
        parts = self.trainable_parts(stage, mode)
        self.stage = stage
        self.finetune_mode = mode if stage == 'finetune' else None
        for part, modules in self.part_modules().items():
            for module in modules:
                module.requires_grad_(part in parts)
        self.frozen_encoder.requires_grad_(False)
        # Re-apply train/eval so frozen parts keep their BN statistics.
        self.train(self.training)

    def part_modules(self) -> Dict[str, List[nn.Module]]:
        """The modules behind each optimiser wrapper name."""
        return dict(
            encoder=[_plain(self.backbone), _plain(self.neck)],
            head=[_plain(self.head)],
            diffusion=[_plain(self.diffusion_head)])

    def train(self, mode: bool = True):
        super().train(mode)
        # Frozen parts run in eval mode: no BN statistic drift, no dropout.
        self.frozen_encoder.eval()
        if mode and self.stage in ('diffusion', 'finetune'):
            parts = self.trainable_parts(self.stage, self.finetune_mode)
            for part, modules in self.part_modules().items():
                if part not in parts:
                    for module in modules:
                        module.eval()
        return self

    @torch.no_grad()
    def freeze_encoder_copy(self) -> None:
        """Copy the current encoder E into the frozen anchor E^(0)."""
        for name in ('backbone', 'neck'):
            src = _plain(getattr(self, name)).state_dict()
            self.frozen_encoder[name].load_state_dict(src)

    # ------------------------------------------------------------------
    # features
    # ------------------------------------------------------------------
    def _encode(self, inputs: torch.Tensor, trainable: bool) -> torch.Tensor:
        """E(x) as a (B, D) tensor; frozen parts bypass their DDP wrapper."""
        if trainable:
            feats = self.neck(self.backbone(inputs))
        else:
            with torch.no_grad():
                feats = _plain(self.neck)(_plain(self.backbone)(inputs))
        return feats[-1] if isinstance(feats, (tuple, list)) else feats

    @torch.no_grad()
    def encode_frozen(self, inputs: torch.Tensor) -> torch.Tensor:
        """E^(0)(x), the frozen anchor's latent, as a (B, D) tensor."""
        feats = self.frozen_encoder['neck'](
            self.frozen_encoder['backbone'](inputs))
        return feats[-1] if isinstance(feats, (tuple, list)) else feats

    def predict(self,
                inputs: torch.Tensor,
                data_samples: Optional[List[DataSample]] = None,
                **kwargs) -> List[DataSample]:
        """Predict with E and G; works in every stage, as upstream."""
        feats = self.extract_feat(inputs)
        return _plain(self.head).predict(feats, data_samples, **kwargs)

    # ------------------------------------------------------------------
    # losses
    # ------------------------------------------------------------------
    def loss(self, inputs: torch.Tensor,
             data_samples: List[DataSample]) -> dict:
        """Losses of the current stage from a batch of images."""
        if self.stage == 'representation':
            # `self.head(...)` goes through the head's DDP wrapper (if any),
            # which only intercepts `forward`; the loss is the head's own.
            # Exactly upstream's work: stage 1 must cost what CE costs.
            logits = self.head(self.extract_feat(inputs))
            return _plain(self.head)._get_loss(logits, data_samples)
        labels = torch.cat([ds.gt_label for ds in data_samples]).to(
            inputs.device)
        if self.stage == 'diffusion':
            # On-the-fly extraction (the seed's way): the frozen anchor
            # gives the latents of this augmented batch.
            return self.diffusion_loss(self.encode_frozen(inputs), labels)
        if self.finetune_mode == 'stable':
            return self.finetune_loss(
                self._encode(inputs, trainable=False), labels)
        feats = self._encode(inputs, trainable=True)
        losses = self.finetune_loss(feats, labels)
        losses['loss_cons'] = self.consistency_loss(
            feats, self.encode_frozen(inputs))
        return losses

    def loss_latents(self, latents: torch.Tensor,
                     labels: torch.Tensor) -> dict:
        """Losses of the current stage from cached latents E^(0)(x)."""
        if self.stage == 'diffusion':
            return self.diffusion_loss(latents, labels)
        if self.stage == 'finetune' and self.finetune_mode == 'stable':
            return self.finetune_loss(latents, labels)
        raise RuntimeError(
            f'Cached latents cannot train stage {self.stage!r} '
            f'(mode {self.finetune_mode!r}): only the diffusion stage and '
            'the stable finetune stage run on cached latents.')

    def _clamp(self, x: torch.Tensor) -> torch.Tensor:
        c = self.feature_clamp_max
        return x if c is None else x.clamp(-c, c)

    def diffusion_loss(self, latents: torch.Tensor,
                       labels: torch.Tensor) -> dict:
        """Stage 2: L_LDM + eta_p L_proto + eta_r L_rad + eta_m L_margin."""
        out = self.diffusion_head(latents, labels)
        losses = dict(loss_ldm=self.ldm_loss(out.pred_noise, out.noise))
        geometry = self.geometry
        # The seed clamps z~0 and prototypes before the geometry losses to
        # stop blow-ups at large t, where z~0 divides by sqrt(abar_t) ~ 0.
        z0 = self._clamp(out.pred_z0)
        if self.geometry_t_fraction < 1:
            k = max(1, round(self.geometry_t_fraction * z0.size(0)))
            keep = torch.topk(out.t, k, largest=False, sorted=False).indices
            z0, labels = z0[keep], labels[keep]
        # A copy: the EMA below updates the buffer in place, and autograd
        # keeps the prototypes for the backward pass of these losses.
        protos = self._clamp(geometry.prototypes).clone()
        if self.proto_loss.loss_weight > 0:
            losses['loss_proto'] = self.proto_loss(z0, labels, protos)
        if self.radius_loss.loss_weight > 0:
            losses['loss_rad'] = self.radius_loss(z0, labels, protos,
                                                  geometry.r_cal)
        if self.margin_loss.loss_weight > 0:
            losses['loss_margin'] = self.margin_loss(z0, labels, protos,
                                                     geometry.valid_mask)
        if self.update_geometry:
            geometry.ema_update(z0.detach(), labels)
        return losses

    def pseudo_label_weights(self) -> torch.Tensor:
        """Unnormalised sampling weights of the pseudo labels, (K,)."""
        counts = self.geometry.counts.float()
        valid = self.geometry.valid_mask.float()
        if self.pseudo_label_dist == 'inverse':
            return valid / counts.clamp(min=1)
        if self.pseudo_label_dist == 'tail':
            tail = self.geometry.tail_mask.float() * valid
            # No tail class: fall back to uniform rather than fail mid-run.
            return torch.where(tail.sum() > 0, tail, valid)
        return valid

    def sample_pseudo_latents(self, num: int, device: torch.device):
        """Draw ``num`` labels and their DDIM pseudo-latents z^0 ~ p(z|y)."""
        weights = self.pseudo_label_weights().to(device)
        labels = torch.multinomial(weights, num, replacement=True)
        head = _plain(self.diffusion_head)
        latents = head.sample(
            labels, clamp=self.feature_clamp_max, **self.pseudo_sampling)
        return latents.detach(), labels

    def finetune_loss(self, latents: torch.Tensor,
                      labels: torch.Tensor) -> dict:
        """Stage 3: CE on real latents + gamma CE on fresh pseudo-latents.

        Real and pseudo latents go through G in ONE forward (one DDP call),
        the pseudo half detached so that it trains G only.
        """
        num_real = latents.size(0)
        num_pseudo = self.pseudo_batch_size or num_real
        pseudo, pseudo_labels = self.sample_pseudo_latents(
            num_pseudo, latents.device)
        feats = torch.cat([latents, pseudo.to(latents.dtype)])
        logits = self.head((feats, ))
        head = _plain(self.head)
        losses = dict(
            loss_cls=head.loss_module(
                logits[:num_real], labels, avg_factor=num_real),
            loss_pseudo=self.pseudo_loss(logits[num_real:], pseudo_labels))
        return losses

    # ------------------------------------------------------------------
    # train step with one optimiser wrapper per part
    # ------------------------------------------------------------------
    def train_step(self, data: Union[dict, tuple, list],
                   optim_wrapper: Union[OptimWrapper, OptimWrapperDict]
                   ) -> Dict[str, torch.Tensor]:
        """Forward, backward and step only the current stage's wrappers.

        ``data`` is either an image batch (processed by the data
        preprocessor) or a cached-latent batch ``dict(latents=, labels=)``
        produced by :class:`GALDDCTrainLoop`.
        """
        parts = self.trainable_parts(self.stage, self.finetune_mode)
        if isinstance(optim_wrapper, OptimWrapperDict):
            missing = [p for p in parts if p not in optim_wrapper]
            if missing:
                raise KeyError(
                    f'Stage {self.stage!r} trains {parts} but optim_wrapper '
                    f'has no {missing}; add them to the optim_wrapper '
                    'config (see GALDDCOptimWrapperConstructor).')
            wrappers = [optim_wrapper[p] for p in parts]
        else:
            wrappers = [optim_wrapper]

        with wrappers[0].optim_context(self):
            if isinstance(data, dict) and 'latents' in data:
                losses = self.loss_latents(data['latents'], data['labels'])
            else:
                data = self.data_preprocessor(data, True)
                losses = self._run_forward(data, mode='loss')
        parsed, log_vars = self.parse_losses(losses)
        self._update_params(parsed, wrappers)
        return log_vars

    @staticmethod
    def _update_params(loss: torch.Tensor,
                       wrappers: Sequence[OptimWrapper]) -> None:
        if len(wrappers) == 1:
            wrappers[0].update_params(loss)
            return
        # One loss, several optimisers: backward once through the first
        # wrapper (which scales the loss under AMP) and step every optimiser
        # with that same scaler, updating the scale once, so that each
        # optimiser unscales by the factor its gradients were scaled with.
        first = wrappers[0]
        first.backward(loss)
        scaler = getattr(first, 'loss_scaler', None)
        for wrapper in wrappers:
            if scaler is None:
                wrapper.step()
            else:
                if wrapper.clip_grad_kwargs:
                    scaler.unscale_(wrapper.optimizer)
                    wrapper._clip_grad()
                scaler.step(wrapper.optimizer)
        if scaler is not None:
            scaler.update(getattr(first, '_scale_update_param', None))
        for wrapper in wrappers:
            wrapper.zero_grad()
