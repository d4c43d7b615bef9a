# Copyright (c) galddc_mm contributors. All rights reserved.
import copy
import math
import random
import time
from typing import Dict, Iterator, List, Optional, Sequence, Union

import numpy as np
import torch
from mmengine.dist import all_gather, broadcast, get_dist_info, is_main_process
from mmengine.model import is_model_wrapper
from mmengine.runner import EpochBasedTrainLoop
from mmengine.utils import ProgressBar
from mmpretrain.registry import LOOPS
from torch.utils.data import DataLoader

STAGE_ORDER = ('representation', 'diffusion', 'finetune')
STAGE_KEYS = {
    'representation': {'name', 'epochs', 'val_interval', 'lr_mult'},
    'diffusion': {
        'name', 'epochs', 'val_interval', 'lr_mult', 'cache_latents',
        'batch_size', 'repeat'
    },
    'finetune': {
        'name', 'epochs', 'val_interval', 'lr_mult', 'mode', 'cache_latents',
        'batch_size', 'repeat'
    },
}


def _ori(model):
    return model.module if is_model_wrapper(model) else model


class Stage:
    """One stage of the recipe, an interval ``[begin, end)`` of epochs."""

    def __init__(self, cfg: dict, begin: int):
        self.cfg = dict(cfg)
        self.name = cfg['name']
        self.epochs = int(cfg['epochs'])
        self.begin = begin
        self.end = begin + self.epochs
        self.mode = cfg.get('mode', 'hybrid' if self.name == 'finetune'
                            else None)
        self.cache_latents = bool(
            cfg.get('cache_latents', self.name == 'diffusion'))
        self.batch_size = cfg.get('batch_size')
        self.repeat = int(cfg.get('repeat', 1))
        self.val_interval = cfg.get('val_interval')
        self.lr_mult = dict(cfg.get('lr_mult') or {})

    def __repr__(self):
        mode = f', mode={self.mode}' if self.mode else ''
        cache = ', cached latents' if self.cache_latents else ''
        return (f'{self.name}{mode}{cache} '
                f'(epochs {self.begin + 1}-{self.end})')


class LatentLoader:
    """Shuffled batches of the latent cache, one shard per rank.

    It stands in for the image dataloader during cached stages (so the
    logger's ``[iter/len]`` and end-of-epoch checks see the right length).
    Every rank draws the same permutation of the cache from
    ``seed + epoch`` and takes every ``world_size``-th entry, padded like
    ``DefaultSampler`` so all ranks run the same number of steps.
    """

    def __init__(self, cache: Dict[str, torch.Tensor], batch_size: int,
                 repeat: int, seed: int, epoch: int, dataset=None):
        self.latents, self.labels = cache['latents'], cache['labels']
        # The image data set the latents come from (its metainfo is what
        # checkpoints and visualisers read from ``runner.train_dataloader``).
        self.dataset = dataset
        self.batch_size = batch_size
        self.repeat = repeat
        self.seed = seed
        self.epoch = epoch
        self.rank, self.world_size = get_dist_info()
        self.per_rank = math.ceil(self.latents.size(0) / self.world_size)

    def __len__(self) -> int:
        return self.repeat * math.ceil(self.per_rank / self.batch_size)

    def __iter__(self) -> Iterator[dict]:
        n = self.latents.size(0)
        gen = torch.Generator()
        gen.manual_seed(self.seed + self.epoch)
        for _ in range(self.repeat):
            perm = torch.randperm(n, generator=gen)
            pad = self.per_rank * self.world_size - n
            perm = torch.cat([perm, perm[:pad]])
            perm = perm[self.rank::self.world_size].to(self.latents.device)
            for i in range(0, perm.numel(), self.batch_size):
                sel = perm[i:i + self.batch_size]
                yield dict(latents=self.latents[sel], labels=self.labels[sel])


@LOOPS.register_module()
class GALDDCTrainLoop(EpochBasedTrainLoop):
    """Epoch-based loop running the GALD-DC stages given as data.

    The stage of an epoch is derived from the epoch counter alone, so
    ``--resume`` lands in the right stage with nothing extra stored; what a
    stage needs beyond the checkpoint (the latent cache) is rebuilt when the
    stage is entered. Stage 1 is skipped by giving it 0 epochs (or leaving
    it out) and loading a CE checkpoint with ``load_from``.

    Stage config keys:

    - ``name``: ``'representation'`` | ``'diffusion'`` | ``'finetune'``, in
      this order, each at most once.
    - ``epochs``: the stage's length.
    - ``mode`` (finetune): ``'hybrid'`` (default) or ``'stable'``.
    - ``cache_latents``: train on latents extracted once by the frozen
      encoder E^(0) (test pipeline) instead of images. Default True for
      ``diffusion``, False for ``finetune`` (allowed for ``stable`` only).
    - ``batch_size``: the per-GPU batch size of cached latents (default:
      the image dataloader's).
    - ``repeat``: passes over the latent cache per epoch (cached stages),
      so that a cheap latent epoch is not dominated by per-epoch work
      (validation, checkpointing). Default 1.
    - ``val_interval``: validation interval within the stage (the stage's
      last epoch always validates). Default: the loop's ``val_interval``;
      for ``diffusion`` only its last epoch, since E and G do not change.
    - ``lr_mult``: ``dict(part=mult)``; on the stage's first epoch the lr of
      each part it trains is reset to ``mult`` x the part's base lr, so
      schedules starting at the stage boundary start from there. Default 1.

    Args:
        runner (Runner): The runner.
        dataloader (DataLoader | dict): The image training dataloader.
        stages (list[dict]): The stages, see above.
        max_epochs (int, optional): If given, must equal the sum of the
            stage epochs. Defaults to None.
        val_begin (int): The epoch from which validation runs. Defaults to 1.
        val_interval (int): Default validation interval. Defaults to 1.
        extract_dataloader (dict, optional): Dataloader config used to
            extract the latent cache. Defaults to None: the training set
            with the val dataloader's pipeline, not shuffled.
        reseed_every_epoch (bool): Re-seed the random generators from
            ``(seed, epoch, rank)`` at each epoch start so that a run resumed
            at an epoch boundary continues exactly like an uninterrupted one.
            Defaults to True.
        test_after_train (bool): Run the test loop once on the final model
            (for reporting; checkpoints are selected on val). Defaults to
            False.
    """

    def __init__(self,
                 runner,
                 dataloader: Union[DataLoader, Dict],
                 stages: Sequence[dict],
                 max_epochs: Optional[int] = None,
                 val_begin: int = 1,
                 val_interval: int = 1,
                 extract_dataloader: Optional[dict] = None,
                 reseed_every_epoch: bool = True,
                 test_after_train: bool = False) -> None:
        self.stages = self.parse_stages(stages)
        total = self.stages[-1].end
        if max_epochs is not None and int(max_epochs) != total:
            raise ValueError(
                f'train_cfg.max_epochs={max_epochs} but the stages add up to '
                f'{total} epochs ({self._describe()}); drop max_epochs or '
                'make them agree.')
        super().__init__(
            runner, dataloader, max_epochs=total, val_begin=val_begin,
            val_interval=val_interval)
        self.image_dataloader = self.dataloader
        self.extract_dataloader_cfg = extract_dataloader
        self.reseed_every_epoch = reseed_every_epoch
        self.test_after_train = test_after_train
        self._active: Optional[Stage] = None
        self._cache: Optional[Dict[str, torch.Tensor]] = None
        self._check_model_and_optim()
        self._resolve_stage_schedulers()
        self._check_model_and_data()
        self._max_iters = sum(
            self._iters_of(stage) * stage.epochs for stage in self.stages)

    # ------------------------------------------------------------------
    # stage bookkeeping
    # ------------------------------------------------------------------
    @staticmethod
    def parse_stages(stages: Sequence[dict]) -> List[Stage]:
        """Validate the stage configs and lay them out on the epoch axis."""
        if not stages:
            raise ValueError('train_cfg.stages is empty; give at least the '
                             "diffusion stage, e.g. [dict(name='diffusion', "
                             'epochs=10)].')
        parsed, begin, last = [], 0, -1
        for i, cfg in enumerate(stages):
            name = cfg.get('name')
            if name not in STAGE_ORDER:
                raise ValueError(
                    f'train_cfg.stages[{i}].name={name!r} is unknown; stage '
                    f'names are {STAGE_ORDER}.')
            order = STAGE_ORDER.index(name)
            if order <= last:
                raise ValueError(
                    f'train_cfg.stages[{i}] ({name!r}) is out of order or '
                    f'repeated; stages run in the order {STAGE_ORDER}, each '
                    'at most once.')
            last = order
            extra = set(cfg) - STAGE_KEYS[name]
            if extra:
                raise KeyError(
                    f'train_cfg.stages[{i}] ({name!r}) has unknown keys '
                    f'{sorted(extra)}; allowed: {sorted(STAGE_KEYS[name])}.')
            epochs = cfg.get('epochs')
            if not isinstance(epochs, int) or epochs < 0:
                raise ValueError(
                    f'train_cfg.stages[{i}].epochs must be an integer >= 0, '
                    f'got {epochs!r}.')
            if name == 'finetune':
                mode = cfg.get('mode', 'hybrid')
                if mode not in ('stable', 'hybrid'):
                    raise ValueError(
                        f'train_cfg.stages[{i}].mode={mode!r} is unknown; '
                        "finetune modes are 'stable' and 'hybrid'.")
                if cfg.get('cache_latents') and mode != 'stable':
                    raise ValueError(
                        f'train_cfg.stages[{i}]: cache_latents=True needs '
                        "mode='stable' (hybrid trains the encoder on "
                        'images).')
            repeat = cfg.get('repeat', 1)
            if not isinstance(repeat, int) or repeat < 1:
                raise ValueError(
                    f'train_cfg.stages[{i}].repeat must be a positive '
                    f'integer, got {repeat!r}.')
            if cfg.get('repeat') is not None and not cfg.get(
                    'cache_latents', name == 'diffusion'):
                raise ValueError(
                    f'train_cfg.stages[{i}].repeat only applies to stages '
                    'with cache_latents=True.')
            batch_size = cfg.get('batch_size')
            if batch_size is not None and (not isinstance(batch_size, int)
                                           or batch_size < 1):
                raise ValueError(
                    f'train_cfg.stages[{i}].batch_size must be a positive '
                    f'integer, got {batch_size!r}.')
            for part, mult in (cfg.get('lr_mult') or {}).items():
                if part not in ('encoder', 'head', 'diffusion') or mult < 0:
                    raise ValueError(
                        f'train_cfg.stages[{i}].lr_mult has {part}={mult}; '
                        'parts are encoder/head/diffusion, multipliers >= 0.')
            stage = Stage(cfg, begin)
            begin = stage.end
            if stage.epochs > 0:
                parsed.append(stage)
        if not parsed:
            raise ValueError('Every stage in train_cfg.stages has 0 epochs.')
        if parsed[-1].name == 'representation':
            pass  # plain CE training with this loop is allowed
        if any(s.name == 'finetune' for s in parsed) and not any(
                s.name == 'diffusion' for s in parsed):
            raise ValueError(
                'A finetune stage needs a diffusion stage before it (the '
                'diffusion head must be trained to sample pseudo-latents).')
        return parsed

    def _describe(self) -> str:
        return ', '.join(repr(s) for s in self.stages)

    def stage_at(self, epoch: int) -> Stage:
        """The stage that runs epoch ``epoch`` (0-based)."""
        for stage in self.stages:
            if stage.begin <= epoch < stage.end:
                return stage
        return self.stages[-1]

    @property
    def current_stage(self) -> Stage:
        return self.stage_at(self._epoch)

    def _iters_of(self, stage: Stage) -> int:
        if not stage.cache_latents:
            return len(self.image_dataloader)
        _, world_size = get_dist_info()
        per_rank = math.ceil(
            len(self.image_dataloader.dataset) / world_size)
        return stage.repeat * math.ceil(
            per_rank / self._latent_batch_size(stage))

    def _latent_batch_size(self, stage: Stage) -> int:
        return stage.batch_size or self.image_dataloader.batch_size

    def _resolve_stage_schedulers(self) -> None:
        """Turn stage-relative parameter schedulers into global epochs.

        A scheduler config with ``stage='<name>'`` counts ``begin``, ``end``
        and ``milestones`` from that stage's first epoch (``end`` defaults
        to the stage's length), so recipes stay right when a stage is
        shortened or skipped (``epochs=0``: its schedulers are dropped).
        Runs before the runner builds the schedulers.
        """
        schedulers = self.runner.param_schedulers
        if schedulers is None:
            return
        groups = (schedulers.values()
                  if isinstance(schedulers, dict) and 'type' not in schedulers
                  else [schedulers])
        all_stages = {s['name']: s for s in self.runner.cfg.train_cfg.stages}
        for group in groups:
            cfgs = group if isinstance(group, list) else [group]
            for cfg in list(cfgs):
                if not isinstance(cfg, dict) or 'stage' not in cfg:
                    continue
                name = cfg.pop('stage')
                if name not in all_stages:
                    raise ValueError(
                        f'param_scheduler entry {cfg} names stage {name!r}, '
                        f'which train_cfg.stages does not have.')
                stage = next((s for s in self.stages if s.name == name),
                             None)
                if stage is None:  # a skipped stage: nothing to schedule
                    cfgs.remove(cfg)
                    continue
                cfg['by_epoch'] = True
                cfg['begin'] = stage.begin + cfg.get('begin', 0)
                cfg['end'] = stage.begin + cfg.get('end', stage.epochs)
                if 'milestones' in cfg:
                    cfg['milestones'] = [
                        stage.begin + m for m in cfg['milestones']
                    ]

    def _check_model_and_optim(self) -> None:
        model = _ori(self.runner.model)
        if not hasattr(model, 'set_stage'):
            raise TypeError(
                'GALDDCTrainLoop drives a GALDDCClassifier (a model with '
                f'set_stage); got {type(model).__name__}.')
        optim_cfg = self.runner.cfg.get('optim_wrapper') or {}
        if optim_cfg.get('constructor') == 'GALDDCOptimWrapperConstructor':
            for stage in self.stages:
                for part in model.trainable_parts(stage.name, stage.mode):
                    # ``--cfg-options optim_wrapper.<part>=None`` drops it.
                    if optim_cfg.get(part) is None:
                        raise KeyError(
                            f'Stage {stage!r} trains the {part!r} part but '
                            f'optim_wrapper has no {part!r} entry; add '
                            f'optim_wrapper.{part}=dict(optimizer=...).')

    def _check_model_and_data(self) -> None:
        """Refuse configurations that would fail later, before any epoch.

        Run when the loop is built (``runner.train()``, before weights are
        initialised or a checkpoint is loaded), so a bad configuration
        costs seconds, not a stage of training:

        - ``model.head.num_classes`` (which the diffusion head and the
          geometry inherit) must equal the number of classes of the
          training set (``metainfo['classes']`` and the class counts);
        - with a diffusion stage, ``model.geometry.tau`` must leave at
          least one head class (``n_y >= tau``), else ``r_prior`` is
          undefined (the same error :class:`ClassGeometry` raises at stage
          2 entry). No tail class is allowed (a balanced set), as is a
          class without training images; both are logged as warnings;
        - the DDIM steps of the sampler (and of ``model.pseudo_sampling``
          and any hook's ``sampling``) must not exceed the schedule's
          training timesteps T;
        - the encoder (backbone + neck) must pool one training sample to a
          ``(1, D)`` latent with ``D = model.head.in_channels``: one
          forward of the frozen copy E^(0) in eval mode, under a saved and
          restored random state, so the run is unchanged.
        """
        model = _ori(self.runner.model)
        dataset = self.image_dataloader.dataset
        num_classes = getattr(model, 'num_classes', None)
        counts = None
        if hasattr(dataset, 'get_class_counts'):
            counts = np.asarray(dataset.get_class_counts())
        if num_classes is not None:
            classes = (getattr(dataset, 'metainfo', None) or {}).get('classes')
            for what, n in (("metainfo['classes']",
                             None if classes is None else len(classes)),
                            ('get_class_counts()',
                             None if counts is None else len(counts))):
                if n is not None and n != num_classes:
                    raise ValueError(
                        f'model.head.num_classes={num_classes} disagrees '
                        f'with the training set {type(dataset).__name__}, '
                        f'which has {n} classes (dataset.{what}). Set '
                        f'model.head.num_classes={n} (the diffusion head '
                        'and the geometry inherit it) and the data '
                        'preprocessor\'s num_classes, or fix the data set.')
        if any(stage.name == 'diffusion' for stage in self.stages):
            if counts is not None and hasattr(model, 'geometry'):
                self._check_tau(model.geometry.tau, counts)
            self._check_sampling_steps(model)
        self._check_latent_dim(model, dataset)

    def _check_tau(self, tau, counts: np.ndarray) -> None:
        logger = self.runner.logger
        valid = counts > 0
        if not valid.any():
            raise ValueError('The training set has no sample in any class.')
        lo, hi = int(counts[valid].min()), int(counts.max())
        if not (counts >= tau).any():
            raise ValueError(
                f'model.geometry.tau={tau} is above every class count of '
                f'the training set (counts range over [{lo}, {hi}]): no '
                'head class, so r_prior (the mean radius of head classes) '
                f'is undefined. Use model.geometry.tau <= {hi}.')
        if not (valid & (counts < tau)).any():
            logger.warning(
                f'model.geometry.tau={tau} is at or below every non-empty '
                f'class count (smallest {lo}): no tail class, so '
                'calibration is a no-op (r_cal = r_obs). Use tau > '
                f'{lo} to calibrate the smallest classes.')
        if not valid.all():
            empty = np.flatnonzero(~valid).tolist()
            logger.warning(
                f'{len(empty)} class(es) have no training sample: '
                f'{empty[:20]}{" ..." if len(empty) > 20 else ""}. The '
                'geometry marks them invalid (no prototype, excluded from '
                'r_prior, margins and pseudo-latent labels); they can '
                'still be predicted only by chance.')

    def _check_sampling_steps(self, model) -> None:
        head = _ori(getattr(model, 'diffusion_head', None))
        num_timesteps = getattr(
            getattr(head, 'schedule', None), 'num_timesteps', None)
        if num_timesteps is None:
            return
        where = [('model.diffusion_head.sampler.num_steps',
                  getattr(getattr(head, 'sampler', None), 'num_steps',
                          None)),
                 ('model.pseudo_sampling.num_steps',
                  (getattr(model, 'pseudo_sampling', None)
                   or {}).get('num_steps'))]
        for hook in self.runner.hooks:
            sampling = getattr(hook, 'sampling', None)
            if isinstance(sampling, dict):
                where.append((f'{type(hook).__name__}.sampling.num_steps',
                              sampling.get('num_steps')))
        for key, steps in where:
            if steps is not None and steps > num_timesteps:
                raise ValueError(
                    f'{key}={steps} exceeds the T={num_timesteps} training '
                    'timesteps of the noise schedule (model.diffusion_head.'
                    'schedule.num_timesteps); DDIM needs 1 <= num_steps <= '
                    'T.')

    @torch.no_grad()
    def _check_latent_dim(self, model, dataset) -> None:
        if not (hasattr(model, 'encode_frozen')
                and hasattr(model, 'latent_dim') and len(dataset) > 0):
            return
        # The train pipeline draws random numbers: restore them so that
        # the check leaves the run exactly as it would be without it.
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            try:
                batch = self.image_dataloader.collate_fn([dataset[0]])
                was_training = model.training
                model.eval()  # no BN statistics update
                try:
                    inputs = model.data_preprocessor(batch, False)['inputs']
                    feats = model.encode_frozen(inputs)
                finally:
                    model.train(was_training)
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)
        if feats.dim() != 2 or feats.size(1) != model.latent_dim:
            raise ValueError(
                'The encoder (model.backbone + model.neck) turns a training '
                f'sample into a latent of shape {tuple(feats.shape)}, but '
                f'the model expects (1, {model.latent_dim}): '
                f'model.head.in_channels={model.latent_dim} is the latent '
                'dimension of the cls head, the diffusion head and the '
                'geometry. Set model.head.in_channels to the encoder\'s '
                'output channels (or use a neck that pools to (B, D)).')

    # ------------------------------------------------------------------
    # running
    # ------------------------------------------------------------------
    def run(self) -> torch.nn.Module:
        """Launch training: every stage, validation, optional final test."""
        self.runner.logger.info(f'GALD-DC stages: {self._describe()}')
        self.runner.call_hook('before_train')
        while self._epoch < self._max_epochs and not self.stop_training:
            stage = self.current_stage
            self.run_epoch()
            if self.runner.val_loop is not None and self._should_validate(
                    stage):
                self.runner.val_loop.run()
        self.runner.call_hook('after_train')
        if self.test_after_train and self.runner._test_loop is not None:
            # Reporting only: the final model's test accuracy. Checkpoints
            # are still selected on val by the CheckpointHook.
            self.runner.test_loop.run()
        return self.runner.model

    def _should_validate(self, stage: Stage) -> bool:
        if self._epoch < self.val_begin:
            return False
        if self._epoch == stage.end:
            return True
        interval = stage.val_interval
        if interval is None:
            interval = (stage.epochs
                        if stage.name == 'diffusion' else self.val_interval)
        return (self._epoch - stage.begin) % interval == 0

    def run_epoch(self) -> None:
        """Enter the epoch's stage if needed, then iterate its data."""
        stage = self.current_stage
        if self._active is not stage:
            self._enter_stage(stage)
        if self.reseed_every_epoch:
            self._reseed()
        if stage.cache_latents:
            base = self.runner.seed if self.runner.seed is not None else 0
            self.dataloader = LatentLoader(
                self._cache, self._latent_batch_size(stage), stage.repeat,
                base, self._epoch, dataset=self.image_dataloader.dataset)
        else:
            self.dataloader = self.image_dataloader
        self.runner.call_hook('before_train_epoch')
        self.runner.model.train()
        for idx, data_batch in enumerate(self.dataloader):
            self.run_iter(idx, data_batch)
        self.runner.call_hook('after_train_epoch')
        self._epoch += 1

    def _reseed(self) -> None:
        rank, _ = get_dist_info()
        base = self.runner.seed if self.runner.seed is not None else 0
        seed = (base + 1000003 * self._epoch + 7919 * rank) % (2**31)
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    def _enter_stage(self, stage: Stage) -> None:
        model = _ori(self.runner.model)
        logger = self.runner.logger
        logger.info(f'Entering stage {stage!r}')
        if stage.name in ('diffusion', 'finetune') and not bool(
                model.geometry.initialized):
            if stage.name == 'finetune':
                raise RuntimeError(
                    'The finetune stage starts without class geometry; the '
                    'diffusion stage must run (or be resumed) first.')
            # First entry of stage 2: E becomes E^(0), identical on ranks.
            self._sync_encoder(model)
            model.freeze_encoder_copy()
        model.set_stage(stage.name, stage.mode)
        needs_cache = stage.cache_latents or (
            stage.name == 'diffusion' and not bool(model.geometry.initialized))
        if needs_cache:
            self._cache = self.extract_latents()
            if not bool(model.geometry.initialized):
                self._init_geometry(model, self._cache)
        if not stage.cache_latents:
            self._cache = None  # free the memory when no longer needed
        if self._epoch == stage.begin:
            self._reset_lr(model, stage)
        self._active = stage

    @torch.no_grad()
    def _sync_encoder(self, model) -> None:
        """Broadcast E (params and BN buffers) from rank 0 to every rank.

        DDP keeps parameters in sync but each rank's BN running statistics
        differ; E^(0) and the latent cache must be the same everywhere.
        """
        _, world_size = get_dist_info()
        if world_size == 1:
            return
        for name in ('backbone', 'neck'):
            for tensor in _ori(getattr(model, name)).state_dict().values():
                broadcast(tensor, src=0)

    def _init_geometry(self, model, cache: Dict[str, torch.Tensor]) -> None:
        latents, labels = cache['latents'], cache['labels']
        _ori(model.diffusion_head).normalizer.fit(latents)
        dataset = self.image_dataloader.dataset
        counts = None
        if hasattr(dataset, 'get_class_counts'):
            counts = torch.as_tensor(
                np.asarray(dataset.get_class_counts()), dtype=torch.long)
            if latents.size(0) != int(counts.sum()):
                raise ValueError(
                    f'The latent cache holds {latents.size(0)} latents but '
                    f'the training set has {int(counts.sum())} samples. '
                    'Samples were lost during extraction (e.g. images '
                    "skipped by CheckedLoadImageFromFile(on_error='skip'), "
                    'named in the warnings) or train_cfg.extract_dataloader '
                    'reads another data set. Remove unreadable images from '
                    'the list file: the class geometry needs every '
                    'training latent.')
        # Each rank hands its own share of D_z; the geometry all-reduces the
        # sums and counts, so the result equals one process on all of it.
        rank, world_size = get_dist_info()
        own = torch.arange(latents.size(0), device=latents.device)
        own = own[own % world_size == rank]
        model.geometry.init_from_latents(
            latents[own], labels[own], class_counts=counts)
        summary = model.geometry.summary()
        self.runner.logger.info(
            'Class geometry initialised from real latents: ' + ', '.join(
                f'{k}={v:.4g}' if isinstance(v, float) else f'{k}={v}'
                for k, v in summary.items()))

    def _reset_lr(self, model, stage: Stage) -> None:
        optim_wrapper = self.runner.optim_wrapper
        if not hasattr(optim_wrapper, 'items'):
            return
        for part in model.trainable_parts(stage.name, stage.mode):
            if part not in optim_wrapper:
                continue
            mult = stage.lr_mult.get(part, 1.0)
            for group in optim_wrapper[part].param_groups:
                base = group.get('initial_lr', group['lr'])
                group['lr'] = base * mult

    # ------------------------------------------------------------------
    # latent cache
    # ------------------------------------------------------------------
    def _build_extract_dataloader(self) -> DataLoader:
        cfg = self.extract_dataloader_cfg
        if cfg is None:
            train_cfg = self.runner.cfg.get('train_dataloader')
            val_cfg = self.runner.cfg.get('val_dataloader') or \
                self.runner.cfg.get('test_dataloader')
            if train_cfg is None or val_cfg is None or \
                    'pipeline' not in train_cfg.get('dataset', {}):
                raise ValueError(
                    'Cannot derive the latent-extraction dataloader (needs '
                    'train_dataloader.dataset.pipeline and a val/test '
                    'dataloader pipeline); set train_cfg.extract_dataloader '
                    'explicitly.')
            cfg = copy.deepcopy(dict(train_cfg))
            cfg['dataset'] = dict(cfg['dataset'])
            cfg['dataset']['pipeline'] = copy.deepcopy(
                val_cfg['dataset']['pipeline'])
            cfg['sampler'] = dict(type='DefaultSampler', shuffle=False)
            cfg.pop('batch_sampler', None)
            cfg['persistent_workers'] = False
            # Every sample once: no drop_last from the training loader.
            cfg['drop_last'] = False
        return self.runner.build_dataloader(cfg, seed=self.runner.seed)

    @torch.no_grad()
    def extract_latents(self) -> Dict[str, torch.Tensor]:
        """D_z = {(E^(0)(x_i), y_i)}: each rank its shard, then gathered.

        Returns every sample exactly once, ordered by dataset index, on
        every rank (so ranks hold the same cache as a single process).
        """
        model = _ori(self.runner.model)
        loader = self._build_extract_dataloader()
        was_training = model.training
        model.eval()
        idxs, feats, labels = [], [], []
        show = is_main_process()
        bar = ProgressBar(len(loader)) if show else None
        start, seen = time.perf_counter(), 0
        for batch in loader:
            data = model.data_preprocessor(batch, False)
            inputs, samples = data['inputs'], data['data_samples']
            feats.append(model.encode_frozen(inputs).float())
            labels.append(
                torch.cat([s.gt_label for s in samples]).to(inputs.device))
            idxs.append(
                torch.tensor([s.sample_idx for s in samples],
                             device=inputs.device))
            seen += inputs.size(0)
            if bar is not None:
                bar.update()
        if show:
            print('', flush=True)
        model.train(was_training)
        elapsed = time.perf_counter() - start
        idx, z, y = torch.cat(idxs), torch.cat(feats), torch.cat(labels)
        idx, z, y = self._gather(idx, z, y)
        self.runner.logger.info(
            f'Latent cache: {z.size(0)} latents of dim {z.size(1)} '
            f'extracted in {elapsed:.1f}s '
            f'({seen / max(elapsed, 1e-9):.1f} img/s on this rank)')
        return dict(latents=z, labels=y, indices=idx)

    @staticmethod
    def _gather(idx, z, y):
        _, world_size = get_dist_info()
        if world_size > 1:
            n = torch.tensor([idx.numel()], device=idx.device)
            sizes = [int(s) for s in all_gather(n)]
            pad = max(sizes) - idx.numel()
            if pad:
                idx = torch.cat([idx, idx.new_full((pad, ), -1)])
                z = torch.cat([z, z.new_zeros(pad, z.size(1))])
                y = torch.cat([y, y.new_zeros(pad)])
            idx = torch.cat(all_gather(idx))
            z = torch.cat(all_gather(z))
            y = torch.cat(all_gather(y))
        # The sampler pads shards by repeating samples: keep each index once.
        order = torch.argsort(idx, stable=True)
        idx, z, y = idx[order], z[order], y[order]
        keep = idx >= 0
        keep[1:] &= idx[1:] != idx[:-1]
        return idx[keep], z[keep].contiguous(), y[keep]
