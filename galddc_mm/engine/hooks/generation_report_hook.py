# Copyright (c) galddc_mm contributors. All rights reserved.
import json
import math
import os.path as osp
from typing import List, Optional, Sequence

import torch
from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmpretrain.registry import HOOKS
from mmpretrain.utils import get_ori_model

from galddc_mm.evaluation.generation_quality import generation_report
from galddc_mm.models.classifiers.stages import DIFFUSION, FINETUNE

GATE_MODES = ('error', 'warn', 'off')


class GenerationGateError(RuntimeError):
    """Stage 2's generated latents are unfit to train stage 3 on."""


def sample_with_seed(model,
                     labels: torch.Tensor,
                     seed: int,
                     sampling: Optional[dict] = None,
                     chunk_size: Optional[int] = None) -> torch.Tensor:
    """``model.generate_latents(labels)`` in eval mode from a fixed seed.

    The CPU and CUDA random states are restored afterwards, so a report
    does not change the training run's random stream.

    Args:
        model: The unwrapped GALD-DC model.
        labels (Tensor): Classes to sample, ``(N, )``.
        seed (int): Seed of the sampling.
        sampling (dict, optional): Overrides of the DDIM sampler.
        chunk_size (int, optional): Latents per sampler call (None: all).

    Returns:
        Tensor: The latents, ``(N, D)``.
    """
    chunk = chunk_size or max(1, labels.numel())
    rng_state = torch.random.get_rng_state()
    cuda_state = (torch.cuda.get_rng_state_all()
                  if torch.cuda.is_available() else None)
    torch.manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        return torch.cat([
            model.generate_latents(labels[i:i + chunk], **(sampling or {}))
            for i in range(0, labels.numel(), chunk)
        ])
    finally:
        model.train(was_training)
        torch.random.set_rng_state(rng_state)
        if cuda_state is not None:
            torch.cuda.set_rng_state_all(cuda_state)


@HOOKS.register_module()
class GenerationReportHook(Hook):
    """Measure what stage 2 generates, and stop before stage 3 if it is bad.

    **Report.** At the end of the diffusion stage this hook samples
    ``num_per_class`` latents of every class with the model's DDIM sampler
    (:meth:`GALDDCClassifier.generate_latents`, fixed seed) and measures
    them against the real latents of the cache (see
    :mod:`galddc_mm.evaluation.generation_quality`): radius reached
    (``/ r_cal``, ``/ r_real``), diagonal Fréchet distance, precision and
    recall on k-NN manifolds, memorisation of tail samples, and G's
    accuracy on the generated latents; per class and per band (many /
    medium / few, head / tail). It is logged as a table and saved to
    ``{work_dir}/generation_report.json``.

    **Gate.** Stage 3 trains the classifier on these latents, so before it
    starts the report must pass: every generated latent finite; every
    band's mean ``gen_radius / r_real`` within ``radius_range``; G's
    accuracy on the generated latents at least ``min_gen_acc``. Otherwise
    (``gate='error'``) training stops with :class:`GenerationGateError`
    naming the band, the figures and what to change; the hook runs after
    the checkpoint of stage 2's last epoch is written, so that checkpoint is
    kept and ``--resume`` continues from it once the config is fixed (the
    gate is checked again when a resumed run enters stage 3). With
    ``gate='warn'`` the failure is logged as a warning and training goes on;
    ``'off'`` skips the check.

    Args:
        num_per_class (int): Latents generated per class. Defaults to 50.
        chunk_size (int): Latents sampled per sampler call. Defaults to 4096.
        many_thr (int): More training images than this is "many".
            Defaults to 100.
        few_thr (int): Fewer training images than this is "few".
            Defaults to 20.
        sampling (dict, optional): Overrides of the DDIM sampler
            (``num_steps``, ``eta``, ``guidance_scale``). Defaults to None.
        seed (int): Seed of the sampling noise, so reports are comparable
            between runs. Defaults to 0.
        gate (str): ``'error'``, ``'warn'`` or ``'off'``. Defaults to
            ``'error'``.
        radius_range (Sequence[float]): Allowed band mean of
            ``gen_radius / r_real``. Defaults to (0.25, 4.0).
        min_gen_acc (float, optional): Lowest allowed accuracy (%) of G on
            the generated latents. Defaults to None: twice chance,
            ``200 / K``.
        pr_k (int): Neighbour rank of precision/recall. Defaults to 3.
        max_real_per_band (int): Real latents per band used for
            precision/recall at most. Defaults to 20000.
    """

    # After the CheckpointHook ('VERY_LOW'): stage 2's last checkpoint is on
    # disk when the gate stops a run.
    priority = 'LOWEST'

    def __init__(self,
                 num_per_class: int = 50,
                 chunk_size: int = 4096,
                 many_thr: int = 100,
                 few_thr: int = 20,
                 sampling: Optional[dict] = None,
                 seed: int = 0,
                 gate: str = 'error',
                 radius_range: Sequence[float] = (0.25, 4.0),
                 min_gen_acc: Optional[float] = None,
                 pr_k: int = 3,
                 max_real_per_band: int = 20000):
        if num_per_class < 2:
            raise ValueError('num_per_class must be >= 2 to measure a '
                             f'radius, got {num_per_class}.')
        if gate not in GATE_MODES:
            raise ValueError(f'gate must be one of {GATE_MODES}, got '
                             f'{gate!r}.')
        lo, hi = radius_range
        if not 0 < lo < hi:
            raise ValueError('radius_range must be (low, high) with '
                             f'0 < low < high, got {radius_range!r}.')
        self.num_per_class = num_per_class
        self.chunk_size = chunk_size
        self.many_thr = many_thr
        self.few_thr = few_thr
        self.sampling = dict(sampling or {})
        self.seed = seed
        self.gate = gate
        self.radius_range = (float(lo), float(hi))
        self.min_gen_acc = min_gen_acc
        self.pr_k = pr_k
        self.max_real_per_band = max_real_per_band
        self._gated = False

    def before_train(self, runner) -> None:
        # Fail before training, not after stage 2, on a bad step count.
        head = get_ori_model(get_ori_model(runner.model).diffusion_head)
        head.check_sampling_steps(
            self.sampling.get('num_steps'),
            f'{type(self).__name__}.sampling.num_steps')

    def after_train_epoch(self, runner) -> None:
        loop = runner.train_loop
        if not hasattr(loop, 'stage_at'):
            return
        stage = loop.stage_at(runner.epoch)
        if stage.name == DIFFUSION and runner.epoch + 1 == stage.end:
            cache = getattr(loop, 'latent_cache', None)
            self._check(runner, self.report(runner, cache))

    def before_train_epoch(self, runner) -> None:
        # A run resumed at the start of stage 3 has not seen the gate.
        stage = getattr(runner.train_loop, 'current_stage', None)
        if (stage is not None and stage.name == FINETUNE
                and stage.pseudo_latents and runner.epoch == stage.begin
                and not self._gated):
            self._check(runner, self.report(runner, None))

    @torch.no_grad()
    def generate(self, model) -> tuple:
        """Sample ``num_per_class`` latents for every valid class."""
        geometry = model.geometry
        device = geometry.prototypes.device
        classes = torch.nonzero(geometry.valid_mask).flatten()
        labels = classes.repeat_interleave(self.num_per_class).to(device)
        latents = sample_with_seed(model, labels, self.seed, self.sampling,
                                   self.chunk_size)
        return latents, labels

    @torch.no_grad()
    def compute(self, model, real=None, real_labels=None) -> dict:
        """The report as a dict (see :func:`generation_report`).

        Args:
            model: The GALD-DC model (wrapped or not).
            real (Tensor, optional): Real training latents, for the metrics
                that need them (Fréchet distance, precision/recall,
                memorisation).
            real_labels (Tensor, optional): Their classes.
        """
        model = get_ori_model(model)
        geometry = model.geometry
        latents, labels = self.generate(model)
        logits = torch.cat([
            model.classify_latents(latents[i:i + self.chunk_size].float())
            for i in range(0, latents.size(0), self.chunk_size)
        ])
        report = generation_report(
            latents,
            labels,
            logits,
            counts=geometry.counts,
            r_real=geometry.r_real,
            r_cal=geometry.r_cal,
            real_prototypes=geometry.real_prototypes,
            tau=geometry.tau,
            r_obs=geometry.r_obs,
            real=real,
            real_labels=real_labels,
            many_thr=self.many_thr,
            few_thr=self.few_thr,
            k=self.pr_k,
            max_real_per_band=self.max_real_per_band)
        report.update(
            num_per_class=self.num_per_class,
            r_prior=float(geometry.r_prior),
            gate=self.gate_checks(report))
        return report

    def gate_checks(self, report: dict) -> dict:
        """The gate's verdict on a report: ``passed`` and ``problems``."""
        problems: List[str] = []
        if report['nonfinite']:
            problems.append(
                f'{report["nonfinite"]} of {report["num_generated"]} '
                'generated latents are not finite (NaN/Inf)')
        lo, hi = self.radius_range
        for name, s in report['summary'].items():
            if name == 'all':
                continue
            ratio = s.get('radius_to_real')
            if ratio is not None and not lo <= ratio <= hi:
                problems.append(
                    f"band '{name}' ({s['num_classes']} classes): generated "
                    f"radius {_fmt(s['gen_radius'])} vs real "
                    f"{_fmt(s['r_real'])}, mean ratio {_fmt(ratio)} outside "
                    f'[{lo:g}, {hi:g}]')
        floor = self.min_gen_acc
        if floor is None:
            floor = 200.0 / max(report['num_classes'], 1)
        acc = report['summary'].get('all', {}).get('gen_acc')
        if acc is None or acc < floor:
            problems.append(
                f'G classifies {_fmt(acc)}% of the generated latents as '
                f'their class (floor {floor:.3g}%, twice chance unless '
                'min_gen_acc is set)')
        return dict(passed=not problems, problems=problems,
                    radius_range=list(self.radius_range), min_gen_acc=floor)

    def report(self, runner, cache=None) -> dict:
        """Compute, log and save the report (main process writes)."""
        real = None if cache is None else cache.latents
        labels = None if cache is None else cache.labels
        report = self.compute(runner.model, real, labels)
        report['epoch'] = runner.epoch + 1
        if is_main_process():
            path = osp.join(runner.work_dir, 'generation_report.json')
            with open(path, 'w') as f:
                json.dump(report, f, indent=2)
            runner.logger.info(self._table(report, path, cache is None))
        return report

    def _table(self, report: dict, path: str, partial: bool) -> str:
        lines = [
            f'Generation report (stage 2): {self.num_per_class} DDIM latents '
            f'per class, r_prior={report["r_prior"]:.4g}; saved to {path}'
        ]
        if partial:
            lines.append('(no latent cache in this process: Frechet '
                         'distance, precision/recall and memorisation are '
                         'left out)')
        lines.append(
            f'{"group":>6} {"classes":>7} {"gen_acc%":>8} {"r/r_real":>8} '
            f'{"r/r_cal":>8} {"gen_r":>8} {"r_real":>8} {"r_cal":>8} '
            f'{"FD":>9} {"prec":>5} {"recall":>6} {"memo%":>6}')
        for name, s in report['summary'].items():
            memo = s.get('memorised')
            lines.append(
                f'{name:>6} {s["num_classes"]:>7d} {_fmt(s["gen_acc"]):>8} '
                f'{_fmt(s["radius_to_real"]):>8} '
                f'{_fmt(s["radius_to_cal"]):>8} {_fmt(s["gen_radius"]):>8} '
                f'{_fmt(s["r_real"]):>8} {_fmt(s["r_cal"]):>8} '
                f'{_fmt(s["fd"]):>9} {_fmt(s.get("precision")):>5} '
                f'{_fmt(s.get("recall")):>6} '
                f'{_fmt(None if memo is None else 100 * memo):>6}')
        return '\n'.join(lines)

    def _check(self, runner, report: dict) -> None:
        self._gated = True
        verdict = report['gate']
        if self.gate == 'off' or verdict['passed']:
            return
        last = runner.message_hub.get_info('last_ckpt')
        head = get_ori_model(get_ori_model(runner.model).diffusion_head)
        bound = ('' if head.clip_z0 is not None else
                 "bound the sampled estimate (model.diffusion_head.clip_z0="
                 "'data'), ")
        message = (
            'Generation gate: the latents stage 2 generates are unfit to '
            'train stage 3 on: ' + '; '.join(verdict['problems']) + '. ' +
            (f'The stage-2 checkpoint {last} is kept. ' if last else '') +
            'Train stage 2 longer (train_cfg.stages.<diffusion>.epochs or '
            f'.repeat), {bound}or lower the diffusion lr '
            '(optim_wrapper.diffusion.optimizer.lr); then resume with '
            "--resume. To go on anyway, set the hook's gate='warn' (e.g. "
            "--cfg-options custom_hooks.0.gate=warn). Details: "
            'generation_report.json.')
        if self.gate == 'warn':
            runner.logger.warning(message)
            return
        raise GenerationGateError(message)


def _fmt(value) -> str:
    if value is None or not math.isfinite(value):
        return '-'
    return f'{value:.4g}'
