# Copyright (c) galddc_mm contributors. All rights reserved.
"""A fixed-shape train step replayed as one CUDA graph.

The cached-latent stages (diffusion, stable finetune) train small MLPs on
latents that already sit on the GPU. Their step is a few hundred kernels of
microseconds each; launching them from Python costs more than running them
(docs/benchmarks.md: stage 2 took 13.3 ms of wall time for 3.1 ms of
kernels). Captured once as a CUDA graph, a step is one launch.
"""
import logging
import warnings
from collections import OrderedDict
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
import torch.distributed as torch_dist
from mmengine.logging import print_log
from mmengine.optim import AmpOptimWrapper, OptimWrapper
from torch import Tensor

#: Optimisers whose ``step`` can be captured: SGD as it is, Adam and AdamW
#: with ``capturable=True`` (their step counter on the device).
CAPTURABLE_OPTIMIZERS = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW)


#: What ``torch.cuda.set_sync_debug_mode('warn')`` warns.
SYNC_WARNING = 'called a synchronizing CUDA operation'


def _hyper_parameters(optimizer: torch.optim.Optimizer) -> tuple:
    """Every scalar setting of every param group (lr, momentum, ...)."""
    return tuple(
        tuple(sorted((k, v) for k, v in group.items()
                     if k != 'params' and isinstance(
                         v, (bool, int, float, str, tuple, type(None)))))
        for group in optimizer.param_groups)


class GraphedTrainStep:
    """Run a train step eagerly until its setting is steady, then replay it.

    ``step_fn(inputs)`` must do a whole step from the tensors of ``inputs``
    alone: clear the gradients (``set_to_none=True``), forward, backward,
    the optimisers' ``step`` and clear the gradients again (as mmengine's
    ``update_params`` leaves them), without a host-device synchronisation.
    It returns ``(log_vars, extras)``: a dict of loss tensors and any
    tensors the caller reads after the step.

    A *setting* is the shapes and dtypes of the inputs, the autocast state,
    every optimiser hyper-parameter (lr, momentum, ...) and the storage of
    the parameters and of the optimiser state. A setting seen ``warmup``
    times with no replay in between is captured (those steps run eagerly
    on a side stream, as ``torch.cuda.graph`` asks; other settings may come
    between them, as the smaller last batch of a short pass does) and then
    replayed for as long as it lasts: the inputs are copied into the
    graph's static tensors, and the random numbers drawn inside the step
    come from the default CUDA generator with fresh offsets at each
    replay. One graph is kept. Other steps run eagerly: the smaller last
    batch of a pass, and the first steps after the lr changes (an
    epoch-wise schedule re-captures once per epoch; an lr changing every
    iteration is never captured).

    Where no step can be captured, :meth:`why_not` says why and the caller
    runs its usual step. A warm-up step that synchronises with the host
    (checked with ``torch.cuda.set_sync_debug_mode``; e.g. mmpretrain's
    ``LabelSmoothLoss`` calls ``.item()``) turns the graph off the same way
    until the next :meth:`reset` (the next stage). A capture that fails
    anyway is an error: CUDA's capture state cannot be trusted after it,
    so the run stops and says to turn the switch off.

    Args:
        warmup (int): Eager steps of one setting before it is captured.
            Defaults to 3.
    """

    #: Settings whose warm-up steps are counted at once (an lr changing
    #: every iteration makes a new one each step).
    MAX_PENDING = 4

    def __init__(self, warmup: int = 3) -> None:
        if int(warmup) < 1:
            raise ValueError(f'warmup must be >= 1, got {warmup}.')
        self.warmup = int(warmup)
        self._warned = set()
        self.reset()

    def reset(self) -> None:
        """Drop the graph (a new stage, re-built optimiser state)."""
        self._graph = None  # (key, graph, static inputs, static outputs)
        self._disabled = None  # why this stage's step cannot be captured
        # setting -> (warm-up steps seen, index of the last one), oldest
        # first
        self._pending = OrderedDict()
        self._step = 0
        self._last_replay = 0
        #: Steps replayed from the graph, and captures made (for logs and
        #: tests).
        self.replays = 0
        self.captures = 0

    @staticmethod
    def why_not(inputs: Dict[str, Tensor],
                wrappers: Sequence[OptimWrapper]) -> Optional[str]:
        """Why these inputs and wrappers cannot be captured, or None."""
        if torch_dist.is_available() and torch_dist.is_initialized():
            # Even with one process the parts are DDP-wrapped.
            return ('training is distributed: the gradient all-reduce of '
                    'DDP is not captured by this switch')
        for wrapper in wrappers:
            if (isinstance(wrapper, AmpOptimWrapper)
                    and wrapper.cast_dtype != torch.bfloat16):
                return ('fp16 AMP: the loss scaler checks the gradients for '
                        'inf on the host every step; train in bf16 '
                        "(optim_wrapper.dtype='bfloat16')")
            if wrapper._accumulative_counts != 1:
                return 'gradients are accumulated over several iterations'
            if wrapper.clip_grad_kwargs:
                return ('gradients are clipped, and mmengine logs their norm '
                        'with a host sync')
            if not isinstance(wrapper.optimizer, CAPTURABLE_OPTIMIZERS):
                return (f'{type(wrapper.optimizer).__name__} is not one of '
                        'the optimisers whose step can be captured (SGD, '
                        'Adam, AdamW)')
        if not all(t.is_cuda for t in inputs.values()):
            return 'the batch is not on a CUDA device'
        return None

    def __call__(
        self, step_fn: Callable[[Dict[str, Tensor]], Tuple[dict, object]],
        inputs: Dict[str, Tensor], wrappers: Sequence[OptimWrapper]
    ) -> Optional[Tuple[dict, object]]:
        """One step, captured or replayed where possible.

        Returns:
            tuple | None: ``step_fn``'s ``(log_vars, extras)`` (the log
            values copied out of the graph), or None when the step cannot
            be captured (see :meth:`why_not`, logged once per reason): the
            caller then runs its usual step.
        """
        reason = self._disabled or self.why_not(inputs, wrappers)
        if reason is not None:
            self._say(reason)
            return None
        optimizers = [w.optimizer for w in wrappers]
        for optimizer in optimizers:
            self._make_capturable(optimizer)
        key = self._key(inputs, optimizers)
        action = self._next_action(key)
        if action == 'replay':
            outputs = self._replay(inputs)
        elif action == 'eager':
            outputs = self._eager_on_side_stream(step_fn, inputs)
        else:
            try:
                self._capture(key, step_fn, inputs)
            except RuntimeError as exc:
                self._graph = None
                for optimizer in optimizers:
                    optimizer.zero_grad(set_to_none=True)
                raise RuntimeError(
                    'model.cuda_graph_step: capturing the train step as a '
                    f'CUDA graph failed ({exc}). Train with the eager step: '
                    '--cfg-options model.cuda_graph_step=False.') from exc
            outputs = self._replay(inputs)
        for wrapper in wrappers:
            # What OptimWrapper.update_params counts (one backward each).
            wrapper._inner_count += 1
        return outputs

    def _next_action(self, key) -> str:
        """``'replay'``, ``'eager'`` (a warm-up step) or ``'capture'``.

        A setting is steady once seen ``warmup`` times with no replay in
        between: the smaller last batch of every pass waits while the main
        graph replays, so it is never captured in place of that graph, and
        a pass of two full batches and a smaller one is still captured.
        """
        self._step += 1
        if self._graph is not None and self._graph[0] == key:
            self._last_replay = self._step
            return 'replay'
        count, last = self._pending.pop(key, (0, 0))
        if last < self._last_replay:
            count = 0  # the graph replayed since: start over
        if count < self.warmup:
            self._pending[key] = (count + 1, self._step)
            while len(self._pending) > self.MAX_PENDING:
                self._pending.popitem(last=False)
            return 'eager'
        self._pending.clear()
        self._last_replay = self._step  # the capture replays at once
        return 'capture'

    # ------------------------------------------------------------------
    def _say(self, reason: str, level: int = logging.INFO) -> None:
        if reason not in self._warned:
            self._warned.add(reason)
            print_log(
                f'model.cuda_graph_step: eager train step, because {reason}.',
                logger='current',
                level=level)

    @staticmethod
    def _make_capturable(optimizer: torch.optim.Optimizer) -> None:
        if 'capturable' not in optimizer.defaults:
            return  # SGD: nothing on the host
        for group in optimizer.param_groups:
            if group['capturable']:
                continue
            group['capturable'] = True
            for param in group['params']:
                state = optimizer.state.get(param)
                step = None if state is None else state.get('step')
                if torch.is_tensor(step) and step.device != param.device:
                    # Same value, on the device (as Adam keeps it when
                    # capturable).
                    state['step'] = step.to(param.device)

    @staticmethod
    def _key(inputs: Dict[str, Tensor], optimizers) -> tuple:
        shapes = tuple((name, tuple(t.shape), t.dtype, str(t.device))
                       for name, t in sorted(inputs.items()))
        autocast = (torch.is_autocast_enabled('cuda'),
                    torch.get_autocast_dtype('cuda'))
        params = tuple(p.data_ptr() for opt in optimizers
                       for g in opt.param_groups for p in g['params'])
        # The graph reads and writes the state where it is (Adam moments,
        # momentum buffers): new storage, new graph.
        state = tuple(
            v.data_ptr() for opt in optimizers for g in opt.param_groups
            for p in g['params'] for v in opt.state.get(p, {}).values()
            if torch.is_tensor(v))
        return (shapes, autocast, params, state,
                tuple(_hyper_parameters(opt) for opt in optimizers))

    def _eager_on_side_stream(self, step_fn, inputs):
        """A warm-up step, on a side stream, watched for host syncs."""
        current = torch.cuda.current_stream()
        side = torch.cuda.Stream()
        side.wait_stream(current)
        mode = torch.cuda.get_sync_debug_mode()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            torch.cuda.set_sync_debug_mode('warn')
            try:
                with torch.cuda.stream(side):
                    outputs = step_fn(inputs)
            finally:
                torch.cuda.set_sync_debug_mode(mode)
        current.wait_stream(side)
        syncs = [w for w in caught if SYNC_WARNING in str(w.message)]
        for other in caught:
            if other not in syncs:  # not ours to swallow
                warnings.warn_explicit(other.message, other.category,
                                       other.filename, other.lineno)
        if syncs:
            self._disabled = ('the step synchronises with the host (at '
                              f'{syncs[0].filename}:{syncs[0].lineno})')
        return outputs

    def _capture(self, key, step_fn, inputs) -> None:
        self._graph = None  # free the old graph's memory first
        static_inputs = {k: v.clone() for k, v in inputs.items()}
        graph = torch.cuda.CUDAGraph()
        # thread_local: another thread (a DataLoader's pin-memory thread,
        # NCCL's watchdog) may use CUDA while this one captures.
        with torch.cuda.graph(graph, capture_error_mode='thread_local'):
            static_outputs = step_fn(static_inputs)
        self._graph = (key, graph, static_inputs, static_outputs)
        self.captures += 1
        shapes = ', '.join(f'{name} {tuple(t.shape)}'
                           for name, t in static_inputs.items())
        # The first capture at INFO; re-captures (a new lr each epoch of an
        # epoch-wise schedule) at DEBUG.
        print_log(
            f'model.cuda_graph_step: train step captured as a CUDA graph '
            f'({shapes}); capture {self.captures}.',
            logger='current',
            level=logging.INFO if self.captures == 1 else logging.DEBUG)

    def _replay(self, inputs):
        _, graph, static_inputs, (log_vars, extras) = self._graph
        for name, tensor in inputs.items():
            static_inputs[name].copy_(tensor)
        graph.replay()
        self.replays += 1
        # The log values are read after this step; the next replay would
        # overwrite the graph's own.
        return {k: v.detach().clone() for k, v in log_vars.items()}, extras
