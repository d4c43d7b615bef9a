# Copyright (c) galddc_mm contributors. All rights reserved.
import math
from typing import Dict, Optional

from mmengine.hooks import Hook, RuntimeInfoHook
from mmpretrain.registry import HOOKS
from mmpretrain.utils import get_ori_model


class NonFiniteLossError(FloatingPointError):
    """A training loss became NaN or infinite."""


@HOOKS.register_module()
class NumericalGuardHook(Hook):
    """Stop training at the first NaN/Inf loss, before it is checkpointed.

    After every training iteration the loss values of the iteration's
    outputs (the keys containing ``'loss'``, the ones mmengine sums into
    the total ``loss``) are checked with :func:`math.isfinite`. On the
    first non-finite value the hook raises :class:`NonFiniteLossError`
    naming the losses, the stage (from :class:`GALDDCTrainLoop`), the
    epoch and iteration, and the last checkpoint written, which is the
    last good one: the hook runs before the ``CheckpointHook`` of the same
    iteration and epoch, so the poisoned parameters are never saved and
    ``last_checkpoint`` keeps pointing to a healthy state.

    No extra device synchronisation: the values are read from the message
    hub, where mmengine's ``RuntimeInfoHook`` (priority ``VERY_HIGH``, so
    before this hook) has just stored them as Python floats for logging.
    Without that hook the outputs are converted here.

    Under distributed training each rank checks its own values (the
    losses are not all-reduced); the rank that raises exits, which ends
    the others (``torchrun`` stops the group, or their next collective
    fails or times out, see ``env_cfg.dist_cfg.timeout``).

    Args:
        key_contains (str): Only output keys containing this string are
            checked. Defaults to ``'loss'``.
    """

    # Above the LoggerHook and the CheckpointHook, below RuntimeInfoHook.
    priority = 'HIGH'

    def __init__(self, key_contains: str = 'loss'):
        self.key_contains = key_contains
        self._hub_has_values = True

    def before_train(self, runner) -> None:
        self._hub_has_values = any(
            isinstance(hook, RuntimeInfoHook) for hook in runner.hooks)

    def _values(self, runner, outputs: dict) -> Dict[str, float]:
        values = {}
        for key, value in outputs.items():
            if self.key_contains not in key:
                continue
            if self._hub_has_values:
                value = runner.message_hub.get_scalar(
                    f'train/{key}').current()
            values[key] = float(value)
        return values

    def after_train_iter(self,
                         runner,
                         batch_idx: int,
                         data_batch=None,
                         outputs: Optional[dict] = None) -> None:
        if not outputs:
            return
        values = self._values(runner, outputs)
        bad = {k: v for k, v in values.items() if not math.isfinite(v)}
        if bad:
            raise NonFiniteLossError(self._message(runner, batch_idx, bad))

    @staticmethod
    def _message(runner, batch_idx: int, bad: Dict[str, float]) -> str:
        loop = runner.train_loop
        stage = getattr(loop, 'current_stage', None)
        where = f'stage {stage.name!r}' if stage is not None else 'training'
        if getattr(stage, 'mode', None):
            where += f' (mode {stage.mode!r})'
        try:
            num_iters = f'/{len(loop.dataloader)}'
        except TypeError:
            num_iters = ''
        losses = ', '.join(f'{k}={v}' for k, v in bad.items())
        last = runner.message_hub.get_info('last_ckpt')
        saved = (f'The last checkpoint written, {last}, predates the fault '
                 'and is intact; resume from it with --resume after the '
                 'fix.' if last else 'No checkpoint had been written yet.')
        hint = ''
        model = get_ori_model(runner.model)
        if stage is not None and hasattr(model, 'trainable_parts'):
            parts = model.trainable_parts(stage.name, stage.mode)
            hint = (' This stage trains ' + ', '.join(parts) + ': lower '
                    'their lr (optim_wrapper.<part>.optimizer.lr) or clip '
                    'their gradients (optim_wrapper.<part>.clip_grad='
                    'dict(max_norm=...))')
            if stage.name == 'diffusion':
                hint += (', and bound the denoised estimates with '
                         'model.diffusion_head.feature_clamp_max')
            hint += '.'
        return (f'Non-finite loss in {where}, epoch {runner.epoch + 1}, '
                f'iteration {batch_idx + 1}{num_iters} (global iteration '
                f'{runner.iter + 1}): {losses}. Training stops before this '
                f'epoch is checkpointed. {saved}{hint}')
