# Copyright (c) galddc_mm contributors. All rights reserved.
"""The final-metrics summary of a run (logged by ``FinalMetricsHook``).

mmengine logs every evaluation, but the many/medium/few numbers of a run are
then buried in a long line among timings. At the end of a run
:class:`~galddc_mm.engine.hooks.FinalMetricsHook` (in the configs'
``default_hooks``, so under any ``tools/train.py``/``test.py``) logs one
table, e.g.::

    Final metrics (%) after epoch 90:
    | split | top1  | top5  | many  | medium | few   |
    |-------|-------|-------|-------|--------|-------|
    | val   | 45.12 | 70.03 | 63.40 | 38.21  | 12.90 |

and write the same numbers to ``<work_dir>/<timestamp>/final_metrics.json``.
"""
import json
import os
import os.path as osp
from numbers import Number
from typing import Dict, Optional

from mmengine.logging import MessageHub

__all__ = [
    'collect_split_metrics', 'dump_final_metrics', 'format_metrics_table',
    'log_final_metrics'
]

# Columns first in this order, then any other metric alphabetically.
METRIC_ORDER = ('top1', 'top5', 'many', 'medium', 'few', 'head', 'tail',
                'mean_class')
# Keys the loops put next to the metrics that are timings, not results.
_NOT_METRICS = ('time', 'data_time')


def collect_split_metrics(message_hub: MessageHub,
                          split: str) -> Dict[str, float]:
    """Read the latest scalar metrics of one split from a message hub.

    mmengine's ``RuntimeInfoHook`` stores each val/test metric as the scalar
    ``'{split}/{key}'`` (e.g. ``'val/accuracy/top1'``); the latest value is
    the result of the last evaluation.

    Args:
        message_hub (MessageHub): The runner's message hub.
        split (str): ``'val'`` or ``'test'``.

    Returns:
        dict[str, float]: ``{key: value}`` without the split prefix, e.g.
        ``{'accuracy/top1': 45.1}``; empty if the split was not evaluated.
    """
    prefix = f'{split}/'
    metrics = {}
    for key, buffer in message_hub.log_scalars.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix):]
        if name in _NOT_METRICS:
            continue
        metrics[name] = float(buffer.current())
    return metrics


def _short_name(key: str) -> str:
    """``'accuracy/top1'`` -> ``'top1'``; other prefixes are kept."""
    return key[len('accuracy/'):] if key.startswith('accuracy/') else key


def _column_order(name: str):
    return ((METRIC_ORDER.index(name), '') if name in METRIC_ORDER else
            (len(METRIC_ORDER), name))


def format_metrics_table(metrics_by_split: Dict[str, Dict[str, float]],
                         title: str = 'Final metrics (%)') -> str:
    """Format metrics as a Markdown table, one row per split.

    Args:
        metrics_by_split (dict): ``{split: {key: value}}``, e.g.
            ``{'val': {'accuracy/top1': 45.1, 'accuracy/many': 63.4}}``.
            Non-numeric values (e.g. per-class lists) are left out.
        title (str): First line. Defaults to ``'Final metrics (%)'``.

    Returns:
        str: The title and the table; ``'-'`` marks a metric missing from a
        split.
    """
    rows = {
        split: {
            _short_name(k): v
            for k, v in metrics.items() if isinstance(v, Number)
        }
        for split, metrics in metrics_by_split.items()
    }
    columns = sorted({name
                      for row in rows.values()
                      for name in row},
                     key=_column_order)
    if not columns:
        return f'{title}: no metrics were computed.'
    header = ['split'] + columns
    body = [[split] + [
        f'{row[c]:.2f}' if c in row else '-' for c in columns
    ] for split, row in rows.items()]
    widths = [
        max(len(line[i]) for line in [header] + body)
        for i in range(len(header))
    ]

    def fmt(cells):
        return '| ' + ' | '.join(
            cell.ljust(width) for cell, width in zip(cells, widths)) + ' |'

    rule = '|' + '|'.join('-' * (w + 2) for w in widths) + '|'
    return '\n'.join([f'{title}:', fmt(header), rule] +
                     [fmt(line) for line in body])


def dump_final_metrics(path: str,
                       metrics_by_split: Dict[str, Dict[str, float]],
                       **extra) -> None:
    """Write ``{'metrics': {split: {key: value}}, **extra}`` as JSON.

    Args:
        path (str): Output file; its folder is created if needed.
        metrics_by_split (dict): ``{split: {key: value}}``.
        **extra: Other JSON-serialisable fields (epoch, best checkpoint).
    """
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    with open(path, 'w', encoding='utf-8') as f:
        json.dump(dict(metrics=metrics_by_split, **extra), f, indent=1)


def log_final_metrics(runner,
                      metrics_by_split: Dict[str, Dict[str, float]],
                      title: str = 'Final metrics (%)',
                      filename: Optional[str] = 'final_metrics.json',
                      **extra) -> Optional[str]:
    """Log the table with the runner's logger and dump it next to the log.

    Every rank logs the table (mmengine shows only rank 0's INFO lines on
    the console; with ``log_level='DEBUG'`` each rank keeps its own log
    file), rank 0 writes ``<runner.log_dir>/<filename>``.

    Args:
        runner (Runner): The runner that trained or tested.
        metrics_by_split (dict): ``{split: {key: value}}``.
        title (str): Title of the table. Defaults to
            ``'Final metrics (%)'``.
        filename (str, optional): JSON file name in ``runner.log_dir``;
            None writes nothing. Defaults to ``'final_metrics.json'``.
        **extra: Other fields for the JSON file.

    Returns:
        str, optional: The JSON path on rank 0, else None.
    """
    runner.logger.info(format_metrics_table(metrics_by_split, title))
    if filename is None or runner.rank != 0:
        return None
    path = osp.join(runner.log_dir, filename)
    numeric = {
        split: {k: v
                for k, v in metrics.items() if isinstance(v, Number)}
        for split, metrics in metrics_by_split.items()
    }
    dump_final_metrics(path, numeric, **extra)
    runner.logger.info(f'Final metrics written to {path}')
    return path
