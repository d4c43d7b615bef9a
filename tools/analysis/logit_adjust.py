# Copyright (c) galddc_mm contributors. All rights reserved.
r"""Post-hoc logit adjustment: choose tau on val, report test with it.

Menon et al. (ICLR 2021), *Long-tail learning via logit adjustment*: a
model trained with the plain cross-entropy on long-tailed data is biased
towards the head classes; ranking the classes by

.. math:: \log p_c(x) - \tau \log \pi_c

(:math:`p` the softmax of the model, so :math:`\log p_c` is the logit up to
a per-sample constant; :math:`\pi_c = n_c / \sum n` the **training** prior)
removes that bias without retraining. ``LongTailAccuracy`` implements the
adjustment (``logit_adjust_tau``); this script chooses :math:`\tau`:

1. Run the network **once** over the val split and once over the test
   split (the final model: the last checkpoint of a work dir, or a config
   + checkpoint), keeping each sample's ``pred_score`` and ``gt_label``
   (:func:`collect_predictions`).
2. Evaluate every :math:`\tau` of ``--taus`` on the val predictions with a
   fresh ``LongTailAccuracy`` built from the run's ``val_evaluator``, with
   ``logit_adjust_tau`` set (:func:`evaluate_taus`; no network pass per
   :math:`\tau`). :math:`\tau = 0` (no adjustment) is always evaluated and
   always a candidate: an adjustment has to beat the unadjusted model on
   val to be chosen.
3. Choose the :math:`\tau` that maximises ``--select`` on **val**
   (:func:`choose_tau`). Ties (values within 1e-9 of the best, i.e. equal
   up to rounding) go to the **smallest** :math:`\tau`, the weakest
   adjustment, so the choice is deterministic and independent of the order
   of ``--taus``.
4. Report the **test** metrics at the chosen :math:`\tau`, and without
   adjustment for reference, from the test predictions with the run's
   ``test_evaluator``. The test split is never used to choose: only the
   chosen :math:`\tau` (and 0) are evaluated on it.

Our val sets are class-balanced, so val top-1 (the default ``--select``)
is the balanced accuracy the adjustment targets.

The script prints the val table (one row per :math:`\tau`, the chosen one
marked ``*``) and the test metrics, and writes a JSON file (default
``<work dir>/logit_adjust.json``; with a config, ``--out`` is required)::

    {"taus": [0.0, 0.25, ...], "select": "accuracy/top1",
     "chosen_tau": 1.0,
     "val": [{"accuracy/top1": ..., ...}, ...],   # one dict per tau
     "test": {"accuracy/top1": ..., "accuracy/few": ..., ...},
     "test_at_tau0": {...}, "config": "...", "checkpoint": "...",
     "num_val": 200, "num_test": 400}

``test`` and ``test_at_tau0`` have the keys of ``final_metrics.json``'s
``test`` entry (``accuracy/top1``, ``accuracy/many``, ...), so a tool that
reads final metrics reads them the same way. They equal what ``python
tools/test.py CONFIG CKPT --cfg-options test_evaluator.logit_adjust_tau=T``
reports for ``T`` = the chosen tau and 0.

Examples::

    # a work dir: its dumped config and last checkpoint
    python tools/analysis/logit_adjust.py work_dirs/ce_digits_lt
    # a config and a checkpoint; finer grid, select on the few-shot accuracy
    python tools/analysis/logit_adjust.py configs/baselines/ce_digits_lt.py \\
        work_dirs/ce_digits_lt/epoch_60.pth --taus 0 0.5 1 1.5 2 3 \\
        --select few --out ce_logit_adjust.json
"""
import argparse
import copy
import json
import math
import os
import os.path as osp
import sys
from typing import Dict, List, Optional, Sequence

import torch
from analysis_utils import resolve_run
from mmengine.config import Config, DictAction

from galddc_mm.utils.final_metrics import METRIC_ORDER

#: Default grid: 0 to 2 in steps of 0.25 (Menon et al. find tau = 1 best
#: on balanced test sets; 0 is the unadjusted model).
DEFAULT_TAUS = tuple(i * 0.25 for i in range(9))
#: Values of the selected metric within this of the best count as ties.
TIE_TOL = 1e-9
#: Samples fed to ``LongTailAccuracy.process`` per call.
_CHUNK = 1024


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Choose the post-hoc logit-adjustment temperature tau '
        '(rank classes by log p - tau * log training prior) on the val '
        'split and report the test split with it.')
    parser.add_argument(
        'source', help='work dir of a run, or a config (then CHECKPOINT)')
    parser.add_argument(
        'checkpoint',
        nargs='?',
        help='checkpoint to load (default with a work dir: its last '
        'checkpoint, see --checkpoint-kind)')
    parser.add_argument(
        '--checkpoint-kind',
        choices=['last', 'best'],
        default='last',
        help='with a work dir and no CHECKPOINT: which checkpoint '
        '(default: last, the final model)')
    parser.add_argument(
        '--taus',
        type=float,
        nargs='+',
        default=list(DEFAULT_TAUS),
        help='candidate taus, >= 0; 0 is always added (default: 0 to 2 in '
        'steps of 0.25)')
    parser.add_argument(
        '--select',
        default='top1',
        help='val metric to maximise, with or without the evaluator '
        "prefix (e.g. top1, few, accuracy/mean_class); ties go to the "
        'smallest tau (default: top1)')
    parser.add_argument(
        '--out',
        help='output JSON (default: <work dir>/logit_adjust.json; '
        'required when SOURCE is a config)')
    parser.add_argument(
        '--device',
        help='device of the model (default: cuda if available, else cpu)')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override settings of the config (data loaders, evaluators), '
        'xxx=yyy as in tools/test.py')
    args = parser.parse_args(argv)
    try:
        args.taus = check_taus(args.taus)
    except ValueError as e:
        parser.error(str(e))
    if not osp.exists(args.source):
        parser.error(f'{args.source!r} is neither a work dir nor a config '
                     'file.')
    if osp.isfile(args.source) and args.checkpoint is None:
        parser.error(f'{args.source!r} is a config: also pass CHECKPOINT, '
                     'or pass the work dir of the run instead.')
    if args.out is None and not osp.isdir(args.source):
        parser.error('--out is required when SOURCE is a config (with a '
                     'work dir it defaults to <work dir>/logit_adjust.json).')
    return args


def check_taus(taus: Sequence[float]) -> List[float]:
    """Validate the candidate taus; sorted, deduplicated, 0 added.

    Args:
        taus (Sequence[float]): Candidate temperatures.

    Returns:
        list[float]: The taus in increasing order, without duplicates,
        starting with 0.0.

    Raises:
        ValueError: An empty list, or a negative or non-finite tau.
    """
    taus = [float(t) for t in taus]
    if not taus:
        raise ValueError('The list of taus is empty; give at least one '
                         'tau >= 0 (e.g. --taus 0 0.5 1).')
    bad = [t for t in taus if not (math.isfinite(t) and t >= 0)]
    if bad:
        raise ValueError(f'Every tau must be a finite number >= 0 (the '
                         f'adjustment subtracts tau * log prior); got '
                         f'{bad}.')
    return sorted(set(taus) | {0.0})


def build_model(cfg: Config, checkpoint: str, device: str = 'cpu'):
    """Build the model of ``cfg`` and load ``checkpoint``, in eval mode.

    Unlike :func:`analysis_utils.load_model` any classifier is accepted
    (the adjustment matters most for plain cross-entropy baselines).

    Args:
        cfg (Config): The run's config (``--cfg-options`` merged).
        checkpoint (str): The checkpoint file.
        device (str): Where the model runs. Defaults to ``'cpu'``.

    Returns:
        BaseModel: The model, on ``device``, in eval mode.
    """
    from mmengine.runner import load_checkpoint
    from mmpretrain.registry import MODELS

    model_cfg = copy.deepcopy(cfg.model)
    if cfg.get('data_preprocessor') is not None:
        model_cfg.setdefault('data_preprocessor', cfg.data_preprocessor)
    model = MODELS.build(model_cfg)
    # mmengine's Runner loads ``load_from`` non-strictly too; 'current'
    # logs missing or unexpected keys instead of hiding them.
    load_checkpoint(model, checkpoint, map_location='cpu', logger='current')
    return model.to(device).eval()


@torch.no_grad()
def collect_predictions(model,
                        dataloader,
                        step: str = 'test',
                        fp16: bool = False) -> Dict[str, torch.Tensor]:
    """Class scores and labels of a whole split, one network pass.

    As mmengine's ``ValLoop``/``TestLoop`` do: ``model.val_step`` or
    ``model.test_step`` on every batch, in eval mode, without gradients
    (under ``autocast`` with ``fp16``).

    Args:
        model (BaseModel): The classifier (with its data preprocessor).
        dataloader (DataLoader): The split's data loader.
        step (str): ``'val'`` or ``'test'``: which step method to call (both
            predict the same way). Defaults to ``'test'``.
        fp16 (bool): Run under automatic mixed precision, as the loops do
            with ``val_cfg.fp16``/``test_cfg.fp16``. Defaults to False.

    Returns:
        dict[str, Tensor]: ``pred_score`` ``(N, K)`` (the model's softmax,
        in its dtype, on the CPU) and ``gt_label`` ``(N,)`` (int64), in the
        order of the data loader.
    """
    from mmengine.runner.amp import autocast
    from mmengine.structures import BaseDataElement

    if step not in ('val', 'test'):
        raise ValueError(f"step must be 'val' or 'test', got {step!r}.")
    run_step = model.val_step if step == 'val' else model.test_step
    model.eval()
    scores, labels = [], []
    for data_batch in dataloader:
        with autocast(enabled=fp16):
            outputs = run_step(data_batch)
        for sample in outputs:
            if isinstance(sample, BaseDataElement):
                # The loops drop a trailing element that only holds losses.
                if sample.keys() == ['loss']:
                    continue
                sample = sample.to_dict()
            if 'pred_score' not in sample:
                raise ValueError(
                    'The model predicts labels only (no pred_score); the '
                    'logit adjustment needs the class scores.')
            scores.append(
                torch.as_tensor(sample['pred_score']).detach().reshape(
                    -1).cpu())
            labels.append(
                int(torch.as_tensor(sample['gt_label']).reshape(-1)[0]))
    if not scores:
        raise ValueError('The data loader yielded no samples.')
    return dict(
        pred_score=torch.stack(scores),
        gt_label=torch.tensor(labels, dtype=torch.int64))


def _build_metric(evaluator_cfg: Optional[dict], tau: float):
    """A fresh ``LongTailAccuracy`` of ``evaluator_cfg`` at ``tau``."""
    from mmpretrain.registry import METRICS

    from galddc_mm.evaluation import LongTailAccuracy

    cfg = dict(type='LongTailAccuracy') if evaluator_cfg is None else dict(
        copy.deepcopy(evaluator_cfg))
    cfg.update(logit_adjust_tau=float(tau), per_class_file=None)
    metric = METRICS.build(cfg)
    if not isinstance(metric, LongTailAccuracy):
        raise TypeError(
            f'The evaluator is a {type(metric).__name__}; the logit '
            'adjustment is implemented by LongTailAccuracy.')
    return metric


def evaluate_taus(predictions: Dict[str, torch.Tensor],
                  metainfo: dict,
                  evaluator_cfg: Optional[dict],
                  taus: Sequence[float]) -> List[Dict[str, float]]:
    """Evaluate fixed predictions at every tau, offline.

    For each tau a fresh ``LongTailAccuracy`` is built from
    ``evaluator_cfg`` with ``logit_adjust_tau=tau`` and
    ``per_class_file=None``, given ``metainfo`` as its ``dataset_meta``
    (the training ``class_counts``), fed the predictions through
    ``process`` and evaluated with ``compute_metrics``; the keys get the
    metric's prefix as mmengine's evaluator gives them (``accuracy/top1``,
    ...).

    Args:
        predictions (dict[str, Tensor]): ``pred_score`` ``(N, K)`` softmax
            scores and ``gt_label`` ``(N,)``, as
            :func:`collect_predictions` returns.
        metainfo (dict): The split's data set metainfo, with
            ``class_counts`` (training images per class).
        evaluator_cfg (dict, optional): The split's ``LongTailAccuracy``
            config (``cfg.val_evaluator`` / ``cfg.test_evaluator``); None
            for the defaults.
        taus (Sequence[float]): Temperatures, each >= 0.

    Returns:
        list[dict[str, float]]: The metrics (percent) at each tau, in the
        order of ``taus``.
    """
    taus = list(taus)
    if not taus:
        raise ValueError('The list of taus is empty.')
    bad = [t for t in taus if not (math.isfinite(float(t)) and t >= 0)]
    if bad:
        raise ValueError(f'Every tau must be a finite number >= 0, got '
                         f'{bad}.')
    scores = torch.as_tensor(predictions['pred_score'])
    labels = torch.as_tensor(predictions['gt_label']).reshape(-1)
    if scores.ndim != 2 or len(scores) != len(labels) or not len(labels):
        raise ValueError(
            'predictions must hold pred_score (N, K) and gt_label (N,) with '
            f'N > 0, got shapes {tuple(scores.shape)} and '
            f'{tuple(labels.shape)}.')
    results = []
    for tau in taus:
        metric = _build_metric(evaluator_cfg, tau)
        metric.dataset_meta = metainfo
        for start in range(0, len(labels), _CHUNK):
            metric.process(None, [
                dict(pred_score=scores[i], gt_label=labels[i:i + 1])
                for i in range(start, min(start + _CHUNK, len(labels)))
            ])
        values = metric.compute_metrics(metric.results)
        prefix = metric.prefix
        results.append({(f'{prefix}/{k}' if prefix else k): float(v)
                        for k, v in values.items()})
    return results


def resolve_metric_key(metrics: Dict[str, float], key: str) -> str:
    """The key of ``metrics`` that ``key`` names (with or without prefix).

    Args:
        metrics (dict[str, float]): Evaluated metrics, e.g.
            ``{'accuracy/top1': ...}``.
        key (str): ``'accuracy/top1'`` or ``'top1'``.

    Returns:
        str: The full key.

    Raises:
        KeyError: No metric, or more than one, is named ``key``.
    """
    if key in metrics:
        return key
    matches = [k for k in metrics if k.split('/')[-1] == key]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise KeyError(
            f'No metric {key!r} in the val results; available: '
            f'{sorted(metrics)} (head/tail need the evaluator\'s tau, a '
            'many/medium/few band without classes is left out).')
    raise KeyError(f'{key!r} is ambiguous: {matches}; give the full key.')


def choose_tau(val_metrics: Sequence[Dict[str, float]],
               taus: Sequence[float],
               select: str = 'top1') -> float:
    """The tau that maximises ``select`` on val; ties to the smallest tau.

    Args:
        val_metrics (Sequence[dict]): Val metrics at each tau, as
            :func:`evaluate_taus` returns.
        taus (Sequence[float]): The taus, in the order of ``val_metrics``.
        select (str): The metric to maximise, with or without prefix.
            Defaults to ``'top1'``.

    Returns:
        float: The chosen tau: among the taus whose value is within
        :data:`TIE_TOL` of the best, the smallest.

    Raises:
        ValueError: Empty or mismatched inputs.
        KeyError: ``select`` is not a metric of every tau.
    """
    taus = [float(t) for t in taus]
    if not taus:
        raise ValueError('The list of taus is empty.')
    if len(taus) != len(val_metrics):
        raise ValueError(f'{len(taus)} taus but {len(val_metrics)} metric '
                         'dicts.')
    keys = [resolve_metric_key(m, select) for m in val_metrics]
    values = [float(m[k]) for m, k in zip(val_metrics, keys)]
    best = max(values)
    return min(t for t, v in zip(taus, values) if v >= best - TIE_TOL)


def _short(key: str) -> str:
    return key.split('/', 1)[1] if '/' in key else key


def _columns(rows: Sequence[Dict[str, float]]) -> List[str]:
    keys = {k for row in rows for k in row}
    return sorted(keys, key=lambda k: ((METRIC_ORDER.index(_short(k)), k)
                                       if _short(k) in METRIC_ORDER else
                                       (len(METRIC_ORDER), k)))


def format_table(first: str, labels: Sequence[str],
                 rows: Sequence[Dict[str, float]]) -> str:
    """A Markdown table: one row per label, one column per metric (%)."""
    columns = _columns(rows)
    header = [first] + [_short(c) for c in columns]
    body = [[label] + [f'{row[c]:.2f}' if c in row else '-'
                       for c in columns]
            for label, row in zip(labels, rows)]
    widths = [max(len(line[i]) for line in [header] + body)
              for i in range(len(header))]

    def fmt(cells):
        return '| ' + ' | '.join(
            cell.ljust(width) for cell, width in zip(cells, widths)) + ' |'

    rule = '|' + '|'.join('-' * (w + 2) for w in widths) + '|'
    return '\n'.join([fmt(header), rule] + [fmt(line) for line in body])


def _split_parts(cfg: Config, split: str):
    """The data loader config, evaluator config and fp16 flag of a split."""
    loader = cfg.get(f'{split}_dataloader')
    evaluator = cfg.get(f'{split}_evaluator')
    if loader is None or evaluator is None:
        raise ValueError(f'The config has no {split}_dataloader / '
                         f'{split}_evaluator.')
    if isinstance(evaluator, (list, tuple)):
        found = [e for e in evaluator
                 if str(e.get('type', '')).split('.')[-1] ==
                 'LongTailAccuracy']
        if len(found) != 1:
            raise ValueError(f'{split}_evaluator must hold exactly one '
                             f'LongTailAccuracy, got {evaluator}.')
        evaluator = found[0]
    fp16 = bool((cfg.get(f'{split}_cfg') or {}).get('fp16', False))
    return loader, evaluator, fp16


def run(config: str,
        checkpoint: str,
        taus: Sequence[float] = DEFAULT_TAUS,
        select: str = 'top1',
        device: str = 'cpu',
        cfg_options: Optional[dict] = None) -> dict:
    """Predict val and test once, choose tau on val, report test.

    Args:
        config (str): The run's config file.
        checkpoint (str): The checkpoint to evaluate.
        taus (Sequence[float]): Candidate taus (0 is added).
        select (str): Val metric to maximise. Defaults to ``'top1'``.
        device (str): Device of the model. Defaults to ``'cpu'``.
        cfg_options (dict, optional): Overrides merged into the config.

    Returns:
        dict: The report written as JSON (see the module docstring).
    """
    from mmengine.registry import init_default_scope
    from mmengine.runner import Runner

    import galddc_mm  # noqa: F401  (registers the plugin; safe loading)

    taus = check_taus(taus)
    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    init_default_scope(cfg.get('default_scope', 'mmpretrain'))
    model = build_model(cfg, checkpoint, device)

    def predict(split):
        loader_cfg, evaluator_cfg, fp16 = _split_parts(cfg, split)
        loader_cfg = copy.deepcopy(loader_cfg)
        # Pinned memory only helps (and only works) with an accelerator.
        if loader_cfg.get('pin_memory') and not str(device).startswith(
                'cuda'):
            loader_cfg['pin_memory'] = False
        loader = Runner.build_dataloader(loader_cfg)
        preds = collect_predictions(model, loader, step=split, fp16=fp16)
        if len(preds['gt_label']) != len(loader.dataset):
            raise RuntimeError(
                f'{len(preds["gt_label"])} {split} predictions for '
                f'{len(loader.dataset)} samples.')
        return preds, loader.dataset.metainfo, evaluator_cfg

    # Val first: a bad --select fails before the test pass.
    val_preds, val_meta, val_eval = predict('val')
    val = evaluate_taus(val_preds, val_meta, val_eval, taus)
    select_key = resolve_metric_key(val[0], select)
    chosen = choose_tau(val, taus, select_key)

    test_preds, test_meta, test_eval = predict('test')
    test_taus = sorted({0.0, chosen})
    test = dict(
        zip(test_taus,
            evaluate_taus(test_preds, test_meta, test_eval, test_taus)))
    return dict(
        taus=taus,
        select=select_key,
        chosen_tau=chosen,
        val=val,
        test=test[chosen],
        test_at_tau0=test[0.0],
        config=config,
        checkpoint=checkpoint,
        num_val=len(val_preds['gt_label']),
        num_test=len(test_preds['gt_label']))


def format_report(report: dict) -> str:
    """The val table per tau and the test metrics, as printed."""
    taus, chosen = report['taus'], report['chosen_tau']
    labels = [f'{t:g}' + (' *' if t == chosen else '') for t in taus]
    lines = [
        f'Val metrics (%) per tau ({report["num_val"]} samples; * = '
        f'chosen, max {report["select"]}, ties to the smallest tau):',
        format_table('tau', labels, report['val']), '',
        f'Chosen tau = {chosen:g}. Test metrics (%) '
        f'({report["num_test"]} samples):'
    ]
    if chosen > 0 and chosen == max(taus):
        lines.insert(
            -1, f'Note: {chosen:g} is the largest tau tried; a larger one '
            'may be better on val (extend --taus).')
    if chosen == 0:
        lines.append(format_table('test', ['tau=0'], [report['test']]))
    else:
        lines.append(
            format_table('test', ['tau=0', f'tau={chosen:g}'],
                         [report['test_at_tau0'], report['test']]))
    return '\n'.join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    config, checkpoint, work_dir = resolve_run(args.source, args.checkpoint,
                                               args.checkpoint_kind)
    device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    out = args.out or osp.join(work_dir.path, 'logit_adjust.json')
    report = run(config, checkpoint, args.taus, args.select, device,
                 args.cfg_options)
    print(format_report(report))
    os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
    with open(out, 'w', encoding='utf-8') as f:
        json.dump(report, f, indent=1)
    print(f'Written to {out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
