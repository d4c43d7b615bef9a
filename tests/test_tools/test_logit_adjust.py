# Copyright (c) galddc_mm contributors. All rights reserved.
"""tools/analysis/logit_adjust.py: choose tau on val, report test.

Offline on hand-made predictions (checked against a NumPy argmax of
``log p - tau * log prior``), and end to end on a short CE run on DigitsLT
(against ``tools/test.py`` with and without ``logit_adjust_tau``).
"""
import json
import os.path as osp
import sys

import numpy as np
import pytest
import torch
from conftest import DIGITS_CONFIG, REPO_ROOT, run_tool

from galddc_mm.utils import WorkDir

sys.path.insert(0, osp.join(REPO_ROOT, 'tools', 'analysis'))

import logit_adjust  # noqa: E402

# ---------------------------------------------------------------------------
# Hand-made predictions: 3 classes with training counts [100, 10, 1]
# (LongTailAccuracy's bands: class 0 medium, classes 1 and 2 few-shot;
# head/tail at tau=5: classes 0, 1 head, class 2 tail), two val samples per
# class.
# ---------------------------------------------------------------------------
COUNTS = [100, 10, 1]
META = dict(class_counts=COUNTS, classes=('a', 'b', 'c'))
SCORES = np.array(
    [
        [0.90, 0.08, 0.02],  # gt 0
        [0.70, 0.25, 0.05],  # gt 0
        [0.50, 0.45, 0.05],  # gt 1
        [0.60, 0.35, 0.05],  # gt 1
        [0.50, 0.30, 0.20],  # gt 2
        [0.85, 0.10, 0.05],  # gt 2
    ],
    dtype=np.float32)
LABELS = np.array([0, 0, 1, 1, 2, 2])
EVALUATOR = dict(type='LongTailAccuracy', topk=(1, 2), tau=5)
TAUS = [0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0]


def predictions():
    return dict(
        pred_score=torch.from_numpy(SCORES), gt_label=torch.from_numpy(LABELS))


def reference(tau):
    """Top-1, top-2 and per-class top-1 (percent) by NumPy."""
    log_prior = np.log(np.asarray(COUNTS, float) / sum(COUNTS))
    adjusted = np.log(SCORES.astype(np.float64)) - tau * log_prior
    order = np.argsort(-adjusted, axis=1, kind='stable')
    top1 = order[:, 0] == LABELS
    top2 = (order[:, :2] == LABELS[:, None]).any(1)
    per_class = np.array([top1[LABELS == c].mean() for c in range(3)]) * 100
    return top1.mean() * 100, top2.mean() * 100, per_class


def test_reference_by_hand():
    # The NumPy reference itself, predicted labels worked out by hand:
    # log prior = log([100, 10, 1] / 111) = [-0.104, -2.408, -4.710].
    # tau=0: everything is class 0 (2/6). tau=0.25: [0 0 1 1 2 0] (5/6).
    # tau=0.5: [0 1 1 1 2 0] (4/6). tau=0.75: [0 2 1 1 2 2] (5/6).
    # tau>=1: everything is class 2 (2/6).
    top1 = [reference(t)[0] for t in TAUS]
    np.testing.assert_allclose(
        top1, np.array([2, 5, 4, 5, 2, 2, 2]) / 6 * 100)


def test_evaluate_taus_matches_numpy():
    results = logit_adjust.evaluate_taus(predictions(), META, EVALUATOR,
                                         TAUS)
    assert len(results) == len(TAUS)
    for tau, metrics in zip(TAUS, results):
        top1, top2, per_class = reference(tau)
        # Keys as mmengine's evaluator (and final_metrics.json) give them;
        # top-5 would be skipped (K=3), no class has > 100 images (no
        # 'many').
        assert set(metrics) == {
            'accuracy/top1', 'accuracy/top2', 'accuracy/medium',
            'accuracy/few', 'accuracy/head', 'accuracy/tail',
            'accuracy/mean_class'
        }
        assert metrics['accuracy/top1'] == pytest.approx(top1), tau
        assert metrics['accuracy/top2'] == pytest.approx(top2), tau
        assert metrics['accuracy/medium'] == pytest.approx(per_class[0])
        assert metrics['accuracy/few'] == pytest.approx(per_class[1:].mean())
        assert metrics['accuracy/head'] == pytest.approx(per_class[:2].mean())
        assert metrics['accuracy/tail'] == pytest.approx(per_class[2])
        assert metrics['accuracy/mean_class'] == pytest.approx(
            per_class.mean())


def test_choose_tau_on_hand_made_predictions():
    results = logit_adjust.evaluate_taus(predictions(), META, EVALUATOR,
                                         TAUS)
    # Top-1: 0.25 and 0.75 tie at 5/6; the smallest wins.
    assert logit_adjust.choose_tau(results, TAUS, 'top1') == 0.25
    assert logit_adjust.choose_tau(results, TAUS, 'accuracy/top1') == 0.25
    # ... whatever the order of the taus.
    order = [6, 3, 0, 5, 1, 4, 2]
    assert logit_adjust.choose_tau([results[i] for i in order],
                                   [TAUS[i] for i in order], 'top1') == 0.25
    # Few-shot (classes 1 and 2): 0.75 is the only one with 100%.
    assert logit_adjust.choose_tau(results, TAUS, 'few') == 0.75
    assert results[3]['accuracy/few'] == pytest.approx(100)
    # Without the winners, the unadjusted model ties with tau >= 1 at 2/6
    # and beats nothing: tau=0 (smallest) is kept.
    rest = [0, 4, 5, 6]
    assert logit_adjust.choose_tau([results[i] for i in rest],
                                   [TAUS[i] for i in rest], 'top1') == 0.0


def test_choose_tau_ties_and_errors():
    metrics = [{'accuracy/top1': v} for v in (50.0, 60.0, 60.0, 55.0)]
    assert logit_adjust.choose_tau(metrics, [0, 1, 2, 3]) == 1
    assert logit_adjust.choose_tau(metrics[::-1], [3, 2, 1, 0]) == 1
    # Equal up to rounding counts as a tie.
    close = [{'accuracy/top1': 60.0}, {'accuracy/top1': 60.0 - 1e-12}]
    assert logit_adjust.choose_tau(close[::-1], [0.5, 1.0]) == 0.5
    with pytest.raises(KeyError, match="No metric 'many'"):
        logit_adjust.choose_tau(metrics, [0, 1, 2, 3], 'many')
    with pytest.raises(ValueError, match='empty'):
        logit_adjust.choose_tau([], [])
    with pytest.raises(ValueError, match='4 taus but 3'):
        logit_adjust.choose_tau(metrics[:3], [0, 1, 2, 3])


def test_tau_validation():
    assert logit_adjust.check_taus([1, 0.5, 1]) == [0.0, 0.5, 1.0]
    assert logit_adjust.check_taus([0]) == [0.0]
    assert logit_adjust.DEFAULT_TAUS == (0, 0.25, 0.5, 0.75, 1, 1.25, 1.5,
                                         1.75, 2)
    with pytest.raises(ValueError, match='empty'):
        logit_adjust.check_taus([])
    with pytest.raises(ValueError, match=r'>= 0.*\[-0\.5\]'):
        logit_adjust.check_taus([0, -0.5])
    with pytest.raises(ValueError, match='>= 0'):
        logit_adjust.check_taus([float('nan')])
    with pytest.raises(ValueError, match='empty'):
        logit_adjust.evaluate_taus(predictions(), META, EVALUATOR, [])
    with pytest.raises(ValueError, match='>= 0'):
        logit_adjust.evaluate_taus(predictions(), META, EVALUATOR, [-1])


def test_command_line_errors(tmp_path, capsys):
    work_dir = str(tmp_path)
    args = logit_adjust.parse_args([work_dir])
    assert args.taus == list(logit_adjust.DEFAULT_TAUS)
    assert args.select == 'top1' and args.checkpoint is None
    args = logit_adjust.parse_args([work_dir, '--taus', '1', '0.5'])
    assert args.taus == [0.0, 0.5, 1.0]
    for argv, message in (
        ([work_dir, '--taus', '-1'], '>= 0'),
        ([work_dir, '--taus'], 'expected at least one'),
        ([DIGITS_CONFIG], 'also pass CHECKPOINT'),
        ([DIGITS_CONFIG, 'x.pth'], '--out is required'),
        ([work_dir + '_missing'], 'neither a work dir nor a config'),
    ):
        with pytest.raises(SystemExit):
            logit_adjust.parse_args(argv)
        assert message in capsys.readouterr().err


# ---------------------------------------------------------------------------
# End to end on DigitsLT.
# ---------------------------------------------------------------------------
# 8 epochs: after 1-2 epochs the CE model predicts one class for every
# image and no tau changes its top-1; at 8 (val top-1 ~30%) it is biased to
# the head classes and the adjustment helps.
EPOCHS = 8
CLI_TAUS = ['2', '0.5', '1', '1.5']  # 0 is added, the list sorted


@pytest.fixture(scope='module')
def digits_run(tmp_path_factory):
    root = tmp_path_factory.mktemp('logit_adjust')
    work_dir = str(root / 'ce')
    run_tool([
        'tools/train.py', DIGITS_CONFIG, '--work-dir', work_dir,
        '--cfg-options', f'train_cfg.max_epochs={EPOCHS}',
        f'train_cfg.val_interval={EPOCHS}'
    ])
    proc = run_tool(
        ['tools/analysis/logit_adjust.py', work_dir, '--taus', *CLI_TAUS])
    with open(osp.join(work_dir, 'logit_adjust.json')) as f:
        report = json.load(f)
    wd = WorkDir(work_dir)
    config, ckpt = wd.config(), wd.checkpoint('last')
    tested = {}
    for tau in sorted({0.0, report['chosen_tau']}):
        test_dir = str(root / f'test_tau{tau:g}')
        run_tool([
            'tools/test.py', config, ckpt, '--work-dir', test_dir,
            '--cfg-options', f'test_evaluator.logit_adjust_tau={tau}'
        ])
        tested[tau] = WorkDir(test_dir).final_metrics('test')
    return dict(
        work_dir=work_dir, report=report, stdout=proc.stdout, config=config,
        checkpoint=ckpt, tested=tested, root=root)


def assert_same_metrics(actual, expected):
    assert set(actual) == set(expected)
    for key, value in expected.items():
        assert actual[key] == pytest.approx(value, abs=1e-9), key


def test_report_layout_and_selection(digits_run):
    report = digits_run['report']
    assert report['taus'] == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert report['select'] == 'accuracy/top1'
    assert report['config'] == digits_run['config']
    assert report['checkpoint'] == digits_run['checkpoint']
    assert report['checkpoint'].endswith(f'epoch_{EPOCHS}.pth')
    assert (report['num_val'], report['num_test']) == (200, 400)
    assert len(report['val']) == len(report['taus'])
    # The chosen tau maximises val top-1; every smaller tau is worse.
    chosen = report['chosen_tau']
    assert chosen in report['taus']
    top1 = [m['accuracy/top1'] for m in report['val']]
    index = report['taus'].index(chosen)
    assert top1[index] == max(top1)
    assert all(v < max(top1) for v in top1[:index])
    # The head-biased CE model gains from the adjustment (see EPOCHS).
    assert chosen > 0, top1
    assert 'Chosen tau' in digits_run['stdout']


def test_tau0_equals_the_unadjusted_model(digits_run):
    report = digits_run['report']
    # Val: the last validation of the training run is of the same model.
    final_val = WorkDir(digits_run['work_dir']).final_metrics('val')
    assert_same_metrics(report['val'][0], final_val)
    assert_same_metrics(report['test_at_tau0'], digits_run['tested'][0.0])


def test_test_metrics_equal_tools_test_at_the_chosen_tau(digits_run):
    report = digits_run['report']
    assert_same_metrics(report['test'],
                        digits_run['tested'][report['chosen_tau']])
    assert report['test'] != report['test_at_tau0']


def test_val_metrics_match_numpy_on_the_model(digits_run):
    """Every tau's val top-1 from the model's scores by a NumPy argmax."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmengine.runner import Runner

    report = digits_run['report']
    cfg = Config.fromfile(report['config'])
    init_default_scope('mmpretrain')
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the tool's subprocess
    try:
        model = logit_adjust.build_model(cfg, report['checkpoint'])
        loader = Runner.build_dataloader(
            dict(cfg.val_dataloader, pin_memory=False))
        preds = logit_adjust.collect_predictions(model, loader, step='val')
    finally:
        torch.set_num_threads(threads)
    scores = preds['pred_score'].double().numpy()
    labels = preds['gt_label'].numpy()
    assert scores.shape == (200, 10)
    np.testing.assert_allclose(scores.sum(1), 1, atol=1e-5)  # softmax
    counts = np.asarray(loader.dataset.metainfo['class_counts'], float)
    log_prior = np.log(counts / counts.sum())
    for tau, metrics in zip(report['taus'], report['val']):
        pred = np.argmax(
            np.log(np.maximum(scores, 1e-300)) - tau * log_prior, axis=1)
        assert metrics['accuracy/top1'] == pytest.approx(
            (pred == labels).mean() * 100), tau


def test_unknown_select_key(digits_run):
    out = str(digits_run['root'] / 'bad.json')
    with pytest.raises(KeyError, match="No metric 'nope'"):
        logit_adjust.main([
            digits_run['work_dir'], '--select', 'nope', '--taus', '1',
            '--out', out
        ])
    assert not osp.exists(out)
