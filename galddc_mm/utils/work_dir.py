# Copyright (c) galddc_mm contributors. All rights reserved.
"""Read what a training run left in its work dir.

The analysis scripts (``tools/analysis``) and the experiment runner
(``tools/run_experiments.py``) find configs, checkpoints, logs and metrics
through :class:`WorkDir` rather than guessing paths. The layout is
mmengine's plus the files of this package::

    work_dir/
      epoch_N.pth, best_accuracy_top1_epoch_N.pth, last_checkpoint
      generation_report.json           (GenerationReportHook, stage 2)
      <timestamp>/                     (one per train.py / test.py run)
        <timestamp>.log
        vis_data/config.py             (the full config, CLI options merged)
        vis_data/scalars.json          (one JSON record per logged step)
        {val,test}_per_class_accuracy.{json,csv}   (LongTailAccuracy)
        final_metrics.json             (tools/train.py, tools/test.py)

A resumed run, or a ``tools/test.py`` run with the same ``--work-dir``, adds
another ``<timestamp>`` folder; readers look at the newest that has the
file asked for.
"""
import csv
import glob
import json
import os.path as osp
import re
from typing import Dict, List, Optional, Tuple

__all__ = ['WorkDir', 'load_per_class_accuracy']

# mmengine names each run's folder after its start time: 20240131_235959.
_TIMESTAMP = re.compile(r'^\d{8}_\d{6}$')
_EPOCH_CKPT = re.compile(r'^epoch_(\d+)\.pth$')
_BEST_CKPT = re.compile(r'^best_.*_epoch_(\d+)\.pth$')
CHECKPOINT_KINDS = ('last', 'best')


class WorkDir:
    """Reader of a work dir written by ``tools/train.py`` / ``test.py``.

    Nothing is read at construction beyond checking that the folder exists;
    each method reads what it needs and fails with a message that says which
    file is missing and which tool writes it.

    Args:
        path (str): The work dir (``--work-dir`` of the run).

    Examples:
        >>> wd = WorkDir('work_dirs/r20_digitslt')
        >>> wd.config(), wd.checkpoint('last')
        >>> train_rows, val_rows = wd.scalars()
        >>> wd.final_metrics('test')['accuracy/top1']
    """

    def __init__(self, path: str) -> None:
        if not osp.isdir(path):
            raise FileNotFoundError(
                f'Work dir {path!r} does not exist; pass the --work-dir of '
                'a run of tools/train.py.')
        self.path = path

    def __repr__(self) -> str:
        return f'WorkDir({self.path!r})'

    # ------------------------------------------------------------------
    # runs, config, checkpoints
    # ------------------------------------------------------------------
    def run_dirs(self) -> List[str]:
        """The ``<timestamp>`` folders of the runs, oldest first."""
        return sorted(
            d for d in glob.glob(osp.join(self.path, '*'))
            if osp.isdir(d) and _TIMESTAMP.match(osp.basename(d)))

    def _newest(self, relpath: str) -> Optional[str]:
        """``<newest timestamp>/<relpath>`` that exists, else None."""
        for run in reversed(self.run_dirs()):
            path = osp.join(run, relpath)
            if osp.isfile(path):
                return path
        return None

    def config(self) -> str:
        """The config of the training run, CLI ``--cfg-options`` included.

        mmengine dumps the merged config to
        ``<timestamp>/vis_data/config.py``. The newest *training* run's
        (the one with a ``scalars.json`` log) is preferred: a later
        ``tools/test.py`` run in the same work dir dumps its own config,
        which lacks the training-only options (e.g. the seed). Without any
        dumped config (a visualiser without the local backend), a single
        ``*.py`` in the work dir.

        Returns:
            str: Path of the config file.
        """
        dumped = [
            osp.join(run, 'vis_data', 'config.py')
            for run in reversed(self.run_dirs())
            if osp.isfile(osp.join(run, 'vis_data', 'config.py'))
        ]
        for path in dumped:
            if osp.isfile(osp.join(osp.dirname(path), 'scalars.json')):
                return path
        if dumped:
            return dumped[0]
        candidates = sorted(glob.glob(osp.join(self.path, '*.py')))
        if len(candidates) == 1:
            return candidates[0]
        raise FileNotFoundError(
            f'No config found in {self.path!r}: expected '
            '<timestamp>/vis_data/config.py (dumped by mmengine\'s '
            f'LocalVisBackend) or one *.py file, found {candidates}. Pass '
            'the config explicitly.')

    def checkpoint(self, kind: str = 'last') -> str:
        """A checkpoint of the run.

        Args:
            kind (str): ``'last'``: the file named in ``last_checkpoint``
                (the newest ``epoch_N.pth`` if that file is missing);
                ``'best'``: the newest ``best_*_epoch_N.pth`` (selected on
                val by ``CheckpointHook(save_best=...)``). Defaults to
                ``'last'``.

        Returns:
            str: Path of the checkpoint.
        """
        if kind not in CHECKPOINT_KINDS:
            raise ValueError(f'kind must be one of {CHECKPOINT_KINDS}, got '
                             f'{kind!r}.')
        names = [osp.basename(p) for p in glob.glob(
            osp.join(self.path, '*.pth'))]
        if kind == 'best':
            best = [(int(m.group(1)), n) for n in names
                    if (m := _BEST_CKPT.match(n))]
            if not best:
                raise FileNotFoundError(
                    f'No best_*_epoch_N.pth in {self.path!r}: the run did '
                    'not save a best checkpoint (CheckpointHook(save_best='
                    "'accuracy/top1') with validation). Use kind='last'.")
            return osp.join(self.path, max(best)[1])
        pointer = osp.join(self.path, 'last_checkpoint')
        if osp.isfile(pointer):
            with open(pointer, encoding='utf-8') as f:
                recorded = f.read().strip()
            # The pointer holds the path as the run saw it; the work dir may
            # have moved since, so fall back to the same file name here.
            for path in (recorded, osp.join(self.path,
                                            osp.basename(recorded))):
                if recorded and osp.isfile(path):
                    return path
        epochs = [(int(m.group(1)), n) for n in names
                  if (m := _EPOCH_CKPT.match(n))]
        if not epochs:
            raise FileNotFoundError(
                f'No epoch_N.pth checkpoint in {self.path!r}; has the run '
                'finished an epoch?')
        return osp.join(self.path, max(epochs)[1])

    # ------------------------------------------------------------------
    # logs and metrics
    # ------------------------------------------------------------------
    def scalars(self) -> Tuple[List[dict], List[dict]]:
        """The logged scalars of all runs, resumed runs merged.

        ``vis_data/scalars.json`` holds one JSON record per line: training
        records (losses, lrs, with ``epoch``, ``iter`` and ``step`` = iter)
        and validation records (``accuracy/top1`` ..., with ``step`` =
        epoch). Where a resumed run logged the same iteration (or the same
        validation epoch) again, the newer record wins.

        Returns:
            tuple[list[dict], list[dict]]: Training records sorted by
            ``iter`` and validation records sorted by ``step``.
        """
        train, val = {}, {}
        found = False
        for run in self.run_dirs():
            path = osp.join(run, 'vis_data', 'scalars.json')
            if not osp.isfile(path):
                continue
            found = True
            with open(path, encoding='utf-8') as f:
                for line in f:
                    if not line.strip():
                        continue
                    record = json.loads(line)
                    if 'iter' in record:
                        train[record['iter']] = record
                    elif 'step' in record:
                        val[record['step']] = record
        if not found:
            raise FileNotFoundError(
                f'No <timestamp>/vis_data/scalars.json in {self.path!r}: '
                "the run did not log with mmengine's LocalVisBackend.")
        return ([train[k] for k in sorted(train)],
                [val[k] for k in sorted(val)])

    def final_metrics(self, split: str = 'test') -> Optional[Dict]:
        """The final metrics of a split, from the newest run that has them.

        Args:
            split (str): ``'val'`` or ``'test'``. Defaults to ``'test'``.

        Returns:
            dict, optional: ``{'accuracy/top1': ..., 'accuracy/many': ...}``
            as written to ``final_metrics.json`` by ``tools/train.py`` /
            ``tools/test.py``; None if no run has the split.
        """
        for run in reversed(self.run_dirs()):
            path = osp.join(run, 'final_metrics.json')
            if not osp.isfile(path):
                continue
            with open(path, encoding='utf-8') as f:
                metrics = json.load(f).get('metrics', {})
            if metrics.get(split):
                return metrics[split]
        return None

    def per_class_accuracy_file(self, split: str = 'test') -> str:
        """Path of the newest ``<split>_per_class_accuracy.json``."""
        name = f'{split}_per_class_accuracy.json'
        path = self._newest(name)
        if path is None:
            hint = (' Test the final checkpoint with `python tools/test.py '
                    'CONFIG CHECKPOINT --work-dir WORK_DIR`.'
                    if split == 'test' else '')
            raise FileNotFoundError(
                f'No <timestamp>/{name} in {self.path!r} (written by '
                f'LongTailAccuracy with per_class_file=\'{split}_per_class_'
                f'accuracy\').{hint}')
        return path

    def generation_report(self) -> dict:
        """``generation_report.json`` (GenerationReportHook, stage 2)."""
        path = osp.join(self.path, 'generation_report.json')
        if not osp.isfile(path):
            raise FileNotFoundError(
                f'No generation_report.json in {self.path!r}; it is written '
                'by GenerationReportHook at the end of the diffusion stage.')
        with open(path, encoding='utf-8') as f:
            return json.load(f)


def load_per_class_accuracy(path: str) -> List[dict]:
    """Per-class rows of a ``LongTailAccuracy`` JSON or CSV file.

    Args:
        path (str): ``*_per_class_accuracy.json`` or ``.csv``.

    Returns:
        list[dict]: One dict per class with ``class_idx``, ``class_name``,
        ``train_count``, ``band``, ``group``, ``num_eval``, ``num_correct``
        and ``accuracy`` (percent; None for a class without evaluation
        samples), sorted by ``class_idx``.
    """
    if path.endswith('.json'):
        with open(path, encoding='utf-8') as f:
            rows = json.load(f)['classes']
    elif path.endswith('.csv'):
        with open(path, encoding='utf-8', newline='') as f:
            rows = list(csv.DictReader(f))
        for row in rows:
            for key in ('class_idx', 'train_count', 'num_eval',
                        'num_correct'):
                row[key] = int(row[key])
            row['accuracy'] = (float(row['accuracy'])
                               if row['accuracy'] != '' else None)
            row['group'] = row['group'] or None
    else:
        raise ValueError(
            f'{path!r} is neither a .json nor a .csv per-class accuracy '
            'file (written by LongTailAccuracy).')
    return sorted(rows, key=lambda r: r['class_idx'])
