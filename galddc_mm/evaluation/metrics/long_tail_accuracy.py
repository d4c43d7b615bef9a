# Copyright (c) galddc_mm contributors. All rights reserved.
import csv
import json
import os
import os.path as osp
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from mmengine.evaluator import BaseMetric
from mmengine.logging import MMLogger
from mmpretrain.registry import METRICS

from galddc_mm.datasets.long_tail import BANDS, class_bands, head_tail_masks

CSV_FIELDS = ('class_idx', 'class_name', 'train_count', 'band', 'group',
              'num_eval', 'num_correct', 'accuracy')


@METRICS.register_module()
class LongTailAccuracy(BaseMetric):
    r"""Top-k, many/medium/few-shot, head/tail and mean-class accuracy.

    The evaluation protocol of long-tailed recognition (Liu et al., OLTR,
    CVPR 2019). Classes are grouped by their number of **training** images
    :math:`n_c` (never by their test frequency):

    * many-shot :math:`n_c > \text{many\_thr}`, few-shot
      :math:`n_c < \text{few\_thr}`, medium-shot otherwise;
    * with ``tau`` given, head :math:`n_c \ge \tau` and tail
      :math:`0 < n_c < \tau` (the split GALD-DC calibrates, from
      :func:`~galddc_mm.datasets.head_tail_masks`; a class without training
      images is neither).

    With :math:`a_c` the top-1 accuracy of class ``c`` over its evaluation
    samples, the accuracy of a group :math:`G` is, for
    ``average='class'`` (default; OLTR's ``shot_acc`` in its ``utils.py``)

    .. math:: \text{acc}(G) = \frac{1}{|G'|} \sum_{c \in G'} a_c,

    where :math:`G'` are the classes of ``G`` with at least one evaluation
    sample; for ``average='sample'`` it is the fraction of correct
    predictions over all evaluation samples whose class is in ``G``. On a
    class-balanced test set (ImageNet-LT, Places-LT, iNat2018, CIFAR-LT)
    both are equal. ``mean_class`` is :math:`\text{acc}` over all classes
    with class averaging. ``top{k}`` is the usual per-sample top-k accuracy;
    a ``k > 1`` with ``k >= K`` is skipped (it would be 100%). All values
    are in percent, like mmpretrain's ``Accuracy``.

    Result keys (with the default prefix): ``accuracy/top1``,
    ``accuracy/top5``, ``accuracy/many``, ``accuracy/medium``,
    ``accuracy/few``, ``accuracy/head``, ``accuracy/tail`` and
    ``accuracy/mean_class``. A group without evaluated classes has no key
    (a log line says so).

    **Training counts** come from ``class_counts`` if given, else from
    ``self.dataset_meta['class_counts']``, which the ``ValLoop`` /
    ``TestLoop`` copy from the data set's metainfo (every long-tailed data
    set of :mod:`galddc_mm.datasets` puts them there).

    **Per-class file.** ``<per_class_file>.json`` and
    ``<per_class_file>.csv`` are written to ``save_dir`` (default: the
    folder of the current ``MMLogger``'s log file, i.e.
    ``work_dir/<timestamp>/`` under a runner; nothing is written when there
    is no log file and no ``save_dir``). They are rewritten at each
    evaluation. The CSV has one row per class with the columns
    ``class_idx, class_name, train_count, band, group, num_eval,
    num_correct, accuracy`` (``group`` is ``head``/``tail``, empty without
    ``tau``; ``accuracy`` is top-1 in percent, empty without evaluation
    samples). The JSON holds ``{'metrics': {...}, 'many_thr', 'few_thr',
    'tau', 'average', 'classes': [one dict per class with the CSV
    columns]}`` (``null`` for the empty fields).

    **Post-hoc logit adjustment** (Menon et al., ICLR 2021). With
    ``logit_adjust_tau`` :math:`\tau > 0` the predictions are ranked by

    .. math:: \log p_c - \tau \log \pi_c,

    :math:`p` the model's ``pred_score`` (a softmax, so :math:`\log p_c` is
    the logit up to a per-sample constant and the ranking is that of
    logits minus :math:`\tau \log \pi_c`) and :math:`\pi_c = n_c / \sum n`
    the training prior (a class without training images counts as one
    image, so its adjustment stays finite). Any trained model can be
    evaluated so, e.g. ``tools/test.py CONFIG CKPT --cfg-options
    test_evaluator.logit_adjust_tau=1.0``; choose :math:`\tau` on val.

    Only the top-k indices of each prediction are kept between batches
    (not the K scores), so iNaturalist's 8,142 classes cost no memory and
    the distributed collection stays small.

    Args:
        topk (int | Sequence[int]): The k of the top-k accuracies.
            Defaults to (1, 5).
        many_thr (int): More training images than this: many-shot.
            Defaults to 100.
        few_thr (int): Fewer training images than this: few-shot.
            Defaults to 20.
        tau (int, optional): Head/tail threshold on the training count.
            Defaults to None (no head/tail keys).
        class_counts (Sequence[int], optional): Training images per class,
            overriding the data set's. Defaults to None.
        average (str): ``'class'`` or ``'sample'``, see above.
            Defaults to ``'class'``.
        save_dir (str, optional): Folder of the per-class files. Defaults
            to None (the log file's folder).
        per_class_file (str, optional): Base name of the per-class files;
            None disables them. Give the val and test evaluators different
            names. Defaults to ``'per_class_accuracy'``.
        logit_adjust_tau (float): :math:`\tau` of the post-hoc logit
            adjustment, see above; needs ``pred_score``. Defaults to 0.0
            (none).
        collect_device (str): ``'cpu'`` or ``'gpu'``. Defaults to 'cpu'.
        prefix (str, optional): Key prefix. Defaults to None
            (``'accuracy'``).
        collect_dir (str, optional): Folder for collecting results across
            ranks with ``collect_device='cpu'``. Defaults to None.
    """
    default_prefix: Optional[str] = 'accuracy'

    def __init__(self,
                 topk: Union[int, Sequence[int]] = (1, 5),
                 many_thr: int = 100,
                 few_thr: int = 20,
                 tau: Optional[int] = None,
                 class_counts: Optional[Sequence[int]] = None,
                 average: str = 'class',
                 save_dir: Optional[str] = None,
                 per_class_file: Optional[str] = 'per_class_accuracy',
                 logit_adjust_tau: float = 0.0,
                 collect_device: str = 'cpu',
                 prefix: Optional[str] = None,
                 collect_dir: Optional[str] = None) -> None:
        super().__init__(
            collect_device=collect_device,
            prefix=prefix,
            collect_dir=collect_dir)
        self.topk = (topk, ) if isinstance(topk, int) else tuple(topk)
        if not self.topk or any(
                int(k) != k or k < 1 for k in self.topk):
            raise ValueError(
                f'topk must be positive integers, got {topk}.')
        if few_thr > many_thr:
            raise ValueError(f'few_thr ({few_thr}) must not exceed many_thr '
                             f'({many_thr}).')
        if average not in ('class', 'sample'):
            raise ValueError(f"average must be 'class' or 'sample', got "
                             f'{average!r}.')
        if tau is not None and tau < 0:
            raise ValueError(f'tau must be >= 0 or None, got {tau}.')
        if not logit_adjust_tau >= 0:
            raise ValueError('logit_adjust_tau must be >= 0, got '
                             f'{logit_adjust_tau}.')
        self.logit_adjust_tau = float(logit_adjust_tau)
        self._log_prior = None
        if class_counts is not None:
            class_counts = self._check_counts(class_counts, 'class_counts')
        self.many_thr = many_thr
        self.few_thr = few_thr
        self.tau = tau
        self.class_counts = class_counts
        self.average = average
        self.save_dir = save_dir
        self.per_class_file = per_class_file

    @staticmethod
    def _check_counts(counts, source: str) -> np.ndarray:
        counts = np.asarray(counts)
        if counts.ndim != 1 or len(counts) == 0 or \
                not np.issubdtype(counts.dtype, np.integer) or \
                (counts < 0).any():
            raise ValueError(
                f'{source} must be a non-empty 1-D list of non-negative '
                f'integers (training images per class), got {counts!r}.')
        return counts.astype(np.int64)

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        """Keep the top-k predicted labels and the label of each sample.

        Args:
            data_batch: A batch of data from the dataloader (unused).
            data_samples (Sequence[dict]): The model outputs, with
                ``pred_score`` (K,) or ``pred_label``, and ``gt_label``.
        """
        maxk = max(self.topk)
        for data_sample in data_samples:
            gt_label = torch.as_tensor(data_sample['gt_label'])
            result = dict(gt_label=int(gt_label.reshape(-1)[0]))
            if 'pred_score' in data_sample:
                score = torch.as_tensor(data_sample['pred_score']).reshape(-1)
                if self.logit_adjust_tau > 0:
                    score = self.adjust(score)
                k = min(maxk, score.numel())
                result['pred_topk'] = score.topk(k).indices.cpu()
                result['num_scores'] = score.numel()
            else:
                if self.logit_adjust_tau > 0:
                    raise ValueError(
                        'logit_adjust_tau needs the class scores '
                        '(pred_score), but the predictions carry only a '
                        'label.')
                result['pred_topk'] = torch.as_tensor(
                    data_sample['pred_label']).reshape(-1)[:1].cpu()
                result['num_scores'] = None
            self.results.append(result)

    def adjust(self, score: torch.Tensor) -> torch.Tensor:
        """``log(score) - logit_adjust_tau * log(prior)`` (see above).

        Args:
            score (Tensor): One sample's class probabilities, ``(K, )``.

        Returns:
            Tensor: The adjusted scores, float64, ``(K, )``.
        """
        if self._log_prior is None:
            counts = np.maximum(self._get_class_counts(), 1).astype(float)
            self._log_prior = torch.from_numpy(np.log(counts / counts.sum()))
        if score.numel() != self._log_prior.numel():
            raise ValueError(
                f'The predictions have {score.numel()} class scores but the '
                f'training class counts have {self._log_prior.numel()} '
                'entries.')
        log_p = score.double().cpu().clamp_min(1e-300).log()
        return log_p - self.logit_adjust_tau * self._log_prior

    def _get_class_counts(self) -> np.ndarray:
        if self.class_counts is not None:
            return self.class_counts
        meta = self.dataset_meta or {}
        if meta.get('class_counts') is None:
            raise RuntimeError(
                'LongTailAccuracy needs the number of training images per '
                "class: evaluate a galddc_mm long-tailed data set (its "
                "metainfo carries 'class_counts') or pass "
                'class_counts=[...] to the metric.')
        return self._check_counts(meta['class_counts'],
                                  "dataset_meta['class_counts']")

    def compute_metrics(self, results: List[dict]) -> Dict[str, float]:
        """Compute the accuracies from the collected results.

        Args:
            results (list[dict]): The results of :meth:`process` over the
                whole evaluation set.

        Returns:
            dict[str, float]: The metrics (in percent), without prefix.
        """
        logger = MMLogger.get_current_instance()
        # The next evaluation may see another data set's counts.
        self._log_prior = None
        counts = self._get_class_counts()
        num_classes = len(counts)
        target = torch.tensor([r['gt_label'] for r in results])
        num_scores = results[0]['num_scores']
        if num_scores is not None and num_scores != num_classes:
            raise ValueError(
                f'The predictions have {num_scores} class scores but the '
                f'training class counts have {num_classes} entries; the '
                'model and the data set disagree on the number of classes.')
        if target.min() < 0 or target.max() >= num_classes:
            raise ValueError(
                f'Ground-truth labels span [{int(target.min())}, '
                f'{int(target.max())}] but the training class counts have '
                f'{num_classes} entries.')
        kmax = min(len(r['pred_topk']) for r in results)
        pred = torch.stack([r['pred_topk'][:kmax] for r in results])
        hits = pred == target[:, None]

        metrics = {}
        skipped = []
        for k in self.topk:
            if k == 1 or (k < num_classes and k <= kmax):
                hit_k = hits[:, :k].any(1).double()
                metrics[f'top{k}'] = hit_k.mean().item() * 100
            else:
                skipped.append(k)
        if skipped:
            logger.info(f'LongTailAccuracy: top-k for k={skipped} skipped '
                        f'(K={num_classes} classes, {kmax} ranked '
                        'predictions kept).')

        correct = hits[:, 0].numpy()
        labels = target.numpy()
        num_eval = np.bincount(labels, minlength=num_classes)
        num_correct = np.bincount(
            labels, weights=correct, minlength=num_classes).astype(np.int64)
        evaluated = num_eval > 0
        class_acc = np.full(num_classes, np.nan)
        class_acc[evaluated] = (
            num_correct[evaluated] / num_eval[evaluated] * 100)

        bands = class_bands(counts, self.many_thr, self.few_thr)
        groups = {band: bands == band for band in BANDS}
        group_names = np.full(num_classes, '', dtype=object)
        if self.tau is not None:
            groups['head'], groups['tail'] = head_tail_masks(
                counts, self.tau)
            group_names[groups['head']] = 'head'
            group_names[groups['tail']] = 'tail'
        empty = []
        for name, mask in groups.items():
            mask = mask & evaluated
            if not mask.any():
                empty.append(name)
            elif self.average == 'class':
                metrics[name] = float(class_acc[mask].mean())
            else:
                metrics[name] = float(num_correct[mask].sum() /
                                      num_eval[mask].sum() * 100)
        if empty:
            logger.info(
                f'LongTailAccuracy: no evaluated class in {empty} '
                f'(many_thr={self.many_thr}, few_thr={self.few_thr}, '
                f'tau={self.tau}); those keys are left out.')
        metrics['mean_class'] = float(class_acc[evaluated].mean())

        save_dir = self._resolve_save_dir()
        if save_dir is not None:
            self._dump_per_class(save_dir, metrics, counts, bands,
                                 group_names, num_eval, num_correct,
                                 class_acc)
        return metrics

    def _resolve_save_dir(self) -> Optional[str]:
        if self.per_class_file is None:
            return None
        if self.save_dir is not None:
            return self.save_dir
        log_file = getattr(MMLogger.get_current_instance(), 'log_file', None)
        return osp.dirname(osp.abspath(log_file)) if log_file else None

    def _dump_per_class(self, save_dir, metrics, counts, bands, group_names,
                        num_eval, num_correct, class_acc) -> None:
        names = (self.dataset_meta or {}).get('classes')
        if names is None or len(names) != len(counts):
            names = [str(i) for i in range(len(counts))]
        rows = []
        for c in range(len(counts)):
            rows.append(
                dict(
                    class_idx=c,
                    class_name=str(names[c]),
                    train_count=int(counts[c]),
                    band=str(bands[c]),
                    group=group_names[c] or None,
                    num_eval=int(num_eval[c]),
                    num_correct=int(num_correct[c]),
                    accuracy=None if np.isnan(class_acc[c]) else float(
                        class_acc[c])))
        os.makedirs(save_dir, exist_ok=True)
        base = osp.join(save_dir, self.per_class_file)
        prefix = f'{self.prefix}/' if self.prefix else ''
        with open(base + '.json', 'w', encoding='utf-8') as f:
            json.dump(
                dict(
                    metrics={prefix + k: v
                             for k, v in metrics.items()},
                    many_thr=self.many_thr,
                    few_thr=self.few_thr,
                    tau=self.tau,
                    average=self.average,
                    classes=rows),
                f,
                indent=1)
        with open(base + '.csv', 'w', encoding='utf-8', newline='') as f:
            writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
            writer.writeheader()
            for row in rows:
                writer.writerow(
                    {k: ('' if v is None else v)
                     for k, v in row.items()})
        MMLogger.get_current_instance().info(
            f'LongTailAccuracy: per-class accuracy written to {base}.json '
            'and .csv')
