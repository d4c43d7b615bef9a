# Copyright (c) galddc_mm contributors. All rights reserved.
from typing import Dict, Optional

import torch.nn as nn
from mmengine.optim import DefaultOptimWrapperConstructor, OptimWrapperDict
from mmpretrain.registry import OPTIM_WRAPPER_CONSTRUCTORS
from mmpretrain.utils import get_ori_model

from galddc_mm.models.classifiers.stages import (
    FINETUNE,
    FINETUNE_MODES,
    PARTS,
    STAGES,
    trainable_parts,
)

# Top-level keys that are defaults for every part's wrapper (``--amp`` of
# tools/train.py sets ``type='AmpOptimWrapper'`` and ``loss_scale`` there).
SHARED_KEYS = ('type', 'loss_scale', 'dtype', 'accumulative_counts',
               'clip_grad')


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class GALDDCOptimWrapperConstructor:
    """One optimiser wrapper per part of :class:`GALDDCClassifier`.

    The parts are ``encoder`` (backbone + neck), ``head`` (the cls head G)
    and ``diffusion`` (the latent diffusion head theta). Each part is built
    by mmengine's :class:`DefaultOptimWrapperConstructor`, so each accepts
    its own ``optimizer``, ``paramwise_cfg``, ``clip_grad`` and wrapper
    ``type``; per-part lr schedules go in
    ``param_scheduler = dict(encoder=[...], head=[...], diffusion=[...])``.

    Example::

        optim_wrapper = dict(
            constructor='GALDDCOptimWrapperConstructor',
            encoder=dict(optimizer=dict(type='SGD', lr=0.1, momentum=0.9)),
            head=dict(optimizer=dict(type='SGD', lr=0.1, momentum=0.9)),
            diffusion=dict(optimizer=dict(type='AdamW', lr=1e-3)))

    Keys at the top level (``type``, ``loss_scale``, ``dtype``,
    ``clip_grad``, ``accumulative_counts``) are defaults for every part, so
    ``--amp`` (``type='AmpOptimWrapper'``) switches all parts to AMP. Parts
    that one stage steps together (E and G in stages 1 and hybrid 3) share
    one backward pass, so they must share ``accumulative_counts``.

    Args:
        optim_wrapper_cfg (dict): The config described above.
        paramwise_cfg (dict, optional): Must be None; give each part its own
            ``paramwise_cfg``.
    """

    def __init__(self,
                 optim_wrapper_cfg: dict,
                 paramwise_cfg: Optional[dict] = None):
        if paramwise_cfg:
            raise ValueError(
                'GALDDCOptimWrapperConstructor takes `paramwise_cfg` per '
                'part, e.g. optim_wrapper.encoder.paramwise_cfg=...; remove '
                'the top-level one.')
        cfg = dict(optim_wrapper_cfg)
        shared = {k: cfg.pop(k) for k in SHARED_KEYS if k in cfg}
        unknown = [k for k in cfg if k not in PARTS]
        if unknown:
            raise KeyError(
                f'Unknown optim_wrapper part(s) {unknown}; the parts are '
                f'{list(PARTS)} (top-level shared keys: '
                f'{list(SHARED_KEYS)}).')
        if not cfg:
            raise ValueError(
                'optim_wrapper defines no part; give at least one of '
                f'{list(PARTS)}, each with an `optimizer`.')
        self.part_cfgs: Dict[str, dict] = {}
        for part, part_cfg in cfg.items():
            if part_cfg is None:
                # Dropped (``--cfg-options optim_wrapper.<part>=None``):
                # GALDDCCheckHook names the stage that needs it.
                continue
            part_cfg = dict(part_cfg)
            if 'optimizer' not in part_cfg:
                raise KeyError(
                    f'optim_wrapper.{part} has no `optimizer`; e.g. '
                    f"optim_wrapper.{part}.optimizer=dict(type='SGD', "
                    'lr=0.1).')
            for key, value in shared.items():
                part_cfg.setdefault(key, value)
            self.part_cfgs[part] = part_cfg
        self._check_accumulation()

    def _check_accumulation(self) -> None:
        for stage in STAGES:
            for mode in (FINETUNE_MODES if stage == FINETUNE else (None, )):
                parts = [
                    p for p in trainable_parts(stage, mode)
                    if p in self.part_cfgs
                ]
                counts = {
                    p: self.part_cfgs[p].get('accumulative_counts', 1)
                    for p in parts
                }
                if len(set(counts.values())) > 1:
                    raise ValueError(
                        f'Stage {stage!r}{f" ({mode})" if mode else ""} '
                        f'steps {parts} together after one backward pass, '
                        'so they must accumulate gradients over the same '
                        f'number of iterations; got accumulative_counts '
                        f'{counts}. Set optim_wrapper.accumulative_counts '
                        'once at the top level.')

    def __call__(self, model: nn.Module) -> OptimWrapperDict:
        model = get_ori_model(model)
        if not hasattr(model, 'part_modules'):
            raise TypeError(
                'GALDDCOptimWrapperConstructor needs a model that names its '
                'parts (part_modules(), e.g. GALDDCClassifier); got '
                f'{type(model).__name__}.')
        part_modules = model.part_modules()
        wrappers = {}
        for part, part_cfg in self.part_cfgs.items():
            # Named as in the model, so paramwise_cfg keys keep matching.
            container = nn.ModuleDict(part_modules[part])
            part_cfg = dict(part_cfg)
            paramwise_cfg = part_cfg.pop('paramwise_cfg', None)
            wrappers[part] = DefaultOptimWrapperConstructor(
                part_cfg, paramwise_cfg)(container)
        return OptimWrapperDict(**wrappers)
