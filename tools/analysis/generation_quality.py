# Copyright (c) galddc_mm contributors. All rights reserved.
r"""The generation report of a GALD-DC checkpoint, with a figure.

The numbers of ``GenerationReportHook`` (the settings of the config's hook,
so a run's ``generation_report.json`` is reproduced), computed for any
checkpoint from stage 2 on, with the real latents of the whole training set
(E^(0)(x), test pipeline): radius reached (``/ r_real``, ``/ r_cal``),
diagonal Fréchet distance, precision/recall on k-NN manifolds per band,
memorisation of tail classes, G's accuracy on the generated latents, and
the gate's verdict. Writes ``<out>.json`` and a figure:

- top: per class, sorted by training count, the generated radius over the
  real and over the calibrated radius (1 = reached), with the gate's range;
- bottom left: precision and recall per band;
- bottom right: per tail class, the distance of generated latents to the
  nearest real one, in class radii (below 0.1: memorised).

Examples::

    python tools/analysis/generation_quality.py CONFIG CHECKPOINT
    python tools/analysis/generation_quality.py work_dirs/r20_digitslt \\
        --out docs/figures/generation_quality.png
"""
import argparse
import json
import os
import os.path as osp
import time

import numpy as np
import torch
from analysis_utils import (
    add_output_args,
    class_order_by_count,
    extract_real_latents,
    load_model,
    resolve_run,
    save_figure,
)

from galddc_mm.datasets.long_tail import BANDS


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Measure what a GALD-DC checkpoint generates against '
        'the real latents, per class and per band.')
    parser.add_argument('source', help='a config (then CHECKPOINT) or the '
                        'work dir of a run (its last checkpoint)')
    parser.add_argument('checkpoint', nargs='?', help='checkpoint to load')
    parser.add_argument(
        '--checkpoint-kind', choices=['last', 'best'], default='last',
        help='with a work dir: which checkpoint (default: last)')
    parser.add_argument(
        '--device',
        default='cuda' if torch.cuda.is_available() else 'cpu',
        help='where to sample and measure (default: cuda if available)')
    parser.add_argument(
        '--num-per-class', type=int, help='override the hook\'s number of '
        'generated latents per class')
    add_output_args(parser, 'generation_quality.png')
    return parser.parse_args(argv)


def build_hook(cfg, num_per_class=None):
    """The config's GenerationReportHook (defaults if it has none)."""
    from mmpretrain.registry import HOOKS
    hook_cfg = next((dict(h) for h in cfg.get('custom_hooks', [])
                     if h.get('type') == 'GenerationReportHook'),
                    dict(type='GenerationReportHook'))
    if num_per_class is not None:
        hook_cfg['num_per_class'] = num_per_class
    return HOOKS.build(hook_cfg)


def plot(report: dict, radius_range, out: str, args) -> list:
    import matplotlib.pyplot as plt

    rows = report['per_class']
    order = class_order_by_count([r['train_count'] for r in rows])
    rows = [rows[i] for i in order]
    fig = plt.figure(figsize=(11, 7))
    top = fig.add_subplot(2, 1, 1)
    x = np.arange(len(rows))
    for key, label, marker in (('radius_to_real', 'gen / r_real', 'o'),
                               ('radius_to_cal', 'gen / r_cal', 's')):
        y = [np.nan if r[key] is None else r[key] for r in rows]
        top.plot(x, y, marker, label=label, alpha=0.8)
    top.axhline(1.0, color='k', lw=0.8)
    for bound in radius_range:
        top.axhline(bound, color='r', ls='--', lw=0.8)
    top.set_yscale('log')
    top.set_xlabel('classes, sorted by training count (largest first)')
    top.set_ylabel('generated radius ratio')
    top.set_title(f'Generation report: {report["num_per_class"]} latents '
                  'per class; red: the gate\'s range')
    top.legend(loc='best')

    left = fig.add_subplot(2, 2, 3)
    groups = [g for g in BANDS + ('head', 'tail') if g in report['summary']]
    width = 0.38
    for i, key in enumerate(('precision', 'recall')):
        vals = [report['summary'][g].get(key) for g in groups]
        vals = [np.nan if v is None else v for v in vals]
        left.bar(np.arange(len(groups)) + (i - 0.5) * width, vals, width,
                 label=key)
    left.set_xticks(np.arange(len(groups)), groups)
    left.set_ylim(0, 1.05)
    left.set_title(f'k-NN precision / recall (k={report["pr_k"]})')
    left.legend(loc='best')

    right = fig.add_subplot(2, 2, 4)
    tail = [r for r in rows if r['nn_real_rel'] is not None]
    if tail:
        right.bar(np.arange(len(tail)), [r['nn_real_rel'] for r in tail])
        right.set_xticks(np.arange(len(tail)),
                         [str(r['cls']) for r in tail], fontsize=7)
    right.axhline(report['memorised_below'], color='r', ls='--', lw=0.8)
    right.set_title('tail: distance to nearest real latent / r_real')
    right.set_xlabel('tail class')
    fig.tight_layout()
    return save_figure(fig, out, args.format, args.dpi, args.tensorboard,
                       tag='generation_quality')


def main(argv=None):
    args = parse_args(argv)
    config, checkpoint, _ = resolve_run(args.source, args.checkpoint,
                                        args.checkpoint_kind)
    model, cfg = load_model(config, checkpoint, args.device)
    hook = build_hook(cfg, args.num_per_class)
    real, labels = extract_real_latents(model, cfg)
    start = time.perf_counter()
    report = hook.compute(model, real.to(args.device),
                          labels.to(args.device))
    if args.device.startswith('cuda'):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    report.update(checkpoint=checkpoint, seconds=seconds)
    stem = osp.splitext(args.out)[0]
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    with open(f'{stem}.json', 'w') as f:
        json.dump(report, f, indent=2)
    paths = plot(report, hook.radius_range, args.out, args)
    print(hook._table(report, f'{stem}.json', partial=False))
    verdict = report['gate']
    print('gate: ' + ('passed' if verdict['passed'] else
                      'FAILED: ' + '; '.join(verdict['problems'])))
    print(f'report computed in {seconds:.2f}s on {args.device}; written: '
          + ', '.join([f'{stem}.json'] + paths))
    return report


if __name__ == '__main__':
    main()
