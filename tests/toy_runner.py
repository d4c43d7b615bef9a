# Copyright (c) galddc_mm contributors. All rights reserved.
"""A tiny mmengine ``Runner`` for tests of hooks and checkpoint files.

    from toy_runner import toy_runner
    runner = toy_runner(work_dir, default_hooks=dict(...))
    runner.train()

A 2->2 linear model on 8 samples (2 iterations per epoch), a metric that
reports fixed ``accuracy/*`` values, CPU only, a few seconds per run.
"""
import uuid

import torch
import torch.nn as nn
from mmengine.evaluator import BaseMetric
from mmengine.runner import Runner
from torch.utils.data import Dataset


class ToyModel(nn.Module):
    """``y = Wx + b`` with the interface mmengine's Runner calls."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 2)

    def forward(self, inputs, data_samples=None, mode='tensor'):
        # The Runner moves the model to the GPU when there is one.
        out = self.linear(torch.stack(inputs).to(self.linear.weight.device))
        if mode == 'loss':
            return dict(loss=out.pow(2).mean())
        return [dict(pred=o) for o in out]

    # mmengine's Runner wants a BaseModel-like interface.
    def train_step(self, data, optim_wrapper):
        with optim_wrapper.optim_context(self):
            losses = self(**data, mode='loss')
        optim_wrapper.update_params(losses['loss'])
        return dict(loss=losses['loss'].detach())

    def val_step(self, data):
        return self(**data, mode='predict')

    test_step = val_step


class ToySet(Dataset):

    def __len__(self):
        return 8

    def __getitem__(self, i):
        return dict(inputs=torch.full((2, ), float(i)))


class ToyMetric(BaseMetric):
    """Fixed numbers shaped like ``LongTailAccuracy``'s."""

    METRICS = {'accuracy/top1': 75.0, 'accuracy/many': 90.0,
               'accuracy/few': 40.0}

    def process(self, data_batch, data_samples) -> None:
        self.results.extend(data_samples)

    def compute_metrics(self, results) -> dict:
        return dict(self.METRICS)


def _loader():
    return dict(
        dataset=ToySet(),
        sampler=dict(type='DefaultSampler', shuffle=False),
        batch_size=4,
        num_workers=0)


def toy_runner(work_dir: str,
               max_epochs: int = 1,
               runner_cls: type = Runner,
               **kwargs) -> Runner:
    """A ``runner_cls`` on :class:`ToyModel`; ``kwargs`` override its
    arguments."""
    args = dict(
        model=ToyModel(),
        work_dir=work_dir,
        train_dataloader=_loader(),
        val_dataloader=_loader(),
        test_dataloader=_loader(),
        val_evaluator=[ToyMetric()],
        test_evaluator=[ToyMetric()],
        optim_wrapper=dict(
            optimizer=dict(type='SGD', lr=0.01, momentum=0.9)),
        param_scheduler=dict(type='MultiStepLR', milestones=[1]),
        train_cfg=dict(by_epoch=True, max_epochs=max_epochs),
        val_cfg=dict(),
        test_cfg=dict(),
        default_hooks=dict(logger=dict(type='LoggerHook', interval=1)),
        randomness=dict(seed=0),
        default_scope='mmpretrain',
        # Loggers are per experiment name: one per runner.
        experiment_name=f'toy_{uuid.uuid4().hex[:8]}')
    args.update(kwargs)
    return runner_cls(**args)
