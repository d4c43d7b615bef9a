# Copyright (c) galddc_mm contributors. All rights reserved.
import copy
import functools
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn
from mmengine.dist import broadcast, get_dist_info
from mmengine.optim import OptimWrapper, OptimWrapperDict
from mmpretrain.models.classifiers import ImageClassifier
from mmpretrain.registry import MODELS
from mmpretrain.structures import DataSample
from mmpretrain.utils import get_ori_model

from galddc_mm.utils.compiled_call import compile_kwargs

from .frozen_encoder import FrozenEncoderRunner
from .graphed_step import GraphedTrainStep
from .stages import (
    DIFFUSION,
    FINETUNE,
    PART_CHILDREN,
    REPRESENTATION,
    STABLE,
    trainable_parts,
)

PSEUDO_LABEL_DISTS = ('inverse', 'tail', 'uniform')

# Keys that moved from the classifier to the diffusion head, which owns the
# stage-2 losses and the bound of the denoised estimate.
_MOVED_TO_DIFFUSION_HEAD = ('ldm_loss', 'proto_loss', 'radius_loss',
                            'margin_loss', 'feature_clamp_max',
                            'geometry_t_fraction')


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
    sampler, latent normalisation, and the stage-2 losses), the class
    geometry (prototypes, radii, head/tail split) and a frozen copy E^(0) of
    the encoder. The current stage, set by the training loop through
    :meth:`set_stage`, decides what :meth:`loss` computes and which parts
    train (see :mod:`~galddc_mm.models.classifiers.stages`):

    - ``representation``: ``L_CE(G(E(x)), y)`` on E and G.
    - ``diffusion``: ``L_LDM + eta_p L_proto + eta_r L_rad + eta_m L_margin``
      on theta only (:meth:`LatentDiffusionHead.loss`), from the denoised
      estimate ``z~0 = (z_t - sqrt(1 - abar_t) eps_theta) / sqrt(abar_t)``.
      The step computes losses only; :class:`ClassGeometryHook` fits the
      class statistics when the stage starts and updates their EMA from
      the estimates each step fed to the losses (:meth:`take_geometry_batch`).
    - ``finetune`` / ``stable``: ``L_CE(G(z)) + gamma L_CE(G(z^0), y^)`` on G,
      with E frozen and fresh DDIM pseudo-latents ``z^0`` every iteration.
    - ``finetune`` / ``hybrid``: ``L_CE(G(E(x))) + gamma L_CE(G(sg(z^0)))
      + beta ||E(x) - sg(E^(0)(x))||^2`` on E and G; the pseudo-latent term
      reaches G only.

    The loop, hooks and tools use the narrow API below (:meth:`set_stage`,
    :meth:`trainable_parts`, :meth:`part_modules`,
    :meth:`freeze_encoder_copy`, :meth:`encode_frozen`,
    :meth:`fit_latent_statistics`, :attr:`geometry_ready`,
    :meth:`generate_latents`, :meth:`classify_latents`,
    :meth:`loss_latents`, :meth:`take_geometry_batch`) rather than the
    parts' internals.

    Args:
        backbone (dict): The backbone config.
        neck (dict): The neck config; must pool to a ``(B, D)`` latent.
        head (dict): The classification head config (``num_classes`` and
            ``in_channels`` are read from it).
        diffusion_head (dict): The :class:`LatentDiffusionHead` config, with
            the stage-2 losses (``ldm_loss``, ``proto_loss``,
            ``radius_loss``, ``margin_loss``), ``feature_clamp_max`` and
            ``geometry_t_fraction``; ``latent_dim`` and ``num_classes``
            default to the head's.
        geometry (dict): The :class:`ClassGeometry` config; ``latent_dim``
            and ``num_classes`` default to the head's.
        pseudo_loss (dict): L_ge on pseudo-latents, ``loss_weight`` is gamma.
        consistency_loss (dict): L_cons (hybrid), ``loss_weight`` is beta.
        pseudo_batch_size (int, optional): Pseudo-latents drawn per
            iteration in stage 3. Defaults to None (the real batch size).
        pseudo_label_dist (str): How pseudo labels are drawn: ``'inverse'``
            (p ~ 1 / n_y), ``'tail'`` (uniform over tail classes) or
            ``'uniform'``. Defaults to ``'inverse'``.
        pseudo_sampling (dict, optional): Overrides of the DDIM sampler for
            stage 3 (``num_steps``, ``eta``, ``guidance_scale``,
            ``cuda_graph``, ``compile_denoiser``; see
            :meth:`LatentDiffusionHead.sample`).
        pseudo_bank (bool): Draw the pseudo-latents of a whole stage-3 epoch
            at its start, in chunks of ``pseudo_bank_chunk`` (theta is
            frozen in stage 3, so nothing is lost), and give each step its
            slice, instead of sampling ``pseudo_batch_size`` latents inside
            every step: the DDIM chain runs on large batches, the shape an
            MLP chain needs on a GPU. Labels follow ``pseudo_label_dist``;
            the bank is drawn from a generator seeded by (seed, epoch, rank)
            (see :meth:`prepare_pseudo_bank`), so ranks differ and
            ``--resume`` redraws the same bank. Defaults to False (the
            seed's per-step sampling).
        pseudo_bank_chunk (int): Latents per sampler call when filling the
            bank. Defaults to 8192.
        channels_last (bool): Keep the encoder's (and E^(0)'s) 4-D weights
            and the image batches in the channels-last layout, the layout
            cuDNN's fast convolution kernels (bf16/fp16 tensor cores) want.
            Same numbers up to float rounding; on by default in the GPU
            recipes. Defaults to False.
        fold_frozen_bn (bool): Run E^(0) through a copy whose eval-mode
            BatchNorms are folded into the convolutions before them
            (:class:`FrozenEncoderRunner`): the same affine maps, so the
            same latents up to float rounding. Pays with
            ``compile_frozen_encoder`` only: in eager PyTorch the folded
            convolutions' bias adds cost more than the BatchNorms did
            (docs/benchmarks.md). The copy is rebuilt whenever E^(0)
            changes; an encoder ``torch.fx`` cannot trace runs unfolded
            (said once in the log). Defaults to False.
        compile_frozen_encoder (bool | dict): Run E^(0)'s forward through
            ``torch.compile``; a dict gives its keyword arguments, True
            means ``dict(dynamic=False)`` (one compilation per input shape:
            the full batch, an epoch's last batch, the extraction's). On
            CUDA devices only: a CPU run stays eager. A compilation that
            fails falls back to the eager forward, said once in the log.
            With ``fold_frozen_bn`` a hybrid step on one H200 takes 1.18x
            plain CE instead of 1.30x; off in the recipes, because a whole
            run there is bound by data loading and a compiled run was seen
            to wait ~2 minutes at exit (docs/benchmarks.md). Defaults to
            False.
        cuda_graph_step (bool): Replay the train step of the cached-latent
            stages (diffusion, stable finetune) as one CUDA graph once its
            setting is steady (:class:`GraphedTrainStep`): the inputs and
            pseudo-latents are copied into static tensors, everything else
            (forward, backward, optimiser steps) is one launch. Falls back
            to the eager step, saying why once in the log, where a step
            cannot be captured: CPU, distributed training, fp16 AMP (bf16
            is fine), gradient accumulation or clipping, optimisers other
            than SGD/Adam/AdamW. Under bf16 AMP the captured step does
            without mmengine's loss scaler (scaling by a power of two
            changes no bf16 value; but a step whose gradients are not
            finite is applied, not skipped, and the non-finite loss that
            follows is stopped by :class:`NumericalGuardHook`). Defaults to
            False.
        pretrained, train_cfg, data_preprocessor, init_cfg: As
            :class:`mmpretrain.models.ImageClassifier`.
    """

    def __init__(self,
                 backbone: dict,
                 neck: dict,
                 head: dict,
                 diffusion_head: dict,
                 geometry: dict = dict(type='ClassGeometry'),
                 pseudo_loss: dict = dict(type='PseudoLatentCELoss'),
                 consistency_loss: dict = dict(
                     type='FeatureConsistencyLoss'),
                 pseudo_batch_size: Optional[int] = None,
                 pseudo_label_dist: str = 'inverse',
                 pseudo_sampling: Optional[dict] = None,
                 pseudo_bank: bool = False,
                 pseudo_bank_chunk: int = 8192,
                 channels_last: bool = False,
                 fold_frozen_bn: bool = False,
                 compile_frozen_encoder: Union[bool, dict] = False,
                 cuda_graph_step: bool = False,
                 pretrained: Optional[str] = None,
                 train_cfg: Optional[dict] = None,
                 data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None,
                 **kwargs):
        moved = [k for k in kwargs if k in _MOVED_TO_DIFFUSION_HEAD]
        if moved:
            raise TypeError(
                f'model.{moved[0]} is now a key of the diffusion head, '
                'which owns the stage-2 losses and the bound of the '
                f'denoised estimate: set model.diffusion_head.{moved[0]} '
                'instead.')
        if kwargs:
            raise TypeError('GALDDCClassifier got unexpected keyword '
                            f'arguments {sorted(kwargs)}.')
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
        self.pseudo_loss = _build(pseudo_loss)
        self.consistency_loss = _build(consistency_loss)

        if pseudo_label_dist not in PSEUDO_LABEL_DISTS:
            raise ValueError(
                f'pseudo_label_dist must be one of {PSEUDO_LABEL_DISTS}, '
                f'got {pseudo_label_dist!r}.')
        if pseudo_batch_size is not None and pseudo_batch_size < 1:
            raise ValueError('pseudo_batch_size must be >= 1 or None, got '
                             f'{pseudo_batch_size}.')
        for name in ('pseudo_loss', 'consistency_loss'):
            weight = getattr(getattr(self, name), 'loss_weight', 1.0)
            if weight < 0:
                raise ValueError(f'{name}.loss_weight must be >= 0, got '
                                 f'{weight}.')
        self.num_classes = num_classes
        self.latent_dim = latent_dim
        self.pseudo_batch_size = pseudo_batch_size
        self.pseudo_label_dist = pseudo_label_dist
        self.pseudo_sampling = dict(pseudo_sampling or {})
        self.pseudo_bank = bool(pseudo_bank)
        if pseudo_bank_chunk < 1:
            raise ValueError('pseudo_bank_chunk must be >= 1, got '
                             f'{pseudo_bank_chunk}.')
        self.pseudo_bank_chunk = int(pseudo_bank_chunk)
        self._bank = None  # (latents, labels, cursor) of the epoch
        self.diffusion_head.check_sampling_steps(
            self.pseudo_sampling.get('num_steps'),
            'model.pseudo_sampling.num_steps')

        # E^(0): a frozen copy of the encoder, synchronised from E when the
        # diffusion stage starts (see `freeze_encoder_copy`). It lives in the
        # state dict so that resume restores the anchor of stage 3.
        self.frozen_encoder = nn.ModuleDict(
            dict(
                backbone=copy.deepcopy(self.backbone),
                neck=copy.deepcopy(self.neck)))
        self.frozen_encoder.requires_grad_(False)
        self.channels_last = bool(channels_last)
        self._apply_layout()
        compile_cfg = compile_kwargs(compile_frozen_encoder,
                                     'compile_frozen_encoder')
        self._frozen_runner = None
        if fold_frozen_bn or compile_cfg is not None:
            self._frozen_runner = FrozenEncoderRunner(
                fold_frozen_bn, compile_cfg)
        self._graphed_step = (GraphedTrainStep()
                              if cuda_graph_step else None)

        self.stage = REPRESENTATION
        self.finetune_mode = None
        self.use_pseudo_latents = True
        # The denoised estimates of the last stage-2 step, for the EMA.
        self._geometry_batch = None

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
        self._apply_layout()

    def _apply_layout(self) -> None:
        """Channels-last 4-D weights of E and E^(0) (``channels_last``).

        Later ``.to(device)`` calls and checkpoint loads keep the layout
        (both preserve the destination's memory format).
        """
        if self.channels_last:
            for module in (self.backbone, self.neck, self.frozen_encoder):
                module.to(memory_format=torch.channels_last)

    def _layout(self, inputs: torch.Tensor) -> torch.Tensor:
        """An image batch in the encoder's layout."""
        if self.channels_last and inputs.dim() == 4:
            return inputs.contiguous(memory_format=torch.channels_last)
        return inputs

    def extract_feat(self, inputs: torch.Tensor, stage: str = 'neck'):
        """As upstream, with the batch in the encoder's layout."""
        return super().extract_feat(self._layout(inputs), stage=stage)

    # ------------------------------------------------------------------
    # stages and parts
    # ------------------------------------------------------------------
    @staticmethod
    def trainable_parts(stage: str, mode: Optional[str] = None) -> tuple:
        """The optimiser-wrapper names a stage trains (see ``stages``)."""
        return trainable_parts(stage, mode)

    def set_stage(self,
                  stage: str,
                  mode: Optional[str] = None,
                  pseudo_latents: bool = True) -> None:
        """Switch the stage: what ``loss`` computes and what is trainable.

        Args:
            stage (str): One of ``'representation'``, ``'diffusion'``,
                ``'finetune'``.
            mode (str, optional): ``'stable'`` or ``'hybrid'`` for the
                finetune stage. Defaults to None.
            pseudo_latents (bool): Whether the finetune stage draws
                pseudo-latents; False leaves its real-data terms only
                (cRT, or a same-budget control). Defaults to True.
        """
        parts = trainable_parts(stage, mode)
        self.stage = stage
        self.finetune_mode = mode if stage == FINETUNE else None
        self.use_pseudo_latents = bool(pseudo_latents)
        for part, modules in self.part_modules().items():
            for module in modules.values():
                module.requires_grad_(part in parts)
        self.frozen_encoder.requires_grad_(False)
        # Re-apply train/eval so frozen parts keep their BN statistics.
        self.train(self.training)
        if self._graphed_step is not None:
            # Other parts, other optimiser state: capture afresh.
            self._graphed_step.reset()

    def part_modules(self) -> Dict[str, Dict[str, nn.Module]]:
        """The modules behind each optimiser-wrapper name (part).

        Returns:
            dict: ``{part: {child name: module}}``, e.g. ``{'encoder':
            {'backbone': ..., 'neck': ...}, ...}``, without DDP wrappers.
        """
        return {
            part: {
                child: get_ori_model(getattr(self, child))
                for child in children
            }
            for part, children in PART_CHILDREN.items()
        }

    def train(self, mode: bool = True):
        super().train(mode)
        # Frozen parts run in eval mode: no BN statistic drift, no dropout.
        self.frozen_encoder.eval()
        if mode and self.stage in (DIFFUSION, FINETUNE):
            parts = trainable_parts(self.stage, self.finetune_mode)
            for part, modules in self.part_modules().items():
                if part not in parts:
                    for module in modules.values():
                        module.eval()
        return self

    @torch.no_grad()
    def freeze_encoder_copy(self, broadcast_from_rank0: bool = False) -> None:
        """Copy the current encoder E into the frozen anchor E^(0).

        Args:
            broadcast_from_rank0 (bool): First broadcast E (parameters and
                BN buffers) from rank 0, so E^(0) is identical on every
                rank: DDP keeps parameters in sync, but each rank's BN
                running statistics differ. Every rank must call it then.
                Defaults to False.
        """
        _, world_size = get_dist_info()
        for name in ('backbone', 'neck'):
            src = get_ori_model(getattr(self, name)).state_dict()
            if broadcast_from_rank0 and world_size > 1:
                for tensor in src.values():
                    broadcast(tensor, src=0)
            self.frozen_encoder[name].load_state_dict(src)

    @torch.no_grad()
    def reinit_head(self, seed: int) -> None:
        """Re-initialise G by its ``init_cfg``, from a seeded generator.

        cRT (Kang et al., ICLR 2020) re-trains a freshly initialised
        classifier. The global random state is left as it was, and every
        rank draws the same weights from the same ``seed``.

        Args:
            seed (int): The seed of the new weights.
        """
        head = get_ori_model(self.head)
        devices = sorted({
            p.device.index or 0
            for p in head.parameters() if p.device.type == 'cuda'
        })
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed % (2**63))
            for module in head.modules():
                if hasattr(module, '_is_init'):
                    module._is_init = False
            # BaseModule initialises once; clearing the flag makes it
            # apply init_cfg again.
            head.init_weights()
        if self._graphed_step is not None:
            self._graphed_step.reset()

    # ------------------------------------------------------------------
    # latents, statistics and generation
    # ------------------------------------------------------------------
    def _encode(self, inputs: torch.Tensor, trainable: bool) -> torch.Tensor:
        """E(x) as a (B, D) tensor; frozen parts bypass their DDP wrapper."""
        inputs = self._layout(inputs)
        if trainable:
            feats = self.neck(self.backbone(inputs))
        else:
            with torch.no_grad():
                feats = get_ori_model(self.neck)(
                    get_ori_model(self.backbone)(inputs))
        return feats[-1] if isinstance(feats, (tuple, list)) else feats

    @torch.no_grad()
    def encode_frozen(self,
                      inputs: torch.Tensor,
                      fast: bool = True) -> torch.Tensor:
        """E^(0)(x), the frozen anchor's latent, as a (B, D) tensor.

        Args:
            inputs (torch.Tensor): The image batch.
            fast (bool): Folded and/or compiled as configured
                (``fold_frozen_bn``, ``compile_frozen_encoder``). False runs
                E^(0)'s modules as they are: for one-off calls (a shape
                check) that should not pay for a fold or a compilation.
                Defaults to True.

        Returns:
            torch.Tensor: The latents, (B, D).
        """
        inputs = self._layout(inputs)
        if fast and self._frozen_runner is not None:
            return self._frozen_runner.forward(self.frozen_encoder['backbone'],
                                               self.frozen_encoder['neck'],
                                               inputs)
        feats = self.frozen_encoder['neck'](
            self.frozen_encoder['backbone'](inputs))
        return feats[-1] if isinstance(feats, (tuple, list)) else feats

    @torch.no_grad()
    def fit_latent_statistics(
            self,
            latents: torch.Tensor,
            labels: torch.Tensor,
            class_counts: Optional[Union[np.ndarray,
                                         Sequence[int]]] = None) -> None:
        """Fit the latent normaliser and the class geometry on ``D_z``.

        Both from the same full set of real latents (the gathered cache,
        the same on every rank), so no rank needs another's data.

        Args:
            latents (torch.Tensor): Every training latent E^(0)(x), (N, D).
            labels (torch.Tensor): Their classes, (N,).
            class_counts (array-like, optional): The data set's training
                counts, checked against the latents per class.
        """
        get_ori_model(self.diffusion_head).normalizer.fit(latents)
        self.geometry.init_from_latents(
            latents, labels, class_counts=class_counts)

    @property
    def geometry_ready(self) -> bool:
        """Whether the class statistics have been fitted (or loaded)."""
        return self.geometry.is_initialized

    @torch.no_grad()
    def generate_latents(self, labels: torch.Tensor,
                         **sampling) -> torch.Tensor:
        """Sample encoder-space latents z^0 ~ p_theta(z0 | y) with DDIM.

        The one way every caller (stage 3, reports, tools) generates: the
        diffusion head applies its own bound of the estimate
        (``feature_clamp_max``).

        Args:
            labels (torch.Tensor): Class of each latent, (B,).
            **sampling: Overrides of the sampler (``num_steps``, ``eta``,
                ``guidance_scale``, ``generator``, ``z_T``, ``cuda_graph``,
                ``compile_denoiser``).

        Returns:
            torch.Tensor: Latents, (B, D).
        """
        return get_ori_model(self.diffusion_head).sample(labels, **sampling)

    def classify_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """G's logits for latents, (B, K)."""
        return get_ori_model(self.head)((latents, ))

    def take_geometry_batch(self):
        """The denoised estimates of the last stage-2 step, once.

        Returns:
            GeometryBatch | None: What the geometry losses of the last
            diffusion step saw (detached), or None when no diffusion step
            ran since the last call.
        """
        batch, self._geometry_batch = self._geometry_batch, None
        return batch

    def predict(self,
                inputs: torch.Tensor,
                data_samples: Optional[List[DataSample]] = None,
                **kwargs) -> List[DataSample]:
        """Predict with E and G; works in every stage, as upstream."""
        feats = self.extract_feat(inputs)
        return get_ori_model(self.head).predict(feats, data_samples,
                                                **kwargs)

    # ------------------------------------------------------------------
    # losses
    # ------------------------------------------------------------------
    def loss(self, inputs: torch.Tensor,
             data_samples: List[DataSample]) -> dict:
        """Losses of the current stage from a batch of images."""
        if self.stage == REPRESENTATION:
            # `self.head(...)` goes through the head's DDP wrapper (if any),
            # which only intercepts `forward`; the loss is the head's own.
            # Exactly upstream's work: stage 1 must cost what CE costs.
            logits = self.head(self.extract_feat(inputs))
            return get_ori_model(self.head)._get_loss(logits, data_samples)
        labels = torch.cat([ds.gt_label for ds in data_samples]).to(
            inputs.device)
        if self.stage == DIFFUSION:
            # On-the-fly extraction (the seed's way): the frozen anchor
            # gives the latents of this augmented batch.
            return self._diffusion_loss(self.encode_frozen(inputs), labels)
        if self.finetune_mode == STABLE:
            return self.finetune_loss(
                self._encode(inputs, trainable=False), labels)
        feats = self._encode(inputs, trainable=True)
        losses = self.finetune_loss(feats, labels)
        losses['loss_cons'] = self.consistency_loss(
            feats, self.encode_frozen(inputs))
        return losses

    def loss_latents(self,
                     latents: torch.Tensor,
                     labels: torch.Tensor,
                     pseudo: Optional[tuple] = None) -> dict:
        """Losses of the current stage from cached latents E^(0)(x).

        ``pseudo`` (stable finetune): the step's pseudo-latents and labels,
        drawn by the caller (see :meth:`finetune_loss`).
        """
        if self.stage == DIFFUSION:
            return self._diffusion_loss(latents, labels)
        if self.stage == FINETUNE and self.finetune_mode == STABLE:
            return self.finetune_loss(latents, labels, pseudo)
        raise RuntimeError(
            f'Cached latents cannot train stage {self.stage!r} '
            f'(mode {self.finetune_mode!r}): only the diffusion stage and '
            'the stable finetune stage run on cached latents.')

    def _diffusion_loss(self, latents: torch.Tensor,
                        labels: torch.Tensor) -> dict:
        # Through the head's DDP wrapper (if any), so its gradients are
        # reduced; `mode='loss'` runs LatentDiffusionHead.loss.
        losses, self._geometry_batch = self.diffusion_head(
            latents, labels, mode='loss', geometry=self.geometry)
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

    def sample_pseudo_latents(self,
                              num: int,
                              device: torch.device,
                              generator: Optional[torch.Generator] = None):
        """Draw ``num`` labels and their DDIM pseudo-latents z^0 ~ p(z|y).

        With a filled bank (:meth:`prepare_pseudo_bank`) the next ``num``
        of the bank are handed out instead; past its end, fresh ones are
        drawn.

        Args:
            num (int): How many.
            device (torch.device): Where.
            generator (torch.Generator, optional): For the labels and the
                sampler's noise. Defaults to None (the global generators).

        Returns:
            tuple[Tensor, Tensor]: Latents ``(num, D)`` (no gradient) and
            labels ``(num,)``.
        """
        if self._bank is not None and generator is None:
            latents, labels, cursor = self._bank
            if cursor + num <= labels.numel():
                self._bank = (latents, labels, cursor + num)
                return (latents[cursor:cursor + num].to(device),
                        labels[cursor:cursor + num].to(device))
            self._bank = None  # used up: sample per step from here on
        weights = self.pseudo_label_weights().to(device)
        labels = torch.multinomial(
            weights, num, replacement=True, generator=generator)
        sampling = dict(self.pseudo_sampling)
        if generator is not None:
            sampling['generator'] = generator
        latents = self.generate_latents(labels, **sampling)
        return latents.detach(), labels

    @torch.no_grad()
    def prepare_pseudo_bank(
        self,
        num_steps: int,
        batch_size: int,
        seed: int,
        optim_wrapper: Optional[Union[OptimWrapper,
                                      OptimWrapperDict]] = None
    ) -> int:
        """Draw the pseudo-latents of ``num_steps`` stage-3 steps at once.

        Does nothing (returns 0) unless ``pseudo_bank`` is on. Labels for
        all of them first, then the latents in chunks of
        ``pseudo_bank_chunk``, all from one generator seeded with ``seed``:
        deterministic DDIM treats every latent on its own, so the chunking
        does not change the latents of given labels and starting noise.
        With ``optim_wrapper`` they are drawn under the autocast of the
        stage's first wrapper, as :meth:`train_step` draws per-step
        pseudo-latents (bf16 under AMP; without it the bank is float32,
        several times slower on a GPU).

        Args:
            num_steps (int): Steps of the coming epoch.
            batch_size (int): Real latents per step (the pseudo batch
                defaults to it).
            seed (int): The loop derives it from (seed, epoch, rank).
            optim_wrapper (OptimWrapper | OptimWrapperDict, optional): The
                run's optimiser wrapper(s). Defaults to None (no autocast).

        Returns:
            int: The number of pseudo-latents drawn.
        """
        if not self.pseudo_bank:
            return 0
        if optim_wrapper is not None:
            wrapper = self._stage_wrappers(optim_wrapper)[0]
            with wrapper.optim_context(self):
                return self.prepare_pseudo_bank(num_steps, batch_size, seed)
        num = num_steps * (self.pseudo_batch_size or batch_size)
        device = self.geometry.prototypes.device
        generator = torch.Generator(device=device).manual_seed(seed)
        weights = self.pseudo_label_weights().to(device)
        labels = torch.multinomial(
            weights, num, replacement=True, generator=generator)
        sampling = dict(self.pseudo_sampling, generator=generator)
        latents = torch.cat([
            self.generate_latents(labels[i:i + self.pseudo_bank_chunk],
                                  **sampling)
            for i in range(0, num, self.pseudo_bank_chunk)
        ])
        self._bank = (latents, labels, 0)
        return num

    def finetune_loss(self,
                      latents: torch.Tensor,
                      labels: torch.Tensor,
                      pseudo: Optional[tuple] = None) -> dict:
        """Stage 3: CE on real latents + gamma CE on fresh pseudo-latents.

        Real and pseudo latents go through G in ONE forward (one DDP call),
        the pseudo half detached so that it trains G only. Without
        pseudo-latents (``set_stage(..., pseudo_latents=False)``) only the
        real term is computed. ``pseudo`` gives the pseudo-latents and
        labels of this step (the CUDA-graph step draws them outside the
        graph); by default they are drawn here
        (:meth:`sample_pseudo_latents`).
        """
        num_real = latents.size(0)
        head = get_ori_model(self.head)
        if not self.use_pseudo_latents:
            logits = self.head((latents, ))
            return dict(loss_cls=head.loss_module(
                logits, labels, avg_factor=num_real))
        if pseudo is None:
            pseudo = self.sample_pseudo_latents(
                self.pseudo_batch_size or num_real, latents.device)
        pseudo, pseudo_labels = pseudo
        feats = torch.cat([latents, pseudo.to(latents.dtype)])
        logits = self.head((feats, ))
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
        produced by the training loop.
        """
        wrappers = self._stage_wrappers(optim_wrapper)
        latent_batch = isinstance(data, dict) and 'latents' in data
        pseudo = None
        if latent_batch and self._graphed_step is not None:
            inputs = self._latent_step_inputs(data, wrappers)
            outputs = self._graphed_step(
                functools.partial(self._latent_step, wrappers=wrappers),
                inputs, wrappers)
            if outputs is not None:
                log_vars, self._geometry_batch = outputs
                return log_vars
            if 'pseudo' in inputs:  # drawn already: the eager step uses them
                pseudo = (inputs['pseudo'], inputs['pseudo_labels'])
        with wrappers[0].optim_context(self):
            if latent_batch:
                losses = self.loss_latents(data['latents'], data['labels'],
                                           pseudo)
            else:
                data = self.data_preprocessor(data, True)
                losses = self._run_forward(data, mode='loss')
        parsed, log_vars = self.parse_losses(losses)
        self._update_params(parsed, wrappers)
        return log_vars

    def _stage_wrappers(
        self, optim_wrapper: Union[OptimWrapper, OptimWrapperDict]
    ) -> List[OptimWrapper]:
        """The wrappers of the parts this stage trains, in their order."""
        if not isinstance(optim_wrapper, OptimWrapperDict):
            return [optim_wrapper]
        parts = trainable_parts(self.stage, self.finetune_mode)
        missing = [p for p in parts if p not in optim_wrapper]
        if missing:
            raise KeyError(
                f'Stage {self.stage!r} trains {parts} but optim_wrapper '
                f'has no {missing}; add them to the optim_wrapper config '
                '(see GALDDCOptimWrapperConstructor).')
        return [optim_wrapper[p] for p in parts]

    def _latent_step_inputs(
            self, data: dict,
            wrappers: Sequence[OptimWrapper]) -> Dict[str, torch.Tensor]:
        """The tensors of a cached-latent step (:meth:`_latent_step`).

        In stable finetuning these include the step's pseudo-latents, drawn
        (from the bank, or sampled) under the wrapper's autocast as the
        eager step draws them.
        """
        inputs = dict(latents=data['latents'], labels=data['labels'])
        if self.stage == FINETUNE and self.use_pseudo_latents:
            latents = inputs['latents']
            with wrappers[0].optim_context(self):
                inputs['pseudo'], inputs['pseudo_labels'] = \
                    self.sample_pseudo_latents(
                        self.pseudo_batch_size or latents.size(0),
                        latents.device)
        return inputs

    def _latent_step(self, inputs: Dict[str, torch.Tensor],
                     wrappers: Sequence[OptimWrapper]) -> tuple:
        """A whole cached-latent step from tensors, as a graph captures it.

        The same arithmetic as the eager step with one wrapper per part and
        no accumulation: gradients cleared, the losses under the wrapper's
        autocast (without the weight-cast cache, which a graph cannot
        keep), one backward, each optimiser's ``step``, gradients cleared
        (as ``update_params`` leaves them for the next eager step).

        Returns:
            tuple: ``(log_vars, geometry batch or None)``.
        """
        for wrapper in wrappers:
            wrapper.optimizer.zero_grad(set_to_none=True)
        dtype = getattr(wrappers[0], 'cast_dtype', None)
        pseudo = None
        if 'pseudo' in inputs:
            pseudo = (inputs['pseudo'], inputs['pseudo_labels'])
        with torch.autocast(
                'cuda',
                dtype=dtype or torch.float16,
                enabled=dtype is not None,
                cache_enabled=False):
            losses = self.loss_latents(inputs['latents'], inputs['labels'],
                                       pseudo)
        parsed, log_vars = self.parse_losses(losses)
        parsed.backward()
        for wrapper in wrappers:
            wrapper.optimizer.step()
        for wrapper in wrappers:
            wrapper.optimizer.zero_grad(set_to_none=True)
        return log_vars, self._geometry_batch

    @staticmethod
    def _update_params(loss: torch.Tensor,
                       wrappers: Sequence[OptimWrapper]) -> None:
        """``update_params`` of one loss over one or several wrappers.

        Several wrappers (stage 1 and hybrid stage 3 step E and G together)
        share one backward: the loss is scaled for gradient accumulation
        and, under AMP, by the first wrapper's loss scaler; every wrapper
        counts the backward, and when the accumulation is complete each
        optimiser steps with that same scaler, whose scale is then updated
        once, so each optimiser unscales by the factor its gradients were
        scaled with. The optimiser constructor makes parts that step
        together share ``accumulative_counts``.
        """
        if len(wrappers) == 1:
            wrappers[0].update_params(loss)
            return
        first = wrappers[0]
        first.backward(first.scale_loss(loss))
        for wrapper in wrappers[1:]:
            # They took part in the backward above: mmengine counts
            # backward calls in ``_inner_count`` (``OptimWrapper.backward``
            # does ``+= 1``) to decide when accumulation is complete.
            wrapper._inner_count += 1
        if not first.should_update():
            return
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
