# Copyright (c) galddc_mm contributors. All rights reserved.
import json
import os.path as osp
from typing import Optional

import numpy as np
import torch
from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmpretrain.registry import HOOKS
from mmpretrain.utils import get_ori_model

from galddc_mm.datasets.long_tail import head_tail_masks
from galddc_mm.evaluation.generation_quality import (
    class_moments,
    nearest_same_class,
    precision_recall,
)
from galddc_mm.models.classifiers.stages import DIFFUSION

from .generation_report_hook import sample_with_seed


def _mean(values) -> Optional[float]:
    values = [float(v) for v in values if v is not None and np.isfinite(v)]
    return sum(values) / len(values) if values else None


@HOOKS.register_module()
class KnownAnswerHook(Hook):
    """Compare what stage 2 generates with the *true* class distributions.

    For data sets whose truth is known (:class:`GaussianLatentLT`: every
    class a Gaussian with a known mean and covariance). At the end of the
    diffusion stage it samples ``num_per_class`` latents per class
    (:meth:`GALDDCClassifier.generate_latents`, fixed seed) and measures,
    per class and summarised over head / tail classes:

    - ``radius_to_true``: generated radius (mean distance to the generated
      mean) over the true radius :math:`E\\|x - \\mu_c\\|`;
      ``radius_error`` is ``|radius_to_true - 1|``; ``target_to_true`` is
      the calibrated target ``r_cal`` over the true radius (does the
      calibration aim at the truth?);
    - ``fd_true``: Fréchet distance to the true Gaussian, with diagonal
      covariances (exact for isotropic classes);
    - ``precision`` / ``recall`` of the true distribution (k-NN manifolds,
      Kynkäänniemi et al.) against ``true_per_class`` fresh true draws per
      class, pooled over the group;
    - ``memorised``: the share of generated latents closer than
      ``memorised_below`` true radii to a *training* latent of their class.

    Written to ``{work_dir}/known_answer.json`` and logged. G's accuracy on
    the large test set is in ``final_metrics.json``.

    Args:
        num_per_class (int): Generated latents per class. Defaults to 200.
        true_per_class (int): True draws per class for precision/recall.
            Defaults to 200.
        seed (int): Seed of the sampling and of the true draws.
            Defaults to 0.
        sampling (dict, optional): Overrides of the DDIM sampler.
        k (int): Neighbour rank of precision/recall. Defaults to 3.
        memorised_below (float): In true radii. Defaults to 0.1.
    """

    priority = 'LOWEST'

    def __init__(self,
                 num_per_class: int = 200,
                 true_per_class: int = 200,
                 seed: int = 0,
                 sampling: Optional[dict] = None,
                 k: int = 3,
                 memorised_below: float = 0.1):
        self.num_per_class = num_per_class
        self.true_per_class = true_per_class
        self.seed = seed
        self.sampling = dict(sampling or {})
        self.k = k
        self.memorised_below = memorised_below

    def after_train_epoch(self, runner) -> None:
        loop = runner.train_loop
        stage = loop.stage_at(runner.epoch)
        if stage.name == DIFFUSION and runner.epoch + 1 == stage.end:
            report = self.compute(runner.model,
                                  loop.image_dataloader.dataset,
                                  loop.latent_cache)
            if is_main_process():
                path = osp.join(runner.work_dir, 'known_answer.json')
                with open(path, 'w') as f:
                    json.dump(report, f, indent=2)
                runner.logger.info(self._table(report, path))

    @torch.no_grad()
    def compute(self, model, dataset, cache=None) -> dict:
        """The known-answer report of ``model`` on ``dataset``'s truth.

        Args:
            model: The GALD-DC model (wrapped or not).
            dataset (GaussianLatentLT): A data set exposing its truth
                (``true_means``, ``true_covariance``, ``true_radius``,
                ``sample``).
            cache (LatentCache, optional): The training latents, for
                memorisation.
        """
        for attr in ('true_means', 'true_covariance', 'true_radius',
                     'sample'):
            if not hasattr(dataset, attr):
                raise TypeError(
                    f'KnownAnswerHook needs a data set with a known truth '
                    f'(GaussianLatentLT); {type(dataset).__name__} has no '
                    f'{attr!r}.')
        model = get_ori_model(model)
        geometry = model.geometry
        device = geometry.prototypes.device
        num_classes = geometry.num_classes
        labels = torch.arange(num_classes, device=device).repeat_interleave(
            self.num_per_class)
        generated = sample_with_seed(model, labels, self.seed,
                                     self.sampling).double()

        rng = np.random.default_rng([self.seed, 17])
        true_z = np.concatenate([
            dataset.sample(c, self.true_per_class, rng)
            for c in range(num_classes)
        ])
        true_z = torch.as_tensor(true_z, device=device)
        true_labels = torch.arange(
            num_classes, device=device).repeat_interleave(self.true_per_class)
        true_means = torch.as_tensor(
            np.asarray(dataset.true_means), device=device)
        true_var = torch.as_tensor(
            np.stack([np.diag(dataset.true_covariance(c))
                      for c in range(num_classes)]), device=device)
        true_radius = torch.as_tensor(
            [dataset.true_radius(c) for c in range(num_classes)],
            device=device, dtype=torch.float64)

        _, g_means, g_vars, g_radii = class_moments(generated, labels,
                                                    num_classes)
        fd = (((g_means - true_means)**2).sum(1) +
              ((g_vars.sqrt() - true_var.sqrt())**2).sum(1))
        ratio = g_radii / true_radius
        target = geometry.r_cal.double() / true_radius
        memorised = torch.full((num_classes, ), float('nan'),
                               dtype=torch.float64, device=device)
        if cache is not None:
            nn = nearest_same_class(generated, labels,
                                    cache.latents.double().to(device),
                                    cache.labels.to(device))
            close = (nn / true_radius[labels]) < self.memorised_below
            memorised = torch.zeros_like(memorised).index_add_(
                0, labels, close.double()) / self.num_per_class
        counts = geometry.counts.cpu()
        head, tail = head_tail_masks(counts, geometry.tau)
        rows = [
            dict(
                cls=c,
                train_count=int(counts[c]),
                split='head' if bool(head[c]) else 'tail',
                radius_to_true=float(ratio[c]),
                radius_error=abs(float(ratio[c]) - 1),
                target_to_true=float(target[c]),
                r_real_to_true=float(geometry.r_real[c] / true_radius[c]),
                fd_true=float(fd[c]),
                memorised=(None if torch.isnan(memorised[c]) else float(
                    memorised[c]))) for c in range(num_classes)
        ]
        summary = {}
        for name, mask in (('all', head | tail), ('head', head),
                           ('tail', tail)):
            members = [r for r in rows if bool(mask[r['cls']])]
            if not members:
                continue
            s = {
                key: _mean(r[key] for r in members)
                for key in ('radius_to_true', 'radius_error',
                            'target_to_true', 'r_real_to_true', 'fd_true',
                            'memorised')
            }
            classes = torch.as_tensor([r['cls'] for r in members],
                                      device=device)
            gen_sel = torch.isin(labels, classes)
            true_sel = torch.isin(true_labels, classes)
            s.update(
                precision_recall(true_z[true_sel].float(),
                                 generated[gen_sel].float(), self.k))
            s['num_classes'] = len(members)
            summary[name] = s
        return dict(
            num_per_class=self.num_per_class,
            true_per_class=self.true_per_class,
            true_radius=float(true_radius.mean()),
            summary=summary,
            per_class=rows)

    def _table(self, report: dict, path: str) -> str:
        lines = [
            'Known-answer report (stage 2 vs the true distributions, true '
            f'radius {report["true_radius"]:.4g}); saved to {path}',
            f'{"group":>5} {"classes":>7} {"r/true":>7} {"|r/true-1|":>10} '
            f'{"target/true":>11} {"FD":>8} {"prec":>5} {"recall":>6} '
            f'{"memo%":>6}'
        ]

        def fmt(v, scale=1.0):
            return '-' if v is None else f'{v * scale:.3g}'

        for name, s in report['summary'].items():
            lines.append(
                f'{name:>5} {s["num_classes"]:>7d} '
                f'{fmt(s["radius_to_true"]):>7} {fmt(s["radius_error"]):>10} '
                f'{fmt(s["target_to_true"]):>11} {fmt(s["fd_true"]):>8} '
                f'{fmt(s["precision"]):>5} {fmt(s["recall"]):>6} '
                f'{fmt(s["memorised"], 100):>6}')
        return '\n'.join(lines)
