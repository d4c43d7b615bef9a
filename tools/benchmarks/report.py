# Copyright (c) galddc_mm contributors. All rights reserved.
"""From the measured rows to the report: targets, scaling and the table.

:func:`compute_targets` checks the rows against the targets of the
performance issue, :func:`scaling_from` compares a multi-GPU run with a
1-process one, :func:`print_table` prints the summary of
``tools/benchmark.py``.
"""
import json


def _ratio(results, num, den, with_bank=False):
    a, b = results.get(num, {}), results.get(den, {})
    if a.get('ms') is None or b.get('ms') is None:
        return None
    if with_bank:
        return ((a['ms'] + a.get('bank_ms_per_step', 0)) /
                (b['ms'] + b.get('bank_ms_per_step', 0)))
    return a['ms'] / b['ms']


def compute_targets(results, scaling=None, profiles=None):
    """The targets of the performance issues, from the measured rows.

    ``profiles`` (``--profile``) adds the wall time of a step over its
    summed kernel time.
    """
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
    # The pseudo-latent bank: per-step sampling moved to the epoch start;
    # '+bank' charges each step its share of the bank's time.
    # '_compiled': E^(0) folded + compiled and the bank's denoiser compiled.
    for suffix in ('', '_compiled'):
        hybrid = f'stage3_hybrid_bank_sf{suffix}'
        add(f'{hybrid} / baseline', _ratio(results, hybrid, 'baseline'),
            '<=', 1.3, 'iteration time ratio, bank drawn at the epoch start')
        add(f'{hybrid} (+bank) / baseline',
            _ratio(results, hybrid, 'baseline', with_bank=True), '<=', 1.3,
            'iteration time ratio, the bank\'s time shared out per step')
        for name in (f'stage3_stable_cached_bank_sf{suffix}',
                     f'stage3_stable_cached_bank_graphstep_sf{suffix}'):
            add(f'{hybrid} / {name}', _ratio(results, hybrid, name), '>=',
                20, 'speed-up of stable on cached latents')
            add(f'{hybrid} (+bank) / {name} (+bank)',
                _ratio(results, hybrid, name, with_bank=True), '>=', 20,
                'speed-up of stable on cached latents, bank time included')
    for name, profile in (profiles or {}).items():
        kernels = profile.get('gpu_kernel_ms_per_step')
        wall = results.get(name, {}).get('ms')
        if name.startswith('stage2') and kernels and wall:
            add(f'{name} wall / kernels', wall / kernels, '<=', 1.3,
                'step time over its summed GPU kernel time')
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
    """Throughput of each row over the same row of a 1-process JSON."""
    with open(reference_path) as f:
        ref = json.load(f)['results']
    out = {}
    for name, row in results.items():
        base = ref.get(name, {})
        if row.get('per_s') and base.get('per_s'):
            out[f'{name} ({world_size} GPUs)'] = row['per_s'] / base['per_s']
    return out


def print_table(result):
    """The summary of a run: one line per row, then the targets."""
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
