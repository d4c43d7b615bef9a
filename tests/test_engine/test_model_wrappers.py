# Copyright (c) galddc_mm contributors. All rights reserved.
"""CPUCompatibleDDP and GALDDCDistributedDataParallel on 2 gloo processes.

Each rank trains a toy model on its own batch; DDP must average the
gradients, so after one SGD step (lr 1, no momentum) both ranks hold
``w - (g_0 + g_1) / 2``, with ``g_r`` the gradient of rank r's loss,
computed here without any distributed code.
"""
import os
import os.path as osp
import tempfile
from unittest import TestCase

import torch
import torch.multiprocessing as mp
import torch.nn as nn
from conftest import end_gloo_group, free_port, start_gloo_group
from mmengine.model import BaseModel

WORLD_SIZE = 2


def rank_batch(rank):
    gen = torch.Generator().manual_seed(100 + rank)
    return torch.randn(5, 3, generator=gen)


class PlainToy(BaseModel):
    """One linear layer; the default (single-DDP) ``train_step``."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(3, 2)

    def forward(self, inputs, data_samples=None, mode='tensor'):
        out = self.linear(inputs)
        if mode == 'loss':
            return dict(loss=(out - 1).pow(2).mean())
        return out


class PartsToy(BaseModel):
    """GALD-DC-shaped: trainable parts, a frozen copy, a parameter-free one.

    ``train_step`` trains ``enc`` and ``head`` (stage ``'both'``) or only
    ``head`` with ``enc`` called through its unwrapped module under
    ``no_grad`` (stage ``'head'``), as the GALD-DC model does for frozen
    parts.
    """

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.enc = nn.Linear(3, 4)
        self.head = nn.Linear(4, 2)
        self.frozen = nn.Linear(3, 4)
        self.frozen.requires_grad_(False)
        self.act = nn.Tanh()
        self.stage = 'both'

    @staticmethod
    def _unwrap(module):
        return getattr(module, 'module', module)

    def loss(self, x):
        if self.stage == 'both':
            feats = self.enc(x)
        else:
            with torch.no_grad():
                feats = self._unwrap(self.enc)(x)
        with torch.no_grad():
            anchor = self.frozen(x)
        logits = self.head(self.act(feats))
        return logits.pow(2).mean() + (feats - anchor).pow(2).mean()

    def train_step(self, data, optim_wrapper):
        loss = self.loss(data['inputs'])
        names = ['enc', 'head'] if self.stage == 'both' else ['head']
        loss.backward()
        for name in names:
            optim_wrapper[name].step()
            optim_wrapper[name].zero_grad()
        return dict(loss=loss.detach())

    def forward(self, inputs, data_samples=None, mode='tensor'):
        return self.loss(inputs)


def local_grads(model, loss_fn):
    model.zero_grad()
    loss_fn().backward()
    return {
        n: p.grad.clone()
        for n, p in model.named_parameters() if p.grad is not None
    }


def expected_after_step(make_model, loss_of, stage=None):
    """Parameters after one lr-1 SGD step on the rank-averaged gradient."""
    grads = []
    for rank in range(WORLD_SIZE):
        model = make_model()
        if stage is not None:
            model.stage = stage
        grads.append(
            local_grads(model, lambda m=model, r=rank: loss_of(m, r)))
    model = make_model()
    return {
        n: p.detach() - sum(g[n] for g in grads) / WORLD_SIZE
        if n in grads[0] else p.detach()
        for n, p in model.named_parameters()
    }, grads


def plain_loss(model, rank):
    return model(rank_batch(rank), mode='loss')['loss']


def parts_loss(model, rank):
    return model.loss(rank_batch(rank))


def _worker(rank, port, out_dir):
    os.environ['OMP_NUM_THREADS'] = '1'
    torch.set_num_threads(1)
    from mmengine.optim import OptimWrapper, OptimWrapperDict
    from mmengine.registry import DefaultScope
    from mmengine.runner.checkpoint import get_state_dict
    from mmpretrain.registry import MODEL_WRAPPERS

    import galddc_mm  # noqa: F401
    from galddc_mm.engine.runner.process_group import release_model_wrappers
    start_gloo_group(rank, WORLD_SIZE, port)
    DefaultScope.get_instance(f'wrappers_{rank}', scope_name='mmpretrain')
    out = {}
    # mmengine's Runner passes device_ids=[LOCAL_RANK] to DDP wrappers.
    ddp = MODEL_WRAPPERS.build(
        dict(type='CPUCompatibleDDP'),
        default_args=dict(module=PlainToy(), device_ids=[rank]))
    sgd = OptimWrapper(torch.optim.SGD(ddp.parameters(), lr=1.))
    ddp.train_step(dict(inputs=rank_batch(rank)), optim_wrapper=sgd)
    out['plain'] = {
        n: p.detach().clone()
        for n, p in ddp.module.named_parameters()
    }

    model = PartsToy()
    plain_keys = sorted(model.state_dict())
    sep = MODEL_WRAPPERS.build(
        dict(type='GALDDCDistributedDataParallel'),
        default_args=dict(module=model, device_ids=[rank]))
    out['wrapped'] = {
        name: type(child).__name__
        for name, child in model._modules.items()
    }
    out['state_dict_keys_match'] = sorted(get_state_dict(sep)) == plain_keys
    optims = OptimWrapperDict(
        enc=OptimWrapper(torch.optim.SGD(model.enc.parameters(), lr=1.)),
        head=OptimWrapper(torch.optim.SGD(model.head.parameters(), lr=1.)))
    sep.train_step(dict(inputs=rank_batch(rank)), optim_wrapper=optims)
    out['both'] = {
        n.replace('.module', ''): p.detach().clone()
        for n, p in model.named_parameters()
    }
    # Head-only stage: enc's DDP sees no forward and no gradient.
    model.stage = 'head'
    sep.train_step(dict(inputs=rank_batch(rank)), optim_wrapper=optims)
    out['head'] = {
        n.replace('.module', ''): p.detach().clone()
        for n, p in model.named_parameters()
    }
    # no_sync: gradients stay local.
    model.stage = 'both'
    with sep.no_sync():
        model.loss(rank_batch(rank)).backward()
    out['no_sync_grads'] = {
        n.replace('.module', ''): p.grad.clone()
        for n, p in model.named_parameters() if p.grad is not None
    }
    # The wrappers hold the group: drop them before it ends.
    release_model_wrappers(sep)
    del ddp, sep, sgd, optims
    out['gloo_threads_left'] = end_gloo_group()
    torch.save(out, osp.join(out_dir, f'rank{rank}.pth'))


class TestModelWrappersTwoProcesses(TestCase):

    @classmethod
    def setUpClass(cls):
        cls._tmp = tempfile.TemporaryDirectory()
        mp.spawn(
            _worker,
            args=(free_port(), cls._tmp.name),
            nprocs=WORLD_SIZE,
            join=True)
        cls.results = [
            torch.load(osp.join(cls._tmp.name, f'rank{r}.pth'))
            for r in range(WORLD_SIZE)
        ]

    @classmethod
    def tearDownClass(cls):
        cls._tmp.cleanup()

    def assert_params(self, got, expected):
        self.assertEqual(sorted(got), sorted(expected))
        for name in expected:
            torch.testing.assert_close(got[name], expected[name], msg=name)

    def test_group_ends_with_no_thread_left(self):
        # Once the wrappers are released nothing holds the group: no gloo
        # thread is left to abort a rank at interpreter exit.
        self.assertEqual([r['gloo_threads_left'] for r in self.results],
                         [0] * WORLD_SIZE)

    def test_cpu_compatible_ddp_averages_gradients(self):
        expected, _ = expected_after_step(PlainToy, plain_loss)
        for res in self.results:
            self.assert_params(res['plain'], expected)

    def test_separate_wrapping(self):
        for res in self.results:
            self.assertEqual(
                res['wrapped'],
                dict(
                    data_preprocessor='BaseDataPreprocessor',
                    enc='CPUCompatibleDDP',
                    head='CPUCompatibleDDP',
                    frozen='Linear',
                    act='Tanh'))
            self.assertTrue(res['state_dict_keys_match'])

    def test_separate_ddp_averages_each_part(self):
        expected, _ = expected_after_step(PartsToy, parts_loss)
        for res in self.results:
            self.assert_params(res['both'], expected)

    def test_frozen_part_stage(self):
        # Second step trains the head only, on top of the first step.
        after_first, _ = expected_after_step(PartsToy, parts_loss)

        def make_stepped():
            model = PartsToy()
            model.load_state_dict(after_first, strict=False)
            return model

        expected, _ = expected_after_step(
            make_stepped, parts_loss, stage='head')
        for res in self.results:
            self.assert_params(res['head'], expected)
            torch.testing.assert_close(res['head']['enc.weight'],
                                       after_first['enc.weight'])

    def test_no_sync_keeps_local_gradients(self):
        # Rebuild each rank's state after both steps from its results, then
        # compare with purely local gradients.
        for rank, res in enumerate(self.results):
            model = PartsToy()
            model.load_state_dict(res['head'], strict=False)
            grads = local_grads(
                model, lambda m=model, r=rank: parts_loss(m, r))
            self.assert_params(res['no_sync_grads'], grads)
        self.assertFalse(
            torch.allclose(self.results[0]['no_sync_grads']['enc.weight'],
                           self.results[1]['no_sync_grads']['enc.weight']))


class TestWrapperHelpers(TestCase):

    def test_cpu_kwargs(self):
        from galddc_mm.engine.runner import cpu_compatible_ddp_kwargs
        kwargs = dict(device_ids=[1], broadcast_buffers=False)
        got = cpu_compatible_ddp_kwargs(nn.Linear(2, 2), kwargs)
        self.assertEqual(
            got,
            dict(device_ids=None, output_device=None, broadcast_buffers=False))
        self.assertEqual(kwargs['device_ids'], [1])  # input not modified
        meta = nn.Linear(2, 2, device='meta')
        self.assertEqual(cpu_compatible_ddp_kwargs(meta, kwargs), kwargs)

    def test_registered_where_runner_looks(self):
        from mmengine.model import is_model_wrapper
        from mmengine.registry import MODEL_WRAPPERS as ROOT
        from mmpretrain.registry import MODEL_WRAPPERS

        import galddc_mm.engine.runner as wrappers
        for cls in (wrappers.CPUCompatibleDDP,
                    wrappers.GALDDCDistributedDataParallel):
            # Runner.wrap_model calls the root registry's get().
            self.assertIs(ROOT.get(cls.__name__), cls)
            self.assertIs(ROOT.get(f'mmpretrain.{cls.__name__}'), cls)
            self.assertIs(MODEL_WRAPPERS.get(cls.__name__), cls)
        self.assertFalse(is_model_wrapper(nn.Linear(2, 2)))
