# Copyright (c) galddc_mm contributors. All rights reserved.
from typing import Dict, Optional

import torch.nn as nn
from mmengine.model import is_model_wrapper
from mmengine.optim import DefaultOptimWrapperConstructor, OptimWrapperDict
from mmpretrain.registry import OPTIM_WRAPPER_CONSTRUCTORS

# The modules (children of GALDDCClassifier) behind each part name.
PART_MODULES = dict(
    encoder=('backbone', 'neck'), head=('head', ),
    diffusion=('diffusion_head', ))
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
    ``--amp`` (``type='AmpOptimWrapper'``) switches all parts to AMP.

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
        unknown = [k for k in cfg if k not in PART_MODULES]
        if unknown:
            raise KeyError(
                f'Unknown optim_wrapper part(s) {unknown}; the parts are '
                f'{list(PART_MODULES)} (top-level shared keys: '
                f'{list(SHARED_KEYS)}).')
        if not cfg:
            raise ValueError(
                'optim_wrapper defines no part; give at least one of '
                f'{list(PART_MODULES)}, each with an `optimizer`.')
        self.part_cfgs: Dict[str, dict] = {}
        for part, part_cfg in cfg.items():
            part_cfg = dict(part_cfg)
            if 'optimizer' not in part_cfg:
                raise KeyError(
                    f'optim_wrapper.{part} has no `optimizer`; e.g. '
                    f"optim_wrapper.{part}.optimizer=dict(type='SGD', "
                    'lr=0.1).')
            for key, value in shared.items():
                part_cfg.setdefault(key, value)
            self.part_cfgs[part] = part_cfg

    def __call__(self, model: nn.Module) -> OptimWrapperDict:
        if is_model_wrapper(model):
            model = model.module
        wrappers = {}
        for part, part_cfg in self.part_cfgs.items():
            modules = {}
            for name in PART_MODULES[part]:
                module = getattr(model, name, None)
                if module is None:
                    raise AttributeError(
                        f'optim_wrapper part {part!r} needs model.{name}, '
                        f'which {type(model).__name__} does not have.')
                modules[name] = (module.module
                                 if is_model_wrapper(module) else module)
            container = nn.ModuleDict(modules)
            part_cfg = dict(part_cfg)
            paramwise_cfg = part_cfg.pop('paramwise_cfg', None)
            wrappers[part] = DefaultOptimWrapperConstructor(
                part_cfg, paramwise_cfg)(container)
        return OptimWrapperDict(**wrappers)
