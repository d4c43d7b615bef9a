# Copyright (c) galddc_mm contributors. All rights reserved.
import random
import time
from typing import Dict, Optional, Sequence, Union

import numpy as np
import torch
from mmengine.dist import get_dist_info, is_main_process
from mmengine.runner import EpochBasedTrainLoop
from mmpretrain.registry import LOOPS
from mmpretrain.utils import get_ori_model
from torch.utils.data import DataLoader

from galddc_mm.models.classifiers.stages import DIFFUSION, FINETUNE, STAGES

from .latent_cache import (
    LatentCache,
    LatentLoader,
    build_latent_cache,
    extract_dataloader_cfg,
)
from .stage import Stage, parse_stages, resolve_stage_schedulers


@LOOPS.register_module()
class GALDDCTrainLoop(EpochBasedTrainLoop):
    """Epoch-based loop running the GALD-DC stages given as data.

    The stage of an epoch is derived from the epoch counter alone, so
    ``--resume`` lands in the right stage with nothing extra stored; what a
    stage needs beyond the checkpoint (the latent cache) is rebuilt when the
    stage is entered. Stage 1 is skipped by giving it 0 epochs (or leaving
    it out) and loading a CE checkpoint with ``load_from``. The loop only
    runs stages; the stages are parsed in :mod:`.stage`, the latent cache is
    built in :mod:`.latent_cache`, configs are checked against the data by
    :class:`GALDDCCheckHook` and the class statistics are owned by
    :class:`ClassGeometryHook`.

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
    - ``sampler`` (cached stages): ``'random'`` (default, shuffled passes)
      or ``'class_balanced'`` (a class uniformly, then one of its latents;
      see :class:`LatentLoader`).
    - ``pseudo_latents`` (finetune): draw pseudo-latents (default True).
      False trains on real data only (cRT, or a control); such a stage
      needs no diffusion stage before it.
    - ``reinit_head`` (finetune): re-initialise G on the stage's first
      epoch, from a generator seeded by the run's seed (the same on every
      rank), as cRT does. Default False.

    On its first epoch a stage also starts the optimisers of the parts it
    trains afresh (momentum and Adam moments cleared): what a stage learns
    does not depend on the optimiser history of an earlier stage, so a run
    that skips stage 1 and loads its checkpoint (``load_from`` +
    ``stages[0].epochs=0``) trains stages 2 and 3 as the whole run does.
    For the same reason every random stream of a stage (re-seeding, latent
    batches, pseudo-latent banks, the image sampler's shuffle) is keyed by
    the stage and the epoch within it, not by the global epoch.

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
        self.stages = parse_stages(stages)
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
        #: The whole latent set while a stage needs it (see latent_cache).
        self.latent_cache: Optional[LatentCache] = None
        self._active: Optional[Stage] = None
        # Before the runner builds the schedulers from its config.
        runner.param_schedulers = resolve_stage_schedulers(
            runner.param_schedulers, [cfg.get('name') for cfg in stages],
            self.stages)
        self._max_iters = sum(
            self._iters_of(stage) * stage.epochs for stage in self.stages)

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
        """The stage of the current epoch."""
        return self.stage_at(self._epoch)

    def _epoch_key(self, stage: Optional[Stage] = None) -> int:
        """The key of the current epoch's random streams.

        ``stage index x 100003 + epoch within the stage``: stage 1 keeps
        the global epoch, and later stages draw the same numbers whether or
        not stage 1 ran in this process.
        """
        stage = stage or self.current_stage
        return (STAGES.index(stage.name) * 100003 +
                (self._epoch - stage.begin))

    def _iters_of(self, stage: Stage) -> int:
        if not stage.cache_latents:
            return len(self.image_dataloader)
        return LatentLoader.num_batches(
            len(self.image_dataloader.dataset),
            self._latent_batch_size(stage), stage.repeat, get_dist_info()[1])

    def _latent_batch_size(self, stage: Stage) -> int:
        return stage.batch_size or self.image_dataloader.batch_size

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
                        if stage.name == DIFFUSION else self.val_interval)
        return (self._epoch - stage.begin) % interval == 0

    def run_epoch(self) -> None:
        """Enter the epoch's stage if needed, then iterate its data."""
        stage = self.current_stage
        if self._active is not stage:
            self._enter_stage(stage)
        if self.reseed_every_epoch:
            self._reseed()
        if stage.cache_latents:
            rank, world_size = get_dist_info()
            self.dataloader = LatentLoader(
                self.latent_cache,
                self._latent_batch_size(stage),
                stage.repeat,
                seed=self._base_seed(),
                epoch=self._epoch_key(stage),
                rank=rank,
                world_size=world_size,
                dataset=self.image_dataloader.dataset,
                class_balanced=stage.sampler == 'class_balanced')
        else:
            self.dataloader = self.image_dataloader
        if stage.name == FINETUNE and stage.pseudo_latents:
            self._fill_pseudo_bank(stage)
        # ClassGeometryHook fits the class statistics on the cache here.
        self.runner.call_hook('before_train_epoch')
        if not stage.cache_latents:
            self.latent_cache = None  # free it: this stage trains on images
            # After DistSamplerSeedHook (which sets the global epoch): the
            # image order is keyed like the stage's other random streams.
            sampler = getattr(self.dataloader, 'sampler', None)
            if hasattr(sampler, 'set_epoch'):
                sampler.set_epoch(self._epoch_key(stage))
        self.runner.model.train()
        for idx, data_batch in enumerate(self.dataloader):
            self.run_iter(idx, data_batch)
        self.runner.call_hook('after_train_epoch')
        self._epoch += 1

    def _fill_pseudo_bank(self, stage: Stage) -> None:
        """Draw this epoch's pseudo-latents at once (``model.pseudo_bank``).

        From a generator seeded by (seed, epoch, rank): ranks draw
        different banks, and a run resumed at this epoch draws the same.
        """
        rank, _ = get_dist_info()
        seed = (self._base_seed() + 1000003 * self._epoch_key(stage) +
                7919 * rank + 17) % (2**63)
        batch_size = (self._latent_batch_size(stage) if stage.cache_latents
                      else self.image_dataloader.batch_size)
        start = time.perf_counter()
        # Under the stage's autocast, as the steps would draw them.
        num = get_ori_model(self.runner.model).prepare_pseudo_bank(
            len(self.dataloader), batch_size, seed, self.runner.optim_wrapper)
        if num:
            self.runner.logger.info(
                f'Pseudo-latent bank of epoch {self._epoch + 1}: {num} '
                f'latents drawn in {time.perf_counter() - start:.2f}s')

    def _base_seed(self) -> int:
        return self.runner.seed if self.runner.seed is not None else 0

    def _reseed(self) -> None:
        rank, _ = get_dist_info()
        seed = (self._base_seed() + 1000003 * self._epoch_key() +
                7919 * rank) % (2**31)
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    def _enter_stage(self, stage: Stage) -> None:
        model = get_ori_model(self.runner.model)
        self.runner.logger.info(f'Entering stage {stage!r}')
        first_entry = not model.geometry_ready
        starts = self._epoch == stage.begin
        if stage.name in (DIFFUSION, FINETUNE) and first_entry:
            if stage.name == FINETUNE and stage.pseudo_latents:
                raise RuntimeError(
                    'The finetune stage starts without class geometry; the '
                    'diffusion stage must run (or be resumed) first.')
            if stage.name == DIFFUSION or starts:
                # E becomes E^(0), identical on ranks: on the first entry
                # of stage 2, or when stage 3 runs without it (a resumed
                # stage 3 keeps the E^(0) of its checkpoint).
                model.freeze_encoder_copy(broadcast_from_rank0=True)
        model.set_stage(stage.name, stage.mode,
                        pseudo_latents=stage.pseudo_latents)
        # The class statistics are fitted on the cache the first time
        # stage 2 starts, whether or not it then trains on it.
        needs_cache = stage.cache_latents or (stage.name == DIFFUSION
                                              and first_entry)
        self.latent_cache = self._build_cache(model) if needs_cache else None
        if starts:
            if stage.reinit_head:
                model.reinit_head(self._base_seed() +
                                  1000003 * self._epoch_key(stage))
                self.runner.logger.info('Classifier G re-initialised.')
            self._reset_optimizers(model, stage)
        self._active = stage

    def build_extract_dataloader(self) -> DataLoader:
        """This rank's loader over the training set for the latent cache."""
        cfg = self.extract_dataloader_cfg
        if cfg is None:
            runner_cfg = self.runner.cfg
            cfg = extract_dataloader_cfg(
                runner_cfg.get('train_dataloader'),
                runner_cfg.get('val_dataloader')
                or runner_cfg.get('test_dataloader'))
        return self.runner.build_dataloader(cfg, seed=self.runner.seed)

    def _build_cache(self, model) -> LatentCache:
        return build_latent_cache(
            model, self.build_extract_dataloader(), self.runner.logger,
            show_progress=is_main_process())

    def _reset_optimizers(self, model, stage: Stage) -> None:
        """Start the stage's parts afresh: base lr x lr_mult, no state."""
        optim_wrapper = self.runner.optim_wrapper
        if not hasattr(optim_wrapper, 'items'):
            return
        for part in model.trainable_parts(stage.name, stage.mode):
            if part not in optim_wrapper:
                continue
            mult = stage.lr_mult.get(part, 1.0)
            optimizer = optim_wrapper[part].optimizer
            optimizer.state.clear()
            for group in optimizer.param_groups:
                base = group.get('initial_lr', group['lr'])
                group['lr'] = base * mult
