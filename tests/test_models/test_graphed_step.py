# Copyright (c) galddc_mm contributors. All rights reserved.
"""``model.cuda_graph_step``: the cached-latent step as one CUDA graph.

On CPU the switch must fall back to the eager step and change nothing. On
a CUDA machine the graph's steps must equal the eager steps (same seeds),
through a smaller last batch and an lr change.
"""
import copy
import unittest
from unittest import TestCase

import torch
from data_utils import TINY_GALDDC_MODEL, TINY_NUM_CLASSES
from mmengine.optim import AmpOptimWrapper, OptimWrapper, OptimWrapperDict
from mmpretrain.registry import MODELS

import galddc_mm  # noqa: F401
from galddc_mm.models.classifiers.graphed_step import GraphedTrainStep

NUM_CLASSES, DIM = TINY_NUM_CLASSES, 16


def _model_cfg() -> dict:
    """The tests' tiny model on 16-d latents, without an image encoder."""
    cfg = copy.deepcopy(TINY_GALDDC_MODEL)
    cfg['backbone'] = dict(type='LatentPassThrough')
    cfg['head']['in_channels'] = DIM
    cfg['diffusion_head']['geometry_t_fraction'] = 0.5
    cfg['geometry']['lam'] = 0.5
    cfg.update(pseudo_bank=True, pseudo_bank_chunk=16)
    return cfg


MODEL = _model_cfg()

# The latents of a long-tailed set: classes of 12, 8, 3 and 2.
COUNTS = (12, 8, 3, 2)


def _latents(device):
    g = torch.Generator().manual_seed(0)
    labels = torch.cat([torch.full((n, ), c) for c, n in enumerate(COUNTS)])
    centres = 3 * torch.randn(NUM_CLASSES, DIM, generator=g)
    latents = centres[labels] + torch.randn(labels.numel(), DIM, generator=g)
    return latents.to(device), labels.to(device)


def _model(device, graph, **overrides):
    torch.manual_seed(0)
    cfg = dict(copy.deepcopy(MODEL), cuda_graph_step=graph, **overrides)
    model = MODELS.build(cfg)
    model.init_weights()
    model.to(device)
    latents, labels = _latents(device)
    model.freeze_encoder_copy()
    model.fit_latent_statistics(latents, labels)
    return model


def _wrappers(model, amp=None):
    """AdamW for theta, SGD with momentum for G (as the recipes); the
    pass-through encoder has no parameters."""
    params = {
        part: [p for m in modules.values() for p in m.parameters()]
        for part, modules in model.part_modules().items()
    }

    def wrap(optimizer):
        if amp is None:
            return OptimWrapper(optimizer)
        return AmpOptimWrapper(optimizer=optimizer, dtype=amp)

    return OptimWrapperDict(
        diffusion=wrap(torch.optim.AdamW(params['diffusion'], lr=1e-3)),
        head=wrap(torch.optim.SGD(params['head'], lr=0.1, momentum=0.9)))


def _batches(device, sizes, seed=3):
    latents, labels = _latents(device)
    g = torch.Generator().manual_seed(seed)
    out = []
    for size in sizes:
        sel = torch.randint(labels.numel(), (size, ), generator=g)
        out.append(dict(latents=latents[sel.to(device)],
                        labels=labels[sel.to(device)]))
    return out


def _run(model, wrappers, batches, stage, mode=None, lr_change_at=None):
    """Steps as the loop and ClassGeometryHook take them; the logs."""
    model.set_stage(stage, mode)
    model.train()
    if stage == 'finetune':
        model.prepare_pseudo_bank(len(batches), 8, seed=11)
    logs = []
    for i, batch in enumerate(batches):
        if i == lr_change_at:  # an epoch-wise schedule's step
            for wrapper in wrappers.values():
                for group in wrapper.optimizer.param_groups:
                    group['lr'] *= 0.5
        torch.manual_seed(100 + i)  # the same draws with and without
        logs.append(model.train_step(batch, wrappers))
        geometry_batch = model.take_geometry_batch()
        if geometry_batch is not None:
            model.geometry.ema_update(geometry_batch.latents,
                                      geometry_batch.labels)
    return logs


def _assert_same(case, eager, graph, logs_eager, logs_graph, **tol):
    for i, (a, b) in enumerate(zip(logs_eager, logs_graph)):
        case.assertEqual(set(a), set(b))
        for key in a:
            torch.testing.assert_close(
                b[key], a[key], msg=f'step {i}: {key}', **tol)
    state = graph.state_dict()
    for key, value in eager.state_dict().items():
        torch.testing.assert_close(state[key], value, msg=key, **tol)


class TestFallbackOnCPU(TestCase):

    def test_switch_on_changes_nothing_on_cpu(self):
        eager, graph = _model('cpu', False), _model('cpu', True)
        sizes = [8] * 5 + [5]
        for stage, mode in (('diffusion', None), ('finetune', 'stable')):
            w_eager = _wrappers(eager)
            w_graph = _wrappers(graph)
            logs = [
                _run(m, w, _batches('cpu', sizes), stage, mode)
                for m, w in ((eager, w_eager), (graph, w_graph))
            ]
            _assert_same(self, eager, graph, *logs, rtol=0, atol=0)
        step = graph._graphed_step
        self.assertEqual((step.captures, step.replays), (0, 0))
        self.assertEqual(step._warned, {'the batch is not on a CUDA device'})

    def test_reasons_for_the_eager_step(self):
        model = _model('cpu', True)
        params = list(model.diffusion_head.parameters())
        inputs = dict(latents=torch.zeros(2, DIM))
        cases = [
            (OptimWrapper(torch.optim.AdamW(params), accumulative_counts=2),
             'accumulated'),
            (OptimWrapper(torch.optim.AdamW(params),
                          clip_grad=dict(max_norm=1.0)), 'clipped'),
            (OptimWrapper(torch.optim.RMSprop(params)), 'RMSprop'),
            (OptimWrapper(torch.optim.AdamW(params)), 'CUDA'),
        ]
        for wrapper, expected in cases:
            reason = GraphedTrainStep.why_not(inputs, [wrapper])
            self.assertIn(expected, reason)

    def test_setting_key_follows_shapes_and_lr(self):
        model = _model('cpu', True)
        optimizer = torch.optim.AdamW(model.diffusion_head.parameters(),
                                      lr=1e-3)
        inputs = dict(latents=torch.zeros(8, DIM),
                      labels=torch.zeros(8, dtype=torch.long))
        key = GraphedTrainStep._key(inputs, [optimizer])
        self.assertEqual(key, GraphedTrainStep._key(
            {k: v.clone() for k, v in inputs.items()}, [optimizer]))
        smaller = {k: v[:5] for k, v in inputs.items()}
        self.assertNotEqual(key, GraphedTrainStep._key(smaller, [optimizer]))
        optimizer.param_groups[0]['lr'] = 5e-4
        self.assertNotEqual(key, GraphedTrainStep._key(inputs, [optimizer]))

    def test_capture_policy(self):
        """Which steps are warm-ups, captures and replays (keys only)."""
        step = GraphedTrainStep(warmup=3)

        def run(keys):
            actions = []
            for key in keys:
                action = step._next_action(key)
                if action == 'capture':  # what _capture leaves behind
                    step._graph = (key, None, None, None)
                actions.append(action[0])
            return ''.join(actions)

        # Six passes of 5 full batches (A) and a smaller last one (B): A
        # is captured after 3 warm-ups; B, never seen 4 times in a row,
        # stays eager and does not evict A's graph.
        self.assertEqual(
            run(['A'] * 5 + ['B']), 'eeecre')
        self.assertEqual(run((['A'] * 5 + ['B']) * 5), 'rrrrre' * 5)
        # A new lr (key C): 3 warm-ups, then C replaces A.
        self.assertEqual(run(['C'] * 5 + ['A']), 'eeecre')
        step.reset()
        self.assertEqual(run(['C', 'C']), 'ee')
        # Passes of 2 full batches and a smaller one (Digits-LT's stage
        # 2): A's warm-ups need not be in a row; B waits while A replays.
        step.reset()
        self.assertEqual(run(['A', 'A', 'B'] * 4), 'eeeecerrerre')
        # An lr changing every step: never captured, and the settings
        # kept for counting stay few.
        step.reset()
        self.assertEqual(run([f'lr{i}' for i in range(20)]), 'e' * 20)
        self.assertLessEqual(len(step._pending), step.MAX_PENDING)

    def test_warmup_must_be_positive(self):
        with self.assertRaisesRegex(ValueError, 'warmup'):
            GraphedTrainStep(warmup=0)


@unittest.skipUnless(torch.cuda.is_available(), 'needs a CUDA device')
class TestGraphEqualsEagerOnCUDA(TestCase):
    """Captured and replayed steps compute what eager steps compute."""

    # 2 passes of 6 full batches and a smaller last one; the lr halves at
    # step 9 (an epoch-wise schedule): capture, eager last batches,
    # re-capture after the lr change.
    SIZES = ([8] * 6 + [5]) * 2
    LR_CHANGE_AT = 9

    def _compare(self, stage, mode=None, amp=None, captures=2, model=None,
                 **tol):
        model = model or {}
        eager = _model('cuda', False, **model)
        graph = _model('cuda', True, **model)
        logs = [
            _run(m, _wrappers(m, amp), _batches('cuda', self.SIZES),
                 stage, mode, lr_change_at=self.LR_CHANGE_AT)
            for m in (eager, graph)
        ]
        _assert_same(self, eager, graph, *logs, **tol)
        step = graph._graphed_step
        # Captured at step 4 (3 warm-up steps), again after the lr change.
        self.assertEqual(step.captures, captures)
        if captures:
            self.assertGreater(step.replays, 4)
        return step

    def test_diffusion_stage(self):
        self._compare('diffusion', rtol=1e-5, atol=1e-6)

    def test_stable_finetune_with_pseudo_latents(self):
        self._compare('finetune', 'stable', rtol=1e-5, atol=1e-6)

    def test_diffusion_stage_bf16(self):
        # The eager step scales the loss by 2^16 and unscales the
        # gradients; the graph does neither: exact in binary floating
        # point, so the same numbers up to kernel rounding.
        self._compare('diffusion', amp='bfloat16', rtol=1e-3, atol=1e-4)

    def test_a_step_that_syncs_stays_eager(self):
        # mmpretrain's LabelSmoothLoss calls .item(): seen in the first
        # warm-up step, never captured, the same numbers.
        head = copy.deepcopy(MODEL['head'])
        head['loss'] = dict(type='LabelSmoothLoss', label_smooth_val=0.1)
        step = self._compare('finetune', 'stable', captures=0,
                             model=dict(head=head), rtol=1e-5, atol=1e-6)
        self.assertIn('synchronises with the host', step._disabled)
