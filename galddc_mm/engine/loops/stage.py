# Copyright (c) galddc_mm contributors. All rights reserved.
"""The stages of a GALD-DC run as data: parsed and checked in one place.

``train_cfg.stages`` is a list of dicts; :func:`parse_stages` turns it into
:class:`Stage` records laid out on the epoch axis (or raises a clear error
naming the key), and :func:`resolve_stage_schedulers` turns stage-relative
parameter schedulers into global epochs. Both are pure functions of the
config, so the loop only runs what they return.
"""
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from galddc_mm.models.classifiers.stages import (
    DIFFUSION,
    FINETUNE,
    FINETUNE_MODES,
    HYBRID,
    PARTS,
    REPRESENTATION,
    STABLE,
    STAGES,
)

_COMMON_KEYS = {'name', 'epochs', 'val_interval', 'lr_mult'}
_CACHE_KEYS = {'cache_latents', 'batch_size', 'repeat', 'sampler'}
#: The keys each stage accepts.
STAGE_KEYS = {
    REPRESENTATION: _COMMON_KEYS,
    DIFFUSION: _COMMON_KEYS | _CACHE_KEYS,
    FINETUNE: _COMMON_KEYS | _CACHE_KEYS | {'mode', 'pseudo_latents',
                                            'reinit_head'},
}
#: How a cached stage draws its latents: ``'random'``: a shuffled pass over
#: the cache; ``'class_balanced'``: a class uniformly, then a latent of it
#: uniformly (class-aware sampling, as cRT trains).
LATENT_SAMPLERS = ('random', 'class_balanced')


@dataclass(frozen=True)
class Stage:
    """One stage of the recipe, the epochs ``[begin, end)``.

    Attributes:
        name (str): One of ``STAGES``.
        epochs (int): Its length.
        begin (int): Its first epoch (0-based, global).
        mode (str, optional): ``'stable'``/``'hybrid'`` for ``finetune``.
        cache_latents (bool): Trains on the latent cache instead of images.
        batch_size (int, optional): Per-rank batch of cached latents.
        repeat (int): Passes over the latent cache per epoch.
        val_interval (int, optional): Validation interval in the stage.
        lr_mult (dict): ``{part: mult}`` applied on the stage's first epoch.
        sampler (str): One of ``LATENT_SAMPLERS`` (cached stages).
        pseudo_latents (bool): ``finetune`` draws pseudo-latents (False:
            real data only, as cRT or the fine-tuning of a control).
        reinit_head (bool): ``finetune`` re-initialises G on its first
            epoch (cRT, Kang et al. 2020).
    """
    name: str
    epochs: int
    begin: int
    mode: Optional[str] = None
    cache_latents: bool = False
    batch_size: Optional[int] = None
    repeat: int = 1
    val_interval: Optional[int] = None
    lr_mult: Dict[str, float] = field(default_factory=dict)
    sampler: str = 'random'
    pseudo_latents: bool = True
    reinit_head: bool = False

    @property
    def end(self) -> int:
        """One past its last epoch."""
        return self.begin + self.epochs

    def __repr__(self):
        mode = f', mode={self.mode}' if self.mode else ''
        cache = ', cached latents' if self.cache_latents else ''
        if self.sampler != 'random':
            cache += f' ({self.sampler})'
        extra = '' if self.pseudo_latents else ', no pseudo-latents'
        extra += ', head re-initialised' if self.reinit_head else ''
        return (f'{self.name}{mode}{cache}{extra} '
                f'(epochs {self.begin + 1}-{self.end})')


def _stage_from_cfg(cfg: dict, index: int, begin: int) -> Stage:
    """Check one stage config (``train_cfg.stages[index]``) and build it."""
    where = f'train_cfg.stages[{index}]'
    name = cfg.get('name')
    extra = set(cfg) - STAGE_KEYS[name]
    if extra:
        raise KeyError(f'{where} ({name!r}) has unknown keys '
                       f'{sorted(extra)}; allowed: '
                       f'{sorted(STAGE_KEYS[name])}.')
    epochs = cfg.get('epochs')
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(
            f'{where}.epochs must be an integer >= 0, got {epochs!r}.')
    mode = None
    if name == FINETUNE:
        mode = cfg.get('mode', HYBRID)
        if mode not in FINETUNE_MODES:
            raise ValueError(
                f'{where}.mode={mode!r} is unknown; finetune modes are '
                f"{' and '.join(repr(m) for m in FINETUNE_MODES)}.")
    cache_latents = bool(cfg.get('cache_latents', name == DIFFUSION))
    if cache_latents and name == FINETUNE and mode != STABLE:
        raise ValueError(f"{where}: cache_latents=True needs mode='stable' "
                         '(hybrid trains the encoder on images).')
    repeat = cfg.get('repeat', 1)
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
        raise ValueError(
            f'{where}.repeat must be a positive integer, got {repeat!r}.')
    if cfg.get('repeat') is not None and not cache_latents:
        raise ValueError(f'{where}.repeat only applies to stages with '
                         'cache_latents=True.')
    batch_size = cfg.get('batch_size')
    if batch_size is not None and (not isinstance(batch_size, int)
                                   or batch_size < 1):
        raise ValueError(f'{where}.batch_size must be a positive integer, '
                         f'got {batch_size!r}.')
    sampler = cfg.get('sampler', 'random')
    if sampler not in LATENT_SAMPLERS:
        raise ValueError(f'{where}.sampler={sampler!r} is unknown; latent '
                         f'samplers are {LATENT_SAMPLERS}.')
    if cfg.get('sampler') is not None and not cache_latents:
        raise ValueError(f'{where}.sampler only applies to stages with '
                         'cache_latents=True (it draws cached latents).')
    flags = {}
    for key, default in (('pseudo_latents', True), ('reinit_head', False)):
        flags[key] = cfg.get(key, default)
        if not isinstance(flags[key], bool):
            raise ValueError(f'{where}.{key} must be True or False, got '
                             f'{flags[key]!r}.')
    lr_mult = dict(cfg.get('lr_mult') or {})
    for part, mult in lr_mult.items():
        if part not in PARTS or mult < 0:
            raise ValueError(f'{where}.lr_mult has {part}={mult}; parts are '
                             f'{"/".join(PARTS)}, multipliers >= 0.')
    return Stage(
        name=name,
        epochs=epochs,
        begin=begin,
        mode=mode,
        cache_latents=cache_latents,
        batch_size=batch_size,
        repeat=repeat,
        val_interval=cfg.get('val_interval'),
        lr_mult=lr_mult,
        sampler=sampler,
        **flags)


def parse_stages(stages: Sequence[dict]) -> List[Stage]:
    """Check ``train_cfg.stages`` and lay the stages out on the epoch axis.

    Stages run in the order of ``STAGES``, each at most once; a stage with
    0 epochs is skipped (it takes no epoch and is not returned). A
    ``finetune`` stage with pseudo-latents needs a ``diffusion`` stage
    before it.

    Args:
        stages (Sequence[dict]): ``train_cfg.stages``.

    Returns:
        list[Stage]: The stages with at least one epoch, in order.
    """
    if not stages:
        raise ValueError('train_cfg.stages is empty; give at least the '
                         "diffusion stage, e.g. [dict(name='diffusion', "
                         'epochs=10)].')
    parsed, begin, last = [], 0, -1
    for i, cfg in enumerate(stages):
        name = cfg.get('name')
        if name not in STAGES:
            raise ValueError(f'train_cfg.stages[{i}].name={name!r} is '
                             f'unknown; stage names are {STAGES}.')
        order = STAGES.index(name)
        if order <= last:
            raise ValueError(
                f'train_cfg.stages[{i}] ({name!r}) is out of order or '
                f'repeated; stages run in the order {STAGES}, each at most '
                'once.')
        last = order
        stage = _stage_from_cfg(cfg, i, begin)
        begin = stage.end
        if stage.epochs > 0:
            parsed.append(stage)
    if not parsed:
        raise ValueError('Every stage in train_cfg.stages has 0 epochs.')
    names = [s.name for s in parsed]
    if (FINETUNE in names and DIFFUSION not in names
            and parsed[-1].pseudo_latents):
        raise ValueError(
            'A finetune stage with pseudo-latents needs a diffusion stage '
            'before it (the diffusion head must be trained to sample '
            'them); give the diffusion stage epochs, or set '
            'pseudo_latents=False on the finetune stage (real data only).')
    return parsed


def resolve_stage_schedulers(schedulers, stage_names: Sequence[str],
                             stages: Sequence[Stage]):
    """Turn stage-relative parameter schedulers into global epochs.

    A scheduler config with ``stage='<name>'`` counts ``begin``, ``end``
    and ``milestones`` from that stage's first epoch (``end`` defaults to
    the stage's length), so recipes stay right when a stage is shortened
    or skipped (``epochs=0``: its schedulers are dropped). Configs without
    ``stage`` are left as they are (global epochs, as usual in mmengine).

    Args:
        schedulers (dict | list | None): ``param_scheduler`` of the config:
            one scheduler, a list, or ``{part: list}``.
        stage_names (Sequence[str]): Every stage named in
            ``train_cfg.stages``, skipped ones included.
        stages (Sequence[Stage]): The parsed stages (with epochs).

    Returns:
        list | dict | None: The schedulers as a list (or ``{part: list}``),
        with new dicts where resolved.
    """
    by_name = {s.name: s for s in stages}

    def resolve(cfg):
        if not isinstance(cfg, dict) or 'stage' not in cfg:
            return cfg
        cfg = dict(cfg)
        name = cfg.pop('stage')
        if name not in stage_names:
            raise ValueError(f'param_scheduler entry {cfg} names stage '
                             f'{name!r}, which train_cfg.stages does not '
                             'have.')
        stage = by_name.get(name)
        if stage is None:  # a skipped stage: nothing to schedule
            return None
        cfg['by_epoch'] = True
        cfg['begin'] = stage.begin + cfg.get('begin', 0)
        cfg['end'] = stage.begin + cfg.get('end', stage.epochs)
        if 'milestones' in cfg:
            cfg['milestones'] = [stage.begin + m for m in cfg['milestones']]
        return cfg

    def resolve_group(group):
        group = group if isinstance(group, (list, tuple)) else [group]
        return [cfg for cfg in map(resolve, group) if cfg is not None]

    if schedulers is None:
        return None
    if isinstance(schedulers, dict) and 'type' not in schedulers:
        return {part: resolve_group(g) for part, g in schedulers.items()}
    return resolve_group(schedulers)
