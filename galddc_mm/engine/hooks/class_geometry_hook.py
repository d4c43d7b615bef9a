# Copyright (c) galddc_mm contributors. All rights reserved.
from typing import Optional

from mmengine.hooks import Hook
from mmpretrain.registry import HOOKS
from mmpretrain.utils import get_ori_model

from galddc_mm.models.classifiers.stages import DIFFUSION


def _format_summary(summary: dict) -> str:
    return ', '.join(
        f'{k}={v:.4g}' if isinstance(v, float) else f'{k}={v}'
        for k, v in summary.items())


@HOOKS.register_module()
class ClassGeometryHook(Hook):
    """Own the class statistics of GALD-DC over a run.

    - **Fit** (``before_train_epoch`` of the first diffusion epoch): when
      the model's geometry is not yet fitted (not loaded from a
      checkpoint), the normaliser, prototypes, radii and ``r_prior`` are
      fitted on the whole latent cache the loop has just built
      (:meth:`GALDDCClassifier.fit_latent_statistics`), and the geometry is
      logged.
    - **EMA** (``after_train_iter`` in the diffusion stage): the prototypes
      and observed radii move towards the denoised estimates the step fed
      to the geometry losses (:meth:`GALDDCClassifier.take_geometry_batch`;
      the sums are all-reduced, so every rank applies the same update).
      The train step computes losses only.
    - **Log** (``after_train_epoch`` in the diffusion stage): the geometry
      summary (head/tail radii, ``r_prior``, calibrated tail radius).

    The state lives in the model's persistent buffers, so checkpoints and
    ``--resume`` carry it; the hook itself keeps none.

    Args:
        update_ema (bool): Apply the EMA in stage 2. False keeps the
            statistics of the real latents (an ablation). Defaults to True.
    """

    priority = 'ABOVE_NORMAL'

    def __init__(self, update_ema: bool = True):
        self.update_ema = update_ema

    @staticmethod
    def _stage(runner) -> Optional[str]:
        stage = getattr(runner.train_loop, 'current_stage', None)
        return None if stage is None else stage.name

    def before_train_epoch(self, runner) -> None:
        model = get_ori_model(runner.model)
        if self._stage(runner) != DIFFUSION or model.geometry_ready:
            return
        cache = runner.train_loop.latent_cache
        dataset = runner.train_loop.image_dataloader.dataset
        counts = (dataset.get_class_counts()
                  if hasattr(dataset, 'get_class_counts') else None)
        if counts is not None and cache.latents.size(0) != int(counts.sum()):
            raise ValueError(
                f'The latent cache holds {cache.latents.size(0)} latents but '
                f'the training set has {int(counts.sum())} samples. Samples '
                'were lost during extraction (e.g. images skipped by '
                "CheckedLoadImageFromFile(on_error='skip'), named in the "
                'warnings) or train_cfg.extract_dataloader reads another '
                'data set. Remove unreadable images from the list file: the '
                'class geometry needs every training latent.')
        model.fit_latent_statistics(
            cache.latents, cache.labels, class_counts=counts)
        runner.logger.info('Class geometry initialised from real latents: ' +
                           _format_summary(model.geometry.summary()))

    def after_train_iter(self,
                         runner,
                         batch_idx: int,
                         data_batch=None,
                         outputs=None) -> None:
        model = get_ori_model(runner.model)
        batch = model.take_geometry_batch()
        if batch is not None and self.update_ema:
            model.geometry.ema_update(batch.latents, batch.labels)

    def after_train_epoch(self, runner) -> None:
        if self._stage(runner) == DIFFUSION:
            model = get_ori_model(runner.model)
            runner.logger.info(
                f'Class geometry after epoch {runner.epoch + 1}: ' +
                _format_summary(model.geometry.summary()))
