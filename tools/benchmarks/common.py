# Copyright (c) galddc_mm contributors. All rights reserved.
"""The set-up every benchmark shares: device, precision, models and data.

:class:`BenchmarkContext` reads the command line once and holds what the
benchmarks of the other modules need: the device, AMP and memory-format
settings, the two configs, the builders of the baseline and GALD-DC
models with their optimiser wrappers, the synthetic (or DataLoader)
batches, and the rows recorded so far.
"""
import copy
import gc
import os.path as osp
import platform
from contextlib import nullcontext

import numpy as np
import torch
from mmengine.config import Config
from mmengine.dist import get_dist_info
from mmengine.optim import build_optim_wrapper
from mmpretrain.registry import MODELS
from mmpretrain.structures import DataSample

import galddc_mm  # noqa: F401  (registers the modules)
from galddc_mm.datasets import long_tail_counts

from . import internals

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
BASELINE_CFG = 'configs/baselines/ce_r50_imagenetlt.py'
GALDDC_CFG = 'configs/galddc/r50_imagenetlt.py'
#: Training images of ImageNet-LT, for the epoch-time estimates.
IMAGENET_LT_TRAIN = 115846


def error_message(exc: BaseException) -> str:
    """The row of a benchmark that failed: type and message, bounded."""
    return f'{type(exc).__name__}: {exc}'.strip()[:2000]


def machine_info(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name."""
    if device.type == 'cuda':
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        try:
            with open('/proc/cpuinfo') as f:
                for line in f:
                    if line.startswith('model name'):
                        name = line.split(':', 1)[1].strip()
                        break
        except OSError:
            pass
    return name


class BenchmarkContext:
    """Settings, builders, data and results shared by the benchmarks.

    Args:
        args (argparse.Namespace): The parsed command line of
            ``tools/benchmark.py``.
    """

    def __init__(self, args):
        self.args = args
        self.rank, self.world_size = get_dist_info()
        self.distributed = self.world_size > 1
        if args.device == 'cuda':
            if not torch.cuda.is_available():
                raise RuntimeError(
                    '--device cuda, but CUDA is not available here; pass '
                    '--device cpu (with --tiny for a quick smoke test).')
            self.device = torch.device('cuda', torch.cuda.current_device())
        else:
            self.device = torch.device('cpu')
        self.cuda = self.device.type == 'cuda'
        amp = args.amp or ('bf16' if self.cuda else 'none')
        if amp != 'none' and not self.cuda:
            raise ValueError(
                f'--amp {amp} needs a CUDA device (mmengine\'s '
                'AmpOptimWrapper); use --amp none on the CPU.')
        self.amp = amp
        self.loss_scale = args.loss_scale or (
            'dynamic' if amp == 'fp16' else 'none')
        self.channels_last = args.channels_last
        tiny = args.tiny
        self.batch_size = args.batch_size or (8 if tiny else 256)
        self.sampler_batch = args.sampler_batch or (16 if tiny else 256)
        self.img_size = 32 if tiny else 224
        self.base_cfg = Config.fromfile(osp.join(ROOT, BASELINE_CFG))
        self.galddc_cfg = Config.fromfile(osp.join(ROOT, GALDDC_CFG))
        if tiny:
            self._make_tiny()
        self.num_classes = self.galddc_cfg.model.head.num_classes
        self.latent_dim = self.galddc_cfg.model.head.in_channels
        counts = long_tail_counts(1280, self.num_classes, 256)
        self.label_probs = torch.as_tensor(counts / counts.sum())
        self.results = {}
        self.profiles = {}
        self.gen = torch.Generator().manual_seed(args.seed + self.rank)
        self.loader = None

    # ------------------------------------------------------------------
    # configuration
    # ------------------------------------------------------------------
    def _make_tiny(self):
        backbone = dict(type='CifarResNet', depth=20, in_channels=3)
        for cfg in (self.base_cfg, self.galddc_cfg):
            cfg.model.backbone = backbone
            cfg.model.head.num_classes = 10
            cfg.model.head.in_channels = 64
            cfg.data_preprocessor.num_classes = 10
        diffusion = self.galddc_cfg.model.diffusion_head
        diffusion.denoiser.update(hidden_dim=32, num_blocks=2,
                                  time_embed_dim=16)
        diffusion.schedule.num_timesteps = 100

    def autocast(self):
        """The autocast context of ``--amp`` (none on fp32)."""
        if self.amp == 'none':
            return nullcontext()
        dtype = torch.bfloat16 if self.amp == 'bf16' else torch.float16
        return torch.autocast('cuda', dtype=dtype)

    def _wrapper_cfg(self) -> dict:
        if self.amp == 'none':
            return dict(type='OptimWrapper')
        cfg = dict(
            type='AmpOptimWrapper',
            dtype='bfloat16' if self.amp == 'bf16' else 'float16')
        cfg['loss_scale'] = ('dynamic' if self.loss_scale == 'dynamic' else
                             dict(enabled=False))
        return cfg

    def _model_cfg(self, cfg: Config) -> dict:
        model = copy.deepcopy(cfg.model.to_dict())
        model.setdefault('data_preprocessor',
                         copy.deepcopy(cfg.data_preprocessor.to_dict()))
        return model

    def _place(self, model):
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        return model

    # ------------------------------------------------------------------
    # models
    # ------------------------------------------------------------------
    def build_baseline(self, variant=None):
        """Plain mmpretrain ImageClassifier + OptimWrapper, as a user would.

        ``variant='ls'`` gives it the GALD-DC recipe's head loss.
        """
        cfg = self._model_cfg(self.base_cfg)
        if variant == 'ls':
            cfg['head']['loss'] = copy.deepcopy(
                self.galddc_cfg.model.head.loss.to_dict())
        model = MODELS.build(cfg)
        model.init_weights()
        self._place(model)
        if self.distributed:
            from mmengine.model import MMDistributedDataParallel
            model = MMDistributedDataParallel(
                module=model,
                device_ids=[self.device.index] if self.cuda else None,
                broadcast_buffers=False)
        model.train()
        optim_cfg = dict(
            self._wrapper_cfg(),
            optimizer=self.base_cfg.optim_wrapper.optimizer.to_dict())
        return model, build_optim_wrapper(model, optim_cfg)

    def build_galddc(self, stage, mode=None, pseudo_sampling=None,
                     variant=None):
        """GALDDCClassifier in ``stage`` with the constructor's wrappers.

        ``variant`` is ``'+'``-joined flags: ``sf`` swaps the head loss
        for ``LabelSmoothCELoss``, ``fused`` gives the diffusion part a
        fused AdamW, ``graphstep`` turns on ``model.cuda_graph_step``
        (``bank``, the pseudo-latent bank, is filled by the benchmark),
        ``e0compiled`` turns on ``model.fold_frozen_bn`` and
        ``model.compile_frozen_encoder``, ``samplercompiled`` the
        ``compile_denoiser`` of ``model.pseudo_sampling``.
        """
        flags = set((variant or '').split('+'))
        cfg = self._model_cfg(self.galddc_cfg)
        if pseudo_sampling:
            cfg['pseudo_sampling'] = dict(
                cfg.get('pseudo_sampling') or {}, **pseudo_sampling)
        if 'samplercompiled' in flags:
            cfg['pseudo_sampling'] = dict(
                cfg.get('pseudo_sampling') or {}, compile_denoiser=True)
        if 'graphstep' in flags:
            cfg['cuda_graph_step'] = True
        if 'e0compiled' in flags:
            cfg.update(fold_frozen_bn=True, compile_frozen_encoder=True)
        if 'sf' in flags:
            eps = cfg['head']['loss'].get('label_smooth_val', 0.1)
            cfg['head']['loss'] = dict(
                type='LabelSmoothCELoss', label_smooth_val=eps)
        model = MODELS.build(cfg)
        model.init_weights()
        self._place(model)
        if stage != 'representation':
            self.init_geometry(model)
        if self.distributed:
            from galddc_mm.engine.runner import GALDDCDistributedDataParallel

            # Wrapped as the runner does, before any stage freezes a part.
            model = GALDDCDistributedDataParallel(
                module=model,
                device_ids=[self.device.index] if self.cuda else None)
        internals.set_stage(model, stage, mode)
        model.train()
        optim_cfg = copy.deepcopy(self.galddc_cfg.optim_wrapper.to_dict())
        optim_cfg.update(self._wrapper_cfg())
        if 'fused' in flags:
            optim_cfg['diffusion']['optimizer']['fused'] = True
        return model, build_optim_wrapper(model, optim_cfg)

    @torch.no_grad()
    def init_geometry(self, model):
        """Normaliser and geometry from random long-tailed latents."""
        latents, labels = self.real_latents()
        internals.init_latent_state(model, latents, labels)

    def real_latents(self):
        """The random long-tailed latents of :meth:`init_geometry`."""
        k, d = self.num_classes, self.latent_dim
        counts = np.maximum(long_tail_counts(64 if k > 10 else 40, k, 32), 2)
        labels = torch.repeat_interleave(
            torch.arange(k), torch.as_tensor(counts))
        gen = torch.Generator().manual_seed(1)
        mu = torch.rand(k, d, generator=gen) * 2
        latents = (mu[labels] +
                   0.5 * torch.randn(labels.numel(), d, generator=gen)).relu()
        return latents.to(self.device), labels.to(self.device)

    # ------------------------------------------------------------------
    # data
    # ------------------------------------------------------------------
    def labels(self, n):
        """``n`` labels drawn from the long-tailed class frequencies."""
        return torch.multinomial(
            self.label_probs.float(), n, replacement=True,
            generator=self.gen)

    def image_batches(self, count):
        """A function ``i -> batch``: fresh data samples, shared pixels."""
        if self.args.dataset:
            return self._loader_batches()
        b, s = self.batch_size, self.img_size
        images = torch.randint(
            0, 256, (b, 3, s, s), dtype=torch.uint8, generator=self.gen)
        if self.cuda:
            # What a DataLoader with pin_memory=True hands over.
            images = images.pin_memory()
        # The preprocessor moves each sample's label to the device in
        # place, so every iteration gets data samples of its own.
        batches = []
        for _ in range(count):
            samples = [
                DataSample().set_gt_label(int(y)) for y in self.labels(b)
            ]
            batches.append(dict(inputs=images, data_samples=samples))
        return lambda i: batches[i % count]

    def latent_batch(self):
        """A function ``i -> batch`` of cached latents (always the same)."""
        z = torch.rand(self.batch_size, self.latent_dim, generator=self.gen)
        y = self.labels(self.batch_size)
        batch = dict(latents=z.to(self.device), labels=y.to(self.device))
        return lambda i: batch

    def _loader_batches(self):
        if self.loader is None:
            self.loader = self.build_loader()
        state = dict(it=iter(self.loader))

        def get(i):
            try:
                return next(state['it'])
            except StopIteration:
                state['it'] = iter(self.loader)
                return next(state['it'])

        return get

    def build_loader(self):
        """A DataLoader over ``--dataset``, as the config's train loader."""
        from mmengine.runner import Runner
        args = self.args
        if args.dataset == 'SyntheticLT':
            dataset = dict(
                type='SyntheticLT',
                num_classes=self.num_classes,
                n_max=40 if args.tiny else 1280,
                imbalance_factor=8 if args.tiny else 256,
                img_size=self.img_size,
                mode='tensor',
                pipeline=[dict(type='PackInputs')])
        else:
            if not args.data_root:
                raise ValueError(f'--dataset {args.dataset} needs '
                                 '--data-root (the root of the images and '
                                 'lists, see docs/data_preparation.md).')
            dataset = copy.deepcopy(
                self.galddc_cfg.train_dataloader.dataset.to_dict())
            dataset.update(type=args.dataset, data_root=args.data_root)
        workers = args.num_workers
        return Runner.build_dataloader(
            dict(
                batch_size=self.batch_size,
                num_workers=workers,
                persistent_workers=workers > 0,
                pin_memory=self.cuda,
                sampler=dict(type='DefaultSampler', shuffle=True),
                collate_fn=dict(type='default_collate'),
                dataset=dataset),
            seed=args.seed)

    # ------------------------------------------------------------------
    # device state and records
    # ------------------------------------------------------------------
    def sync(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def peak_mib(self):
        if not self.cuda:
            return None
        return torch.cuda.max_memory_allocated(self.device) / 2**20

    def reset(self):
        """Free the last benchmark's models; start a fresh memory peak."""
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)

    def profiled(self, name):
        """Whether ``--profile`` asks for benchmark ``name``."""
        return name in (self.args.profile or '').split(',')

    def record(self, name, **row):
        self.results[name] = row
        if self.rank == 0:
            ms = row.get('ms')
            msg = f'{ms:.3f} ms' if ms is not None else row.get('error', '')
            print(f'[{name}] {msg}', flush=True)
