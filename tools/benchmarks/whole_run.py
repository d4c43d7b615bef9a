# Copyright (c) galddc_mm contributors. All rights reserved.
"""Images per second of each stage of finished runs, data loading included.

Users feel epochs, not steps. This reads what ``tools/train.py`` logged
(``vis_data/scalars.json``: per logging window the mean iteration time
``time`` and the part of it spent waiting for data, ``data_time``) and the
run's config, and prints per stage:

* ``img/s``: images (or cached latents) per second of wall time, the batch
  size over the mean ``time`` (rank 0's view; x world size for the job);
* ``data %``: the share of that time spent waiting for the loader: near
  0 the GPU (or the step) is the limit, near 100 the CPU pipeline is;
* the latent-cache extraction's images/s, from the log line the loop writes
  when it builds the cache.

The first logging window of every stage is left out (worker start-up,
cuDNN autotuning); log often enough (``--cfg-options
default_hooks.logger.interval=20``) that each stage has several windows.
A run of a plain MMPretrain config (the CE baseline) is one stage.

Example::

    python tools/benchmarks/whole_run.py work_dirs/ce work_dirs/galddc \\
        --labels CE GALD-DC --out whole_run.json
"""
import argparse
import json
import os.path as osp
import re
import sys
from typing import Dict, List, Optional

import numpy as np

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from galddc_mm.utils import WorkDir  # noqa: E402

_EXTRACTION = re.compile(
    r'Latent cache: (\d+) latents of dim \d+ extracted in ([\d.]+)s '
    r'\(([\d.]+) img/s on this rank\)')


def stage_layout(cfg) -> List[Dict]:
    """``[{name, first_epoch, last_epoch, batch_size}]`` (1-based epochs)."""
    train_cfg = cfg.get('train_cfg') or {}
    image_batch = cfg['train_dataloader']['batch_size']
    if train_cfg.get('type') != 'GALDDCTrainLoop':
        return [dict(name='train', first=1, last=train_cfg['max_epochs'],
                     batch_size=image_batch)]
    layout, begin = [], 0
    for stage in train_cfg['stages']:
        epochs = stage['epochs']
        if epochs:
            name = stage['name']
            if stage.get('mode'):
                name += f" ({stage['mode']})"
            cached = stage.get('cache_latents',
                               stage['name'] == 'diffusion')
            if cached:
                name += ', cached latents'
            layout.append(
                dict(name=name, first=begin + 1, last=begin + epochs,
                     batch_size=(stage.get('batch_size') or image_batch)
                     if cached else image_batch))
        begin += epochs
    return layout


def stage_rates(records: List[Dict], layout: List[Dict]) -> List[Dict]:
    """Per stage: windows used, mean ``time`` and ``data_time``, img/s."""
    rows = []
    for stage in layout:
        windows = [
            r for r in records
            if stage['first'] <= r.get('epoch', 0) <= stage['last']
            and 'time' in r
        ][1:]
        row = dict(stage=stage['name'], windows=len(windows),
                   batch_size=stage['batch_size'])
        if windows:
            step = float(np.mean([r['time'] for r in windows]))
            data = float(np.mean([r.get('data_time', 0.0)
                                  for r in windows]))
            row.update(step_s=step, data_s=data,
                       images_per_s=stage['batch_size'] / step,
                       data_share=data / step)
        rows.append(row)
    return rows


def extraction_rates(work_dir: WorkDir) -> List[float]:
    """Images/s of every latent-cache extraction in the runs' logs."""
    rates = []
    for run in work_dir.run_dirs():
        log = osp.join(run, f'{osp.basename(run)}.log')
        if osp.isfile(log):
            with open(log, encoding='utf-8', errors='replace') as f:
                rates += [
                    float(m.group(3)) for m in _EXTRACTION.finditer(f.read())
                ]
    return rates


def measure(path: str) -> Dict:
    """The figures of one work dir."""
    from mmengine.config import Config
    work_dir = WorkDir(path)
    cfg = Config.fromfile(work_dir.config())
    records, _ = work_dir.scalars()
    return dict(work_dir=path,
                stages=stage_rates(records, stage_layout(cfg)),
                extraction_images_per_s=extraction_rates(work_dir),
                num_workers=cfg['train_dataloader'].get('num_workers'))


def format_rows(label: str, result: Dict) -> List[str]:
    lines = []
    for row in result['stages']:
        if 'images_per_s' not in row:
            lines.append(f"| {label} | {row['stage']} | - | - | - | "
                         f"{row['windows']} |")
            continue
        lines.append(
            f"| {label} | {row['stage']} | {row['images_per_s']:,.0f} | "
            f"{row['step_s'] * 1e3:.1f} | {row['data_share'] * 100:.0f} | "
            f"{row['windows']} |")
    for rate in result['extraction_images_per_s']:
        lines.append(f'| {label} | latent-cache extraction | {rate:,.0f} '
                     '| - | - | - |')
    return lines


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Images/s of each stage of finished runs, data '
        'loading included.')
    parser.add_argument('work_dirs', nargs='+')
    parser.add_argument('--labels', nargs='+',
                        help='row names (default: the work dirs)')
    parser.add_argument('--out', help='also write the figures as JSON')
    args = parser.parse_args(argv)
    if args.labels and len(args.labels) != len(args.work_dirs):
        parser.error('--labels needs one name per work dir.')
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    labels = args.labels or args.work_dirs
    results = {label: measure(path)
               for label, path in zip(labels, args.work_dirs)}
    print('| run | stage | img/s | step ms | data % | windows |')
    print('|---|---|---|---|---|---|')
    for label, result in results.items():
        print('\n'.join(format_rows(label, result)))
    if args.out:
        with open(args.out, 'w', encoding='utf-8') as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
