# Copyright (c) galddc_mm contributors. All rights reserved.
"""tools/analysis/mechanism_table.py on hand-written testbed runs."""
import json
import os
import os.path as osp
import sys

import pytest
from conftest import REPO_ROOT

sys.path.insert(0, osp.join(REPO_ROOT, 'tools', 'analysis'))

import mechanism_table  # noqa: E402

# row -> seed -> (tail radius error, tail recall, test top-1)
RUNS = {
    'ldmlr': {0: (0.30, 0.10, 50.0), 1: (0.20, 0.20, 52.0)},
    'galddc': {0: (0.10, 0.40, 51.0), 1: (0.25, 0.10, 51.0)},
}


def _write(root):
    for row, seeds in RUNS.items():
        for seed, (err, recall, top1) in seeds.items():
            run = osp.join(root, row, f'seed{seed}')
            os.makedirs(osp.join(run, '20260101_000000'))
            band = dict(radius_error=err, recall=recall, precision=0.5,
                        radius_to_true=1 + err)
            with open(osp.join(run, 'known_answer.json'), 'w') as f:
                json.dump(
                    dict(summary=dict(head=band, tail=band, all=band),
                         per_class=[
                             dict(cls=0, train_count=10,
                                  radius_to_true=1 + err),
                             dict(cls=1, train_count=2,
                                  radius_to_true=1 - err)
                         ]), f)
            with open(osp.join(run, '20260101_000000',
                               'final_metrics.json'), 'w') as f:
                json.dump(dict(metrics=dict(test={'accuracy/top1': top1})),
                          f)


def test_table_and_paired_differences(tmp_path):
    root = str(tmp_path)
    _write(root)
    table = mechanism_table.collect(root, ['ldmlr', 'galddc'])
    summary = {r['name']: r['metrics'] for r in
               mechanism_table.summarise(table)}
    # Mean and sample std (ddof=1) by hand: (0.1, 0.25) -> 0.175, 0.10607.
    err = summary['galddc']['tail/radius_error']
    assert err['mean'] == pytest.approx(0.175)
    assert err['std'] == pytest.approx(0.15 / 2**0.5)
    pairs = mechanism_table.paired(table, 'ldmlr')[0]['metrics']
    # Differences galddc - ldmlr per seed: error (-0.2, +0.05): better in 1
    # of 2 (lower is better); recall (+0.3, -0.1): 1 of 2; top-1 (+1, -1).
    assert pairs['tail/radius_error']['diffs'] == pytest.approx([-0.2, 0.05])
    assert pairs['tail/radius_error']['better'] == 1
    assert pairs['tail/recall']['diffs'] == pytest.approx([0.3, -0.1])
    assert pairs['tail/recall']['better'] == 1
    assert pairs['test/top1']['mean'] == pytest.approx(0.0)
    assert pairs['test/top1']['better'] == 1


def test_cli_writes_table_json_and_plot(tmp_path):
    root = str(tmp_path / 'runs')
    _write(root)
    out = str(tmp_path / 'table.md')
    png = str(tmp_path / 'radius.png')
    assert mechanism_table.main([
        root, '--against', 'ldmlr', '--out', out, '--plot', png,
        '--plot-rows', 'ldmlr', 'galddc'
    ]) == 0
    text = open(out).read()
    assert '| galddc | 2 | 0.175 ± 0.106 |' in text
    assert '-0.075 ± 0.177 (1/2)' in text  # paired tail radius error
    with open(osp.splitext(out)[0] + '.json') as f:
        assert set(json.load(f)['runs']) == {'galddc', 'ldmlr'}
    assert osp.getsize(png) > 1000


def test_no_runs_is_an_error(tmp_path, capsys):
    assert mechanism_table.main([str(tmp_path)]) == 1
    assert 'No finished testbed runs' in capsys.readouterr().err
