# Copyright (c) galddc_mm contributors. All rights reserved.
"""GPU benchmark of GALD-DC training against plain MMPretrain training.

Times, in one process and on one device (or under ``torchrun`` with DDP):

* training iterations (forward, backward, optimiser step), as the median of
  ``--iters`` timed iterations after ``--warmup`` ones, each closed by
  ``torch.cuda.synchronize()``, with images/s and the peak GPU memory:

  - ``baseline``: plain mmpretrain ``ImageClassifier`` built from
    ``configs/baselines/ce_r50_imagenetlt.py``, a plain
    ``OptimWrapper``/``AmpOptimWrapper`` and ``model.train_step``;
  - GALD-DC (``configs/galddc/r50_imagenetlt.py``) through
    ``GALDDCClassifier.train_step`` and the ``OptimWrapperDict`` its
    constructor builds: ``stage1``, ``stage2_cached`` (cached latents),
    ``stage2_images`` (latents extracted on the fly), ``stage3_stable_cached``,
    ``stage3_stable_images``, ``stage3_hybrid``, and the ``*_graph``
    variants of stage 3 (pseudo-latent sampling as one CUDA graph,
    ``pseudo_sampling=dict(cuda_graph=True)``);
  - variants: ``baseline_ls`` (the baseline with the recipe's head loss,
    mmpretrain's ``LabelSmoothLoss``), ``*_sf`` (the sync-free
    ``LabelSmoothCELoss`` instead), ``stage2_cached_fused`` (fused AdamW);

* ``layout``: the baseline in fp32/NCHW, AMP/NCHW and AMP/channels-last;
* ``preprocess``: the data preprocessor on pageable vs pinned batches;
* ``frozen_encoder``: the frozen E^(0) forward under ``no_grad`` vs
  ``inference_mode``;
* ``sampler``: DDIM with 10/25/50 steps vs the 1000-step ancestral (DDPM)
  sampler LDMLR runs, for 64- and 2048-d latents;
* ``geometry``: the stage-2 geometry losses + EMA (B=256, K=1000, D=2048)
  vectorised vs the per-sample loop of ``tools/benchmarks/geometry_losses.py``,
  eager and captured as a CUDA graph.

With ``--compile``, ``stage2_cached_compiled`` and ``geometry_compiled``
add ``torch.compile`` variants. Every training benchmark also counts the
host-device synchronisations of one step (``torch.cuda.set_sync_debug_mode``)
and where they come from. ``--profile`` prints torch.profiler's top ops.

The data are synthetic in-memory tensors shaped like ImageNet-LT (224 px,
1000 classes, long-tailed labels), or batches of a real data set read
through its dataset class and a DataLoader (``--dataset ImageNetLT
--data-root data/imagenet``; ``--dataset SyntheticLT`` needs no root).

Examples::

    # one GPU, ResNet-50, batch 256, bf16, channels-last
    python tools/benchmark.py --amp bf16 --channels-last --out bench.json
    # 2 GPUs, DDP, scaling against the 1-GPU run above
    torchrun --nproc_per_node 2 tools/benchmark.py --launcher pytorch \\
        --amp bf16 --channels-last --scaling-ref bench.json --out dist.json
    # CPU smoke test
    python tools/benchmark.py --tiny --device cpu --iters 2 --warmup 1
"""
import argparse
import copy
import gc
import importlib.util
import json
import math
import os
import os.path as osp
import platform
import shlex
import statistics
import sys
import time
import traceback
import warnings
from collections import Counter
from contextlib import nullcontext

import numpy as np
import torch
import torch.distributed as torch_dist
from mmengine.config import Config
from mmengine.dist import get_dist_info
from mmengine.logging import MMLogger
from mmengine.optim import build_optim_wrapper
from mmengine.registry import init_default_scope
from mmpretrain.registry import MODELS
from mmpretrain.structures import DataSample

import galddc_mm  # noqa: F401  (registers the modules)
from galddc_mm.datasets import long_tail_counts
from galddc_mm.engine.runner import init_process_group, shutdown_process_group

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
BASELINE_CFG = 'configs/baselines/ce_r50_imagenetlt.py'
GALDDC_CFG = 'configs/galddc/r50_imagenetlt.py'
GEOMETRY_HELPERS = 'tools/benchmarks/geometry_losses.py'
#: Training images of ImageNet-LT, for the epoch-time estimates.
IMAGENET_LT_TRAIN = 115846

# name: (stage, finetune mode, data kind, pseudo_sampling overrides,
#        variant); stage None is the plain mmpretrain baseline. Variants:
# 'ls': the baseline with the GALD-DC recipe's head loss (LabelSmoothLoss);
# 'sf': the head loss replaced by the sync-free LabelSmoothCELoss;
# 'fused': the diffusion part's AdamW with fused=True.
TRAIN_BENCHES = {
    'baseline': (None, None, 'images', None, None),
    'baseline_ls': (None, None, 'images', None, 'ls'),
    'stage1': ('representation', None, 'images', None, None),
    'stage1_sf': ('representation', None, 'images', None, 'sf'),
    'stage2_cached': ('diffusion', None, 'latents', None, None),
    'stage2_cached_fused': ('diffusion', None, 'latents', None, 'fused'),
    'stage2_images': ('diffusion', None, 'images', None, None),
    'stage3_stable_cached': ('finetune', 'stable', 'latents', None, None),
    'stage3_stable_cached_graph': ('finetune', 'stable', 'latents',
                                   dict(cuda_graph=True), None),
    'stage3_stable_cached_graph_sf': ('finetune', 'stable', 'latents',
                                      dict(cuda_graph=True), 'sf'),
    'stage3_stable_images': ('finetune', 'stable', 'images', None, None),
    'stage3_hybrid': ('finetune', 'hybrid', 'images', None, None),
    'stage3_hybrid_graph': ('finetune', 'hybrid', 'images',
                            dict(cuda_graph=True), None),
    'stage3_hybrid_graph_sf': ('finetune', 'hybrid', 'images',
                               dict(cuda_graph=True), 'sf'),
}
OTHER_BENCHES = ('layout', 'preprocess', 'frozen_encoder', 'sampler',
                 'geometry')
COMPILE_BENCHES = ('stage2_cached_compiled', 'geometry_compiled')
DIST_DEFAULT = ('baseline', 'stage1', 'stage1_sf', 'stage3_hybrid_graph_sf',
                'stage3_stable_cached_graph_sf')
DDIM_STEPS = (10, 25, 50)
LAUNCH_KEYS = ('cudaLaunchKernel', 'cudaLaunchKernelExC', 'cuLaunchKernel',
               'cuLaunchKernelEx', 'cudaGraphLaunch')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Benchmark GALD-DC training against plain MMPretrain.')
    parser.add_argument(
        '--device',
        choices=['cuda', 'cpu'],
        default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument(
        '--batch-size',
        type=int,
        help='images (or latents) per GPU and iteration; default 256, 8 '
        'with --tiny')
    parser.add_argument(
        '--amp',
        choices=['none', 'bf16', 'fp16'],
        help='mixed precision of every training step; default bf16 on CUDA, '
        'none on CPU')
    parser.add_argument(
        '--loss-scale',
        choices=['dynamic', 'none'],
        help="AmpOptimWrapper loss scaling; default 'none' for bf16 (not "
        "needed), 'dynamic' for fp16")
    parser.add_argument(
        '--channels-last',
        action='store_true',
        help='models and images in channels-last memory format')
    parser.add_argument(
        '--cudnn-benchmark',
        action='store_true',
        help='torch.backends.cudnn.benchmark = True')
    parser.add_argument('--iters', type=int, default=30)
    parser.add_argument('--warmup', type=int, default=10)
    parser.add_argument(
        '--only',
        help='comma-separated benchmarks to run; default all (under '
        f'--launcher pytorch: {",".join(DIST_DEFAULT)}). Known: ' +
        ', '.join(list(TRAIN_BENCHES) + list(OTHER_BENCHES) +
                  list(COMPILE_BENCHES)))
    parser.add_argument(
        '--tiny',
        action='store_true',
        help='tiny sizes (CifarResNet-20, 32 px, 10 classes) for a smoke '
        'test')
    parser.add_argument(
        '--dataset',
        help='read batches through this dataset class and a DataLoader '
        '(e.g. ImageNetLT with --data-root, or SyntheticLT) instead of '
        'in-memory tensors')
    parser.add_argument('--data-root', help='data root of --dataset')
    parser.add_argument('--num-workers', type=int, default=8)
    parser.add_argument(
        '--sampler-batch',
        type=int,
        help='latents per sampler call; default 256, 16 with --tiny')
    parser.add_argument(
        '--compile',
        action='store_true',
        help='also run the torch.compile variants (' +
        ', '.join(COMPILE_BENCHES) + ')')
    parser.add_argument(
        '--compile-mode',
        default='default',
        help='torch.compile mode of the stage-2 variant (the geometry '
        "variant uses 'reduce-overhead'); 'max-autotune*' modes spend "
        'minutes autotuning every GEMM shape')
    parser.add_argument(
        '--profile',
        help='comma-separated training benchmarks to profile '
        '(torch.profiler top ops, kernel launches per step)')
    parser.add_argument(
        '--no-sync-check',
        action='store_true',
        help='skip counting host-device syncs of one step')
    parser.add_argument(
        '--launcher',
        choices=['none', 'pytorch'],
        default='none',
        help="'pytorch' under torchrun: DDP over the started processes")
    parser.add_argument(
        '--scaling-ref',
        help='JSON of a 1-process run; with --launcher pytorch, report the '
        'throughput scaling of the common benchmarks')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--out', help='write the results as JSON here')
    return parser.parse_args(argv)


def load_geometry_helpers():
    """The loop references and timer of tools/benchmarks/geometry_losses."""
    spec = importlib.util.spec_from_file_location(
        'galddc_geometry_losses_bench', osp.join(ROOT, GEOMETRY_HELPERS))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def short_path(path: str) -> str:
    """A source path relative to the repo or to site-packages."""
    path = osp.abspath(path)
    if path.startswith(ROOT + os.sep):
        return osp.relpath(path, ROOT)
    marker = 'site-packages' + os.sep
    return path.split(marker, 1)[1] if marker in path else path


def median_ms(times):
    return statistics.median(times) * 1e3


def ancestral_sample(head, labels: torch.Tensor,
                     coefs: list) -> torch.Tensor:
    r"""DDPM ancestral sampling over all T steps: LDMLR's sampler.

    Algorithm 2 of Ho et al. (2020), from :math:`z_T \sim N(0, I)`:

    .. math::
        z_{t-1} = \frac{1}{\sqrt{\alpha_t}} \left(z_t -
            \frac{\beta_t}{\sqrt{1 - \bar\alpha_t}}
            \epsilon_\theta(z_t, t, y)\right) + \sigma_t n,
        \quad \sigma_t^2 = \beta_t, \ n \sim N(0, I)

    (no noise at the last step). The reference of the DDIM benchmark:
    coefficients are host floats (``ancestral_coefficients``) and the
    network is the one :meth:`LatentDiffusionHead.sample` uses, so only the
    number of steps differs.

    Args:
        head (LatentDiffusionHead): The diffusion head.
        labels (torch.Tensor): Classes, ``(B, )``.
        coefs (list): ``(1 / sqrt(alpha_t), beta_t / sqrt(1 - abar_t),
            sigma_t)`` per timestep.

    Returns:
        torch.Tensor: Encoder-space latents ``(B, D)``.
    """
    device = labels.device
    denoiser = head._sampling_denoiser(device)
    z = torch.randn(labels.shape[0], head.latent_dim, device=device)
    for t in range(len(coefs) - 1, -1, -1):
        c_scale, c_eps, sigma = coefs[t]
        t_in = torch.full((labels.shape[0], ), t, dtype=torch.long,
                          device=device)
        eps = denoiser(z, t_in, labels)
        z = c_scale * (z - c_eps * eps)
        if t > 0:
            z = z + sigma * torch.randn_like(z)
    return head.normalizer.denormalize(z)


def ancestral_coefficients(schedule) -> list:
    """Host-side ``(1/sqrt(alpha_t), beta_t/sqrt(1-abar_t), sqrt(beta_t))``."""
    betas = schedule.betas.detach().double().cpu()
    # sqrt(1 - abar) from its own buffer (computed in float64): 1 - abar
    # of the float32 abar loses digits at small t.
    root = schedule.sqrt_one_minus_alphas_cumprod.detach().double().cpu()
    return [(float(1 / (1 - b).sqrt()), float(b / r), float(b.sqrt()))
            for b, r in zip(betas, root)]


class Benchmark:
    """Builds the models and runs the benchmarks selected by the args."""

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
        self.helpers = None

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

    def _autocast(self):
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
        """GALDDCClassifier in ``stage`` with the constructor's wrappers."""
        cfg = self._model_cfg(self.galddc_cfg)
        if pseudo_sampling:
            cfg['pseudo_sampling'] = dict(pseudo_sampling)
        if variant == 'sf':
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
        ori = model.module if self.distributed else model
        ori.set_stage(stage, mode)
        model.train()
        optim_cfg = copy.deepcopy(self.galddc_cfg.optim_wrapper.to_dict())
        optim_cfg.update(self._wrapper_cfg())
        if variant == 'fused':
            optim_cfg['diffusion']['optimizer']['fused'] = True
        return model, build_optim_wrapper(model, optim_cfg)

    @torch.no_grad()
    def init_geometry(self, model):
        """Normaliser and geometry from random long-tailed latents."""
        k, d = self.num_classes, self.latent_dim
        counts = np.maximum(long_tail_counts(64 if k > 10 else 40, k, 32), 2)
        labels = torch.repeat_interleave(
            torch.arange(k), torch.as_tensor(counts))
        gen = torch.Generator().manual_seed(1)
        mu = torch.rand(k, d, generator=gen) * 2
        latents = (mu[labels] +
                   0.5 * torch.randn(labels.numel(), d, generator=gen)).relu()
        latents, labels = latents.to(self.device), labels.to(self.device)
        model.freeze_encoder_copy()
        model.diffusion_head.normalizer.fit(latents)
        # Each rank its share: the geometry all-reduces sums and counts.
        own = torch.arange(labels.numel(), device=self.device)
        own = own[own % self.world_size == self.rank]
        model.geometry.init_from_latents(latents[own], labels[own])

    # ------------------------------------------------------------------
    # data
    # ------------------------------------------------------------------
    def _labels(self, n):
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
                DataSample().set_gt_label(int(y)) for y in self._labels(b)
            ]
            batches.append(dict(inputs=images, data_samples=samples))
        return lambda i: batches[i % count]

    def latent_batch(self):
        z = torch.rand(self.batch_size, self.latent_dim, generator=self.gen)
        y = self._labels(self.batch_size)
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
    # timing
    # ------------------------------------------------------------------
    def sync(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def time_loop(self, fn, get_batch, warmup, iters):
        """Median seconds of ``fn(batch)`` (and of fetching the batch)."""
        for i in range(warmup):
            fn(get_batch(i))
        self.sync()
        if self.distributed:
            torch_dist.barrier()
        times, waits = [], []
        for i in range(iters):
            start = time.perf_counter()
            batch = get_batch(warmup + i)
            fetched = time.perf_counter()
            fn(batch)
            self.sync()
            times.append(time.perf_counter() - fetched)
            waits.append(fetched - start)
        seconds = statistics.median(times)
        if self.distributed:
            # The slowest rank sets the pace of a synchronous step.
            t = torch.tensor([seconds], device=self.device)
            torch_dist.all_reduce(t, op=torch_dist.ReduceOp.MAX)
            seconds = float(t)
        return seconds, statistics.median(waits)

    def count_syncs(self, fn, batch):
        """Host-device synchronisations of one ``fn(batch)`` and their sites.

        ``torch.cuda.set_sync_debug_mode('warn')`` makes every synchronising
        CUDA call (``.item()``, ``bool()`` of a CUDA tensor, a blocking
        copy, ``nonzero`` ...) warn from the Python line that issued it.
        """
        if not self.cuda or self.args.no_sync_check:
            return None, []
        self.sync()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            torch.cuda.set_sync_debug_mode('warn')
            try:
                fn(batch)
            finally:
                torch.cuda.set_sync_debug_mode(0)
        sites = [
            f'{short_path(w.filename)}:{w.lineno}' for w in caught
            if 'synchroniz' in str(w.message)
        ]
        return len(sites), [
            f'{site} x{n}' for site, n in Counter(sites).most_common(8)
        ]

    def profile(self, name, fn, get_batch, steps=3):
        """torch.profiler's top ops and kernel launches of ``steps`` steps."""
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as profiler
        activities = [ProfilerActivity.CPU]
        if self.cuda:
            activities.append(ProfilerActivity.CUDA)
        self.sync()
        with profiler(activities=activities) as prof:
            for i in range(steps):
                fn(get_batch(i))
            self.sync()
        events = prof.key_averages()
        launches = sum(e.count for e in events if e.key in LAUNCH_KEYS)
        gpu_us = 0.0
        for e in events:
            if getattr(e, 'device_type', None) == \
                    torch.autograd.DeviceType.CUDA:
                gpu_us += getattr(e, 'self_device_time_total',
                                  getattr(e, 'self_cuda_time_total', 0))
        table = None
        keys = (('self_device_time_total', 'self_cuda_time_total')
                if self.cuda else ('self_cpu_time_total', ))
        for key in keys:
            try:
                table = events.table(sort_by=key, row_limit=12)
                break
            except (AttributeError, KeyError, ValueError):
                continue
        self.profiles[name] = dict(
            kernel_launches_per_step=launches / steps,
            gpu_kernel_ms_per_step=gpu_us / 1e3 / steps,
            top_ops=table)
        if self.rank == 0:
            print(f'\n--- profile of {name} ({steps} steps): '
                  f'{launches / steps:.0f} kernel launches/step, '
                  f'{gpu_us / 1e3 / steps:.2f} ms of kernels/step')
            print(table)

    def peak_mib(self):
        if not self.cuda:
            return None
        return torch.cuda.max_memory_allocated(self.device) / 2**20

    def reset(self):
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)

    def record(self, name, **row):
        self.results[name] = row
        if self.rank == 0:
            ms = row.get('ms')
            msg = f'{ms:.3f} ms' if ms is not None else row.get('error', '')
            print(f'[{name}] {msg}', flush=True)

    # ------------------------------------------------------------------
    # training benchmarks
    # ------------------------------------------------------------------
    def bench_train(self, name, warmup=None, iters=None, suffix=''):
        """One training configuration of :data:`TRAIN_BENCHES`."""
        stage, mode, kind, sampling, variant = TRAIN_BENCHES[name]
        warmup = self.args.warmup if warmup is None else warmup
        iters = self.args.iters if iters is None else iters
        self.reset()
        if stage is None:
            model, optim = self.build_baseline(variant)
        else:
            model, optim = self.build_galddc(stage, mode, sampling, variant)
        profiled = self._profiled(name) and not suffix
        extra = 2 + (3 if profiled else 0)
        if kind == 'images':
            get_batch = self.image_batches(warmup + iters + extra)
        else:
            get_batch = self.latent_batch()

        def step(batch):
            model.train_step(batch, optim)

        seconds, wait = self.time_loop(step, get_batch, warmup, iters)
        syncs, sites = self.count_syncs(step, get_batch(warmup + iters))
        if profiled:
            self.profile(name, step,
                         lambda i: get_batch(warmup + iters + 1 + i))
        per_s = self.world_size * self.batch_size / seconds
        row = dict(
            ms=seconds * 1e3,
            per_s=per_s,
            unit='latents/s' if kind == 'latents' else 'images/s',
            peak_mem_mib=self.peak_mib(),
            syncs_per_step=syncs,
            sync_sites=sites,
            world_size=self.world_size,
            amp=self.amp,
            channels_last=self.channels_last)
        if self.args.dataset and kind == 'images':
            row['data_wait_ms'] = wait * 1e3
        if stage in ('diffusion', 'finetune'):
            steps = math.ceil(IMAGENET_LT_TRAIN /
                              (self.batch_size * self.world_size))
            row['imagenet_lt_epoch_s'] = steps * seconds
        self.record(name + suffix, **row)

    def _profiled(self, name):
        return name in (self.args.profile or '').split(',')

    def bench_layout(self):
        """The baseline in fp32/NCHW, AMP/NCHW and AMP/channels-last."""
        saved = self.amp, self.channels_last
        variants = [('none', False), ('none', True)]
        if self.cuda:
            amp = 'bf16' if saved[0] == 'none' else saved[0]
            variants = [('none', False), (amp, False), (amp, True)]
        warmup = max(2, self.args.warmup // 2)
        iters = max(2, self.args.iters // 2)
        try:
            for amp, last in variants:
                self.amp, self.channels_last = amp, last
                layout = 'channels_last' if last else 'nchw'
                self.bench_train(
                    'baseline', warmup, iters, suffix=f'@{amp}_{layout}')
        finally:
            self.amp, self.channels_last = saved

    def bench_compiled_stage2(self):
        """Stage 2 on cached latents: ``diffusion_loss`` compiled, fused AdamW.
        """
        self.reset()
        model, optim = self.build_galddc('diffusion', variant='fused')
        ori = model.module if self.distributed else model
        ori.diffusion_loss = torch.compile(
            ori.diffusion_loss, mode=self.args.compile_mode)
        get_batch = self.latent_batch()

        def step(batch):
            model.train_step(batch, optim)

        start = time.perf_counter()
        step(get_batch(0))
        self.sync()
        compile_s = time.perf_counter() - start
        seconds, _ = self.time_loop(step, get_batch, self.args.warmup,
                                    self.args.iters)
        syncs, sites = self.count_syncs(step, get_batch(0))
        self.record(
            'stage2_cached_compiled',
            ms=seconds * 1e3,
            per_s=self.world_size * self.batch_size / seconds,
            unit='latents/s',
            peak_mem_mib=self.peak_mib(),
            syncs_per_step=syncs,
            sync_sites=sites,
            compile_s=compile_s,
            compile_mode=self.args.compile_mode)

    # ------------------------------------------------------------------
    # component benchmarks
    # ------------------------------------------------------------------
    def bench_preprocess(self):
        """ClsDataPreprocessor on pageable vs pinned (+ non_blocking)."""
        self.reset()
        model, _ = self.build_baseline()
        dp = model.data_preprocessor
        b, s = self.batch_size, self.img_size
        pageable = torch.randint(
            0, 256, (b, 3, s, s), dtype=torch.uint8, generator=self.gen)
        variants = [('pageable', pageable, False)]
        if self.cuda:
            pinned = pageable.pin_memory()
            variants += [('pinned', pinned, False),
                         ('pinned_non_blocking', pinned, True)]
        count = self.args.warmup + self.args.iters + 1
        for label, images, non_blocking in variants:
            batches = [
                dict(
                    inputs=images,
                    data_samples=[
                        DataSample().set_gt_label(int(y))
                        for y in self._labels(b)
                    ]) for _ in range(count)
            ]
            dp._non_blocking = non_blocking

            def run(batch):
                dp(batch, True)

            seconds, _ = self.time_loop(run, batches.__getitem__,
                                        self.args.warmup, self.args.iters)
            syncs, sites = self.count_syncs(run, batches[-1])
            self.record(
                f'preprocess@{label}',
                ms=seconds * 1e3,
                per_s=b / seconds,
                unit='images/s',
                syncs_per_step=syncs,
                sync_sites=sites)
        dp._non_blocking = False

    def bench_frozen_encoder(self):
        """E^(0)(x) under no_grad (the model's way) vs inference_mode."""
        self.reset()
        model, _ = self.build_galddc('finetune', 'hybrid')
        ori = model.module if self.distributed else model
        batch = self.image_batches(1)(0)
        with torch.no_grad():
            inputs = ori.data_preprocessor(batch, False)['inputs']
        if self.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)

        def no_grad(_):
            with self._autocast():
                ori.encode_frozen(inputs)

        def inference_mode(_):
            with self._autocast(), torch.inference_mode():
                feats = ori.frozen_encoder['neck'](
                    ori.frozen_encoder['backbone'](inputs))
            return feats

        for label, fn in (('no_grad', no_grad),
                          ('inference_mode', inference_mode)):
            seconds, _ = self.time_loop(fn, lambda i: None,
                                        self.args.warmup, self.args.iters)
            self.record(
                f'frozen_encoder@{label}',
                ms=seconds * 1e3,
                per_s=self.batch_size / seconds,
                unit='images/s',
                peak_mem_mib=self.peak_mib())

    def _sampler_head(self, dim):
        """A frozen LatentDiffusionHead sized like the recipe for ``dim``."""
        cfg = copy.deepcopy(self.galddc_cfg.model.diffusion_head.to_dict())
        if self.args.tiny:
            denoiser = dict(hidden_dim=32, num_blocks=2, time_embed_dim=16)
        elif dim >= 1024:  # configs/_base_/galddc_recipes/imagenet_lt_r50
            denoiser = dict(hidden_dim=2048, num_blocks=4, time_embed_dim=256)
        else:  # configs/_base_/galddc_recipes/cifar_lt_r32
            denoiser = dict(hidden_dim=512, num_blocks=4, time_embed_dim=128)
        cfg['denoiser'].update(denoiser)
        cfg.update(latent_dim=dim, num_classes=self.num_classes)
        head = MODELS.build(cfg)
        head.init_weights()
        # Trained blocks are not the identity: give fc2 weights.
        for block in head.denoiser.blocks:
            torch.nn.init.normal_(block.fc2.weight, std=0.02)
        head.to(self.device).eval().requires_grad_(False)
        gen = torch.Generator().manual_seed(2)
        head.normalizer.fit(torch.rand(512, dim, generator=gen).to(
            self.device))
        return head

    @torch.no_grad()
    def bench_sampler(self):
        """DDIM 10/25/50 steps vs 1000-step ancestral, 64-d and 2048-d."""
        dims = (16, 64) if self.args.tiny else (64, 2048)
        b = self.sampler_batch
        for dim in dims:
            self.reset()
            head = self._sampler_head(dim)
            labels = torch.randint(
                0, self.num_classes, (b, ), generator=self.gen).to(
                    self.device)
            for label, fn, warmup, repeats in self._sampler_cases(
                    head, labels):
                name = f'sampler_d{dim}@{label}'
                try:
                    with self._autocast():
                        seconds, _ = self.time_loop(fn, lambda i: None,
                                                    warmup, repeats)
                except Exception as exc:  # keep the other cases going
                    self.record(name, error=_error(exc))
                    continue
                self.record(
                    name,
                    ms=seconds * 1e3,
                    per_s=b / seconds,
                    unit='latents/s',
                    peak_mem_mib=self.peak_mib(),
                    latent_dim=dim,
                    batch=b)

    def _sampler_cases(self, head, labels):
        """``(label, fn, warmup, repeats)`` of the sampler benchmark."""
        coefs = ancestral_coefficients(head.schedule)
        sampler, schedule = head.sampler, head.schedule
        chain = sampler.timesteps(schedule.num_timesteps, 25).tolist()
        b, dim, device = labels.shape[0], head.latent_dim, labels.device

        def step_api(_):
            # The pre-optimisation sampling loop: the public `step` with
            # 0-d device tensors as coefficients.
            denoiser = head._sampling_denoiser(device)
            z = torch.randn(b, dim, device=device)
            for i, t in enumerate(chain):
                eps = denoiser(z, torch.full((b, ), t, device=device), labels)
                t_prev = chain[i + 1] if i + 1 < len(chain) else -1
                z, _ = sampler.step(schedule, eps, t, t_prev, z)
            return head.normalizer.denormalize(z)

        cases = [(f'ancestral_{schedule.num_timesteps}',
                  lambda _: ancestral_sample(head, labels, coefs), 1, 3),
                 ('ddim_25_step_api', step_api, 2, 10)]
        for steps in DDIM_STEPS:
            cases.append((f'ddim_{steps}',
                          lambda _, s=steps: head.sample(labels, num_steps=s),
                          2, 10))
        if self.cuda:
            for steps in DDIM_STEPS:
                cases.append((f'ddim_{steps}_graph',
                              lambda _, s=steps: head.sample(
                                  labels, num_steps=s, cuda_graph=True), 2,
                              10))
        return cases

    def bench_geometry(self, compiled=False):
        """Geometry losses fwd+bwd + EMA: vectorised vs loop, eager/graph.

        The setup mirrors ``tools/benchmarks/geometry_losses.py``, whose
        per-sample loop references and timer are reused.
        """
        helpers = self.helpers = self.helpers or load_geometry_helpers()
        if self.args.tiny:
            b, k, d = 16, 10, 64
        else:
            b, k, d = 256, 1000, 2048
        device = self.device
        gen = torch.Generator().manual_seed(0)
        margin = 1.0
        geom = MODELS.build(
            dict(type='ClassGeometry', num_classes=k, latent_dim=d, tau=20))
        geom.counts.copy_((500 * torch.rand(k, generator=gen)**4).long() + 1)
        geom.prototypes.copy_(torch.randn(k, d, generator=gen))
        geom.r_obs.copy_(torch.rand(k, generator=gen) * 10 + 20)
        geom.r_real.copy_(geom.r_obs)
        geom.r_prior.copy_(geom.r_obs[geom.head_mask].mean())
        geom.initialized.fill_(1)
        geom.to(device)
        losses = [
            MODELS.build(dict(type='PrototypeLoss')).to(device),
            MODELS.build(dict(type='CalibratedRadiusLoss')).to(device),
            MODELS.build(dict(type='PrototypeMarginLoss',
                              margin=margin)).to(device),
        ]
        labels = torch.randint(0, k, (b, ), generator=gen).to(device)
        z_base = torch.randn(b, d, generator=gen).to(device) + \
            geom.prototypes[labels]
        state = {n: v.clone() for n, v in geom.state_dict().items()}

        def loss_forward(z):
            protos, r_cal = geom.prototypes, geom.r_cal
            return (losses[0](z, labels, protos) +
                    losses[1](z, labels, protos, r_cal) +
                    losses[2](z, labels, protos, geom.valid_mask))

        def make_step(forward, ema):
            z = z_base.clone().requires_grad_(True)

            def step():
                z.grad = None
                forward(z).backward()
                ema(z.detach(), labels)

            return step, z

        ref_protos, ref_r = geom.prototypes.clone(), geom.r_obs.clone()
        z_loop = z_base.clone().requires_grad_(True)

        def loop_step():
            z_loop.grad = None
            helpers.loop_losses(z_loop, labels, geom.prototypes, geom.r_cal,
                                geom.valid_mask, margin).backward()
            helpers.loop_ema(ref_protos, ref_r, z_loop.detach(), labels,
                             geom.proto_momentum, geom.radius_momentum)

        cases = []
        if compiled:
            mode = 'reduce-overhead' if self.cuda else 'default'
            cases.append(('geometry@compiled',
                          make_step(
                              torch.compile(loss_forward, mode=mode),
                              torch.compile(geom.ema_update, mode=mode))[0]))
        else:
            cases.append(('geometry@eager',
                          make_step(loss_forward, geom.ema_update)[0]))
            cases.append(('geometry@loop', loop_step))
            if self.cuda:
                cases.append(('geometry@cuda_graph',
                              self._graph_geometry(
                                  make_step(loss_forward,
                                            geom.ema_update)[0])))
        for name, fn in cases:
            geom.load_state_dict(state)
            try:
                warmup = max(3, self.args.warmup // 2)
                repeats = max(3, self.args.iters)
                start = time.perf_counter()
                fn()
                self.sync()
                first_s = time.perf_counter() - start
                ms = helpers.timeit(fn, device, repeats, warmup)
            except Exception as exc:
                self.record(name, error=_error(exc))
                continue
            row = dict(ms=ms, per_s=b / ms * 1e3, unit='latents/s', batch=b,
                       num_classes=k, latent_dim=d)
            if compiled:
                row['first_call_s'] = first_s
            self.record(name, **row)
        geom.load_state_dict(state)

    def _graph_geometry(self, step):
        """Capture ``step`` (losses fwd+bwd + EMA) as one CUDA graph."""
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(3):
                step()
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        return graph.replay

    # ------------------------------------------------------------------
    # driver
    # ------------------------------------------------------------------
    def selected(self):
        known = (
            list(TRAIN_BENCHES) + list(OTHER_BENCHES) + list(COMPILE_BENCHES))
        if self.args.only:
            names = [n.strip() for n in self.args.only.split(',') if n]
            unknown = [n for n in names if n not in known]
            if unknown:
                raise ValueError(f'--only: unknown benchmark(s) {unknown}; '
                                 f'known: {known}.')
            return names
        if self.distributed:
            return list(DIST_DEFAULT)
        names = list(TRAIN_BENCHES) + list(OTHER_BENCHES)
        if not self.cuda:  # the CUDA-graph variants need CUDA
            names = [n for n in names if not n.endswith('_graph')]
        if self.args.compile:
            names += list(COMPILE_BENCHES)
        return names

    def run(self):
        for name in self.selected():
            try:
                if name in TRAIN_BENCHES:
                    self.bench_train(name)
                elif name == 'stage2_cached_compiled':
                    self.bench_compiled_stage2()
                elif name == 'geometry_compiled':
                    self.bench_geometry(compiled=True)
                else:
                    getattr(self, f'bench_{name}')()
            except Exception as exc:  # report it, run the others
                self.record(name, error=_error(exc))
                if self.rank == 0:
                    traceback.print_exc()
        return self.results


def _error(exc: BaseException) -> str:
    return f'{type(exc).__name__}: {exc}'.strip()[:2000]


def _ratio(results, num, den):
    a, b = results.get(num, {}), results.get(den, {})
    if a.get('ms') is None or b.get('ms') is None:
        return None
    return a['ms'] / b['ms']


def compute_targets(results, scaling=None):
    """The targets of the performance issue, from the measured rows."""
    rows = []

    def add(name, value, op, threshold, detail):
        if value is None:
            return
        met = value <= threshold if op == '<=' else (
            value >= threshold if op == '>=' else value < threshold)
        rows.append(
            dict(name=name, value=value, op=op, threshold=threshold,
                 met=bool(met), detail=detail))

    add('stage1 / baseline', _ratio(results, 'stage1', 'baseline'), '<=',
        1.03, 'iteration time ratio')
    add('stage1 / baseline_ls', _ratio(results, 'stage1', 'baseline_ls'),
        '<=', 1.03, 'same head loss (LabelSmoothLoss) on both sides')
    add('stage1_sf / baseline', _ratio(results, 'stage1_sf', 'baseline'),
        '<=', 1.03, 'sync-free label smoothing (LabelSmoothCELoss)')
    for suffix in ('', '_graph', '_graph_sf'):
        add(f'stage3_hybrid{suffix} / baseline',
            _ratio(results, f'stage3_hybrid{suffix}', 'baseline'), '<=', 1.3,
            'iteration time ratio')
        add(f'stage3_hybrid{suffix} / stage3_stable_cached{suffix}',
            _ratio(results, f'stage3_hybrid{suffix}',
                   f'stage3_stable_cached{suffix}'), '>=', 20,
            'speed-up of stable on cached latents')
    add('stage2_images / stage2_cached',
        _ratio(results, 'stage2_images', 'stage2_cached'), '>=', 20,
        'epoch speed-up of cached latents (same batch)')
    add('stage2_images / stage2_cached_fused',
        _ratio(results, 'stage2_images', 'stage2_cached_fused'), '>=', 20,
        'epoch speed-up, fused AdamW')
    add('stage2_images / stage2_cached_compiled',
        _ratio(results, 'stage2_images', 'stage2_cached_compiled'), '>=', 20,
        'epoch speed-up, compiled stage-2 step')
    for variant in ('eager', 'cuda_graph', 'compiled'):
        row = results.get(f'geometry@{variant}', {})
        add(f'geometry@{variant} ms', row.get('ms'), '<', 1.0,
            'losses fwd+bwd + EMA, B=256 K=1000 D=2048')
    for dim in (64, 2048, 16):
        prefix = f'sampler_d{dim}@'
        anc = [n for n in results if n.startswith(prefix + 'ancestral')]
        for variant in ('ddim_25', 'ddim_25_graph'):
            if anc:
                add(f'{anc[0]} / {prefix}{variant}',
                    _ratio(results, anc[0], prefix + variant), '>=', 30,
                    'sampler speed-up, 256 latents')
    for name, value in (scaling or {}).items():
        add(f'{name} scaling 1->N GPUs', value, '>=', 1.8,
            'aggregate images/s ratio')
    return rows


def scaling_from(reference_path, results, world_size):
    with open(reference_path) as f:
        ref = json.load(f)['results']
    out = {}
    for name, row in results.items():
        base = ref.get(name, {})
        if row.get('per_s') and base.get('per_s'):
            out[f'{name} ({world_size} GPUs)'] = row['per_s'] / base['per_s']
    return out


def machine_info(device):
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


def command_line(argv, world_size):
    args = ' '.join(shlex.quote(a) for a in argv)
    script = osp.relpath(osp.abspath(__file__), ROOT)
    if world_size > 1:
        return (f'torchrun --nproc_per_node {world_size} {script} {args}')
    return f'python {script} {args}'


def print_table(result):
    meta = result['meta']
    print('\n' + '=' * 78)
    print(f"GPU/CPU: {meta['machine']} x{meta['world_size']} | torch "
          f"{meta['torch']} | mmpretrain {meta['mmpretrain']} | amp "
          f"{meta['amp']} | channels_last {meta['channels_last']}")
    print(f"command: {meta['command']}")
    print(f"{'benchmark':40s} {'ms/iter':>9s} {'per s':>10s} "
          f"{'peak MiB':>9s} {'syncs':>5s}")
    print('-' * 78)
    for name, row in result['results'].items():
        if row.get('ms') is None:
            print(f"{name:40s} ERROR {row.get('error', '')[:60]}")
            continue
        mem = row.get('peak_mem_mib')
        syncs = row.get('syncs_per_step')
        print(f"{name:40s} {row['ms']:9.3f} {row['per_s']:10.1f} "
              f"{'-' if mem is None else f'{mem:9.0f}':>9s} "
              f"{'-' if syncs is None else syncs:>5}")
    if result['targets']:
        print('-' * 78)
        for t in result['targets']:
            mark = 'MET ' if t['met'] else 'MISS'
            print(f"[{mark}] {t['name']:50s} {t['value']:8.3f} "
                  f"{t['op']} {t['threshold']}")
    print('=' * 78)


def init_distributed(args):
    if args.launcher != 'pytorch':
        return
    backend = 'nccl' if args.device == 'cuda' else 'gloo'
    if args.device == 'cuda':
        torch.cuda.set_device(int(os.environ.get('LOCAL_RANK', 0)))
    # galddc_mm's start: the group is ended at exit with its worker threads
    # joined (galddc_mm/engine/runner/process_group.py).
    init_process_group('pytorch', backend=backend)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    init_distributed(args)
    init_default_scope('mmpretrain')
    # Quiet mmengine's per-parameter init reports of every model built.
    if not MMLogger.check_instance_created('galddc_benchmark'):
        MMLogger.get_instance('galddc_benchmark', log_level='WARNING')
    torch.manual_seed(args.seed)
    if args.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    bench = Benchmark(args)
    if bench.rank == 0:
        print(f'machine: {machine_info(bench.device)}, torch '
              f'{torch.__version__}, world size {bench.world_size}')
        print('command: ' + command_line(argv, bench.world_size), flush=True)
    results = bench.run()
    scaling = None
    if args.scaling_ref and bench.distributed:
        scaling = scaling_from(args.scaling_ref, results, bench.world_size)
    import mmengine
    import mmpretrain
    result = dict(
        meta=dict(
            machine=machine_info(bench.device),
            device=bench.device.type,
            world_size=bench.world_size,
            torch=torch.__version__,
            cuda=torch.version.cuda,
            mmpretrain=mmpretrain.__version__,
            mmengine=mmengine.__version__,
            python=platform.python_version(),
            command=command_line(argv, bench.world_size),
            batch_size=bench.batch_size,
            sampler_batch=bench.sampler_batch,
            img_size=bench.img_size,
            num_classes=bench.num_classes,
            latent_dim=bench.latent_dim,
            amp=bench.amp,
            loss_scale=bench.loss_scale,
            channels_last=bench.channels_last,
            cudnn_benchmark=bool(args.cudnn_benchmark),
            iters=args.iters,
            warmup=args.warmup,
            tiny=bool(args.tiny),
            data=args.dataset or 'synthetic in-memory tensors'),
        results=results,
        targets=compute_targets(results, scaling),
        scaling=scaling,
        profiles=bench.profiles)
    if bench.rank == 0:
        print_table(result)
        if args.out:
            os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
            with open(args.out, 'w') as f:
                json.dump(result, f, indent=2)
            print(f'written to {args.out}')
    if bench.distributed:
        torch_dist.barrier()
        # Free the benchmark's DDP models, then the group and its threads.
        del bench
        shutdown_process_group()
    return result


if __name__ == '__main__':
    main()
