# Copyright (c) galddc_mm contributors. All rights reserved.
from typing import Dict, Optional

from mmengine.hooks import Hook
from mmpretrain.registry import HOOKS

from galddc_mm.utils.final_metrics import (
    collect_split_metrics,
    log_final_metrics,
)


@HOOKS.register_module()
class FinalMetricsHook(Hook):
    """Log the final metrics of a run as one table and write them to JSON.

    mmengine logs every evaluation, but the many/medium/few numbers of a
    run are then buried among timings. At the end of a run this hook logs
    one table (top-1, many/medium/few, ...) and writes the same numbers to
    ``<work_dir>/<timestamp>/final_metrics.json`` (see
    :func:`~galddc_mm.utils.final_metrics.log_final_metrics`):

    - **Training** (``runner.train()``): the last evaluation of each split
      (``val``, and ``test`` when the loop ran one), read from the message
      hub, with ``epoch``, ``iter`` and, when a best checkpoint was kept,
      ``best_ckpt`` and ``best_score``.
    - **Testing** (``runner.test()`` alone): the test metrics, with the
      ``checkpoint`` that was loaded.

    A run of ``runner.val()`` alone writes nothing.

    The moment is ``after_run``: GALD-DC's loop (``test_after_train``)
    runs the test loop after the ``after_train`` hooks, and ``after_run``
    comes after it. Selected in ``default_hooks`` of
    ``configs/_base_/default_runtime.py`` (child configs replace
    ``custom_hooks`` lists), so MMPretrain's own tools write the file too.

    Args:
        filename (str): The JSON file, in ``runner.log_dir``. Defaults to
            ``'final_metrics.json'``.
    """

    # Before the LoggerHook (BELOW_NORMAL), whose after_run may copy the
    # log file elsewhere: the table is then in the copy.
    priority = 'NORMAL'

    def __init__(self, filename: str = 'final_metrics.json'):
        self.filename = filename
        self._trained = False
        self._test_metrics: Optional[Dict] = None

    def before_run(self, runner) -> None:
        self._trained = False
        self._test_metrics = None

    def before_train(self, runner) -> None:
        self._trained = True

    def after_test_epoch(self, runner, metrics: Optional[Dict] = None) -> None:
        self._test_metrics = metrics or {}

    def after_run(self, runner) -> None:
        if self._trained:
            self._log_training_summary(runner)
        elif self._test_metrics is not None:
            log_final_metrics(
                runner,
                dict(test=self._test_metrics),
                title='Test metrics (%)',
                filename=self.filename,
                # What ``load_from`` (the tools' checkpoint argument) named;
                # mmengine has no public accessor for it.
                checkpoint=runner._load_from)

    def _log_training_summary(self, runner) -> None:
        """Log the last val/test metrics of the run as one table."""
        hub = runner.message_hub
        metrics = {
            split: collect_split_metrics(hub, split)
            for split in ('val', 'test')
        }
        metrics = {split: m for split, m in metrics.items() if m}
        extra = dict(epoch=runner.epoch, iter=runner.iter)
        best_ckpt = hub.get_info('best_ckpt')
        if best_ckpt is not None:
            extra.update(
                best_ckpt=best_ckpt,
                best_score=float(hub.get_info('best_score')))
        log_final_metrics(
            runner,
            metrics,
            title=f'Final metrics (%) after epoch {runner.epoch} '
            f'(last evaluation of each split)',
            filename=self.filename,
            **extra)
        if best_ckpt is not None:
            runner.logger.info(
                f'Best checkpoint (selected on val): {best_ckpt}, score '
                f'{extra["best_score"]:.2f}')
