# Copyright (c) galddc_mm contributors. All rights reserved.
"""Decoding benchmark: cv2 in the workers vs nvJPEG on the device.

Images per second of the ImageNet-LT training input, through real
DataLoaders with ``--workers`` workers, for

* ``cpu_train``: the CPU pipeline of ``configs/_base_/datasets/
  imagenet_lt.py`` (cv2 decode, RandomResizedCrop 224, flip, PackInputs)
  + ``ClsDataPreprocessor`` on the device;
* ``gpu_train``: the bytes pipeline of ``imagenet_lt_gpu_decode.py``
  (LoadImageBytes, PackImageBytes, ``encoded_collate``: one buffer per
  batch, decoded in the pin-memory thread on CUDA) +
  ``GPUDecodeClsDataPreprocessor`` (crop and flip of the whole batch);
* ``gpu_train_list``: the first version of that path, kept to compare:
  ``pseudo_collate`` (one tensor per file), decoding in the preprocessor
  between batches, and a crop resized image by image;
* ``cpu_eval`` / ``gpu_eval``: the same for evaluation and the latent
  extraction (ResizeEdge 256 + CenterCrop 224; the preprocessor's eval
  mode).

Each row gives the end-to-end rate (loader + preprocessor, the device
synchronised after each batch), the mean wait for the next batch and
the mean preprocessor time per batch, and ``pp_img_s``: the
preprocessor alone on one batch held in memory, i.e. what the device
path could deliver with infinitely fast workers. Runs on the CPU too
(slowly: use a small ``--iters``)::

    python tools/benchmarks/decode.py --data-root data/imagenet \\
        --list ImageNet_LT_train.txt --workers 16 --batch-size 256 \\
        --iters 50 --out work_dirs/decode.json
"""
import argparse
import gc
import json
import os
import os.path as osp
import statistics
import sys
import time

import torch
import torchvision
from mmengine.config import Config
from mmengine.registry import DefaultScope
from mmengine.runner import Runner
from mmpretrain.registry import MODELS

import galddc_mm  # noqa: F401  (registers the modules)
from galddc_mm.datasets import EncodedImages

# Run as a script, this file sees its own folder on sys.path; the
# package it belongs to is imported from the folder above (tools/).
sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
from benchmarks.common import ROOT, machine_info  # noqa: E402

CPU_CFG = 'configs/_base_/datasets/imagenet_lt.py'
GPU_CFG = 'configs/_base_/datasets/imagenet_lt_gpu_decode.py'
MODES = ('cpu_train', 'gpu_train', 'gpu_train_list', 'cpu_eval', 'gpu_eval')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Images/s of the CPU (cv2) and the GPU (nvJPEG) '
        'decoding paths of the ImageNet-LT training input.')
    parser.add_argument('--data-root', required=True,
                        help='root of the images and the list file')
    parser.add_argument('--list', default='ImageNet_LT_train.txt',
                        help='list file (relative to --data-root): '
                        '"train/<wnid>/<file>.JPEG label" lines')
    parser.add_argument('--workers', type=int, default=16)
    parser.add_argument('--batch-size', type=int, default=256)
    parser.add_argument('--iters', type=int, default=50,
                        help='timed batches per mode')
    parser.add_argument('--warmup', type=int, default=5,
                        help='batches before timing (worker start-up, '
                        'nvJPEG/cuDNN initialisation)')
    parser.add_argument('--modes', default=','.join(MODES),
                        help=f'comma-separated subset of {MODES}')
    parser.add_argument('--device', default=None,
                        help='cuda or cpu (default: cuda if available)')
    parser.add_argument('--collate', choices=('pseudo', 'default'),
                        default='pseudo',
                        help='collate of the CPU pipeline: pseudo (the '
                        'configs\' default, one copy per image) or '
                        'default (stacked on the host, one copy); the '
                        'bytes pipeline uses its config\'s')
    parser.add_argument('--pp-iters', type=int, default=10,
                        help='repeats of the preprocessor-only timing')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--out', default=None, help='write the JSON here')
    return parser.parse_args(argv)


class Bench:
    """One device, the two configs and the rows measured."""

    def __init__(self, args):
        self.args = args
        dev = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
        if dev == 'cuda' and not torch.cuda.is_available():
            raise RuntimeError('--device cuda, but CUDA is not available.')
        self.device = torch.device(dev)
        self.cuda = self.device.type == 'cuda'
        self.cpu_cfg = Config.fromfile(osp.join(ROOT, CPU_CFG))
        self.gpu_cfg = Config.fromfile(osp.join(ROOT, GPU_CFG))
        self.rows = {}

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def build(self, mode):
        """The loader and the preprocessor of ``mode``."""
        gpu, train = mode.startswith('gpu'), 'train' in mode
        listed = mode.endswith('_list')
        cfg = self.gpu_cfg if gpu else self.cpu_cfg
        pipeline = cfg.train_pipeline if train else cfg.test_pipeline
        if gpu and not train:
            pipeline = cfg.train_pipeline  # bytes; eval in the preprocessor
        loader_cfg = dict(
            batch_size=self.args.batch_size,
            num_workers=self.args.workers,
            persistent_workers=self.args.workers > 0,
            pin_memory=self.cuda,
            drop_last=True,
            sampler=dict(type='DefaultSampler', shuffle=True),
            dataset=dict(
                type='ImageNetLT',
                data_root=self.args.data_root,
                split='train',
                ann_file=self.args.list,
                pipeline=[dict(t) for t in pipeline]))
        if gpu:
            loader_cfg['collate_fn'] = dict(
                type='pseudo_collate') if listed else dict(
                    cfg.train_dataloader.collate_fn)
        elif self.args.collate == 'default':
            loader_cfg['collate_fn'] = dict(type='default_collate')
        with DefaultScope.overwrite_default_scope('mmpretrain'):
            loader = Runner.build_dataloader(loader_cfg, seed=self.args.seed)
        pp_cfg = cfg.data_preprocessor.to_dict()
        pp_cfg.setdefault('type', 'ClsDataPreprocessor')
        if listed:
            pp_cfg['batched'] = False
        pp = MODELS.build(pp_cfg).to(self.device)
        return loader, pp, train

    def run(self, mode):
        args = self.args
        loader, pp, train = self.build(mode)
        if len(loader) == 0:
            raise ValueError(f'{args.list} has fewer images than one batch '
                             f'({args.batch_size}).')

        def batches(loader):
            while True:  # cycle: small test sets, long runs
                yield from loader

        it = batches(loader)
        with torch.no_grad():
            for _ in range(args.warmup):
                pp(next(it), train)
            self.sync()
            waits, steps = [], []
            start = time.perf_counter()
            for _ in range(args.iters):
                t0 = time.perf_counter()
                batch = next(it)
                t1 = time.perf_counter()
                out = pp(batch, train)
                self.sync()
                waits.append(t1 - t0)
                steps.append(time.perf_counter() - t1)
            elapsed = time.perf_counter() - start
            shape = tuple(out['inputs'].shape)
            # The preprocessor alone, on one batch held in memory (labels
            # are moved to the device in place: fresh samples each time).
            batch = next(it)
            pp_times = []
            inputs = batch['inputs']
            for _ in range(args.pp_iters + 1):
                if isinstance(inputs, EncodedImages):  # decode each time
                    inputs = EncodedImages(inputs.data, inputs.lengths,
                                           inputs.names)
                copy = dict(inputs=inputs,
                            data_samples=[s.clone()
                                          for s in batch['data_samples']])
                self.sync()
                t0 = time.perf_counter()
                pp(copy, train)
                self.sync()
                pp_times.append(time.perf_counter() - t0)
            pp_s = statistics.median(pp_times[1:])
        del it, loader
        gc.collect()
        n = args.batch_size
        # Means, not medians: with a slow loader most batches are ready
        # (prefetched) and a few wait long, which medians hide.
        row = dict(
            img_s=n * args.iters / elapsed,
            wait_ms=1e3 * statistics.mean(waits),
            preprocess_ms=1e3 * statistics.mean(steps),
            pp_img_s=n / pp_s,
            output_shape=list(shape))
        self.rows[mode] = row
        print(f'[{mode}] {row["img_s"]:.0f} img/s', flush=True)
        return row

    def table(self):
        lines = [
            f'{"mode":<10} {"img/s":>9} {"wait ms":>9} {"prep ms":>9} '
            f'{"prep-only img/s":>16}'
        ]
        for mode, r in self.rows.items():
            if 'error' in r:
                lines.append(f'{mode:<10} error: {r["error"]}')
                continue
            lines.append(
                f'{mode:<10} {r["img_s"]:>9.0f} {r["wait_ms"]:>9.1f} '
                f'{r["preprocess_ms"]:>9.1f} {r["pp_img_s"]:>16.0f}')
        return '\n'.join(lines)


def main(argv=None):
    args = parse_args(argv)
    modes = [m.strip() for m in args.modes.split(',') if m.strip()]
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        raise SystemExit(f'Unknown modes {unknown}; choose from {MODES}.')
    torch.manual_seed(args.seed)
    bench = Bench(args)
    for mode in modes:
        try:
            bench.run(mode)
        except Exception as exc:  # one failing mode keeps the others
            if len(modes) == 1:
                raise
            bench.rows[mode] = dict(
                error=f'{type(exc).__name__}: {exc}'.strip()[:2000])
            print(f'[{mode}] failed: {bench.rows[mode]["error"]}',
                  flush=True)
    info = dict(
        machine=machine_info(bench.device),
        device=str(bench.device),
        cpu_count=os.cpu_count(),
        torch=torch.__version__,
        torchvision=torchvision.__version__,
        args=vars(args),
        results=bench.rows)
    print(f'\n{info["machine"]} ({bench.device}), {args.workers} workers, '
          f'batch {args.batch_size}, {args.iters} timed batches')
    print(bench.table())
    if args.out:
        os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
        with open(args.out, 'w') as f:
            json.dump(info, f, indent=2)
        print(f'Written to {args.out}')
    return info


if __name__ == '__main__':
    main()
