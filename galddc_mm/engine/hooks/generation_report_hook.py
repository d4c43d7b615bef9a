# Copyright (c) galddc_mm contributors. All rights reserved.
import json
import os.path as osp
from typing import Optional, Sequence

import torch
from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmpretrain.registry import HOOKS
from mmpretrain.utils import get_ori_model

from galddc_mm.datasets.long_tail import class_bands
from galddc_mm.models.classifiers.stages import DIFFUSION


@HOOKS.register_module()
class GenerationReportHook(Hook):
    """Check stage 2 before paying for stage 3: what does theta generate?

    At the end of the diffusion stage (and whenever :meth:`report` is called)
    this hook samples ``num_per_class`` latents of every class with the
    diffusion head's DDIM sampler and compares them with the geometry of
    the real latents:

    - ``proto_dist``: ||mean(generated) - mu_real|| (how far the generated
      class centre sits from the real prototype), and ``proto_dist_rel``,
      the same divided by the real radius r_real;
    - ``gen_radius``: mean distance of the generated latents to their own
      mean, next to ``r_real`` (real latents at initialisation), ``r_obs``
      (the EMA of stage 2) and ``r_cal`` (the calibrated target);
    - ``gen_acc``: accuracy of the frozen classifier G on the generated
      latents (did theta learn the right class-conditional?).

    Everything is saved per class in ``{work_dir}/generation_report.json``
    with per-band (many / medium / few by training count) and head/tail
    summaries, which are also logged.

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
    """

    priority = 'LOW'

    def __init__(self,
                 num_per_class: int = 50,
                 chunk_size: int = 4096,
                 many_thr: int = 100,
                 few_thr: int = 20,
                 sampling: Optional[dict] = None,
                 seed: int = 0):
        if num_per_class < 2:
            raise ValueError('num_per_class must be >= 2 to measure a '
                             f'radius, got {num_per_class}.')
        self.num_per_class = num_per_class
        self.chunk_size = chunk_size
        self.many_thr = many_thr
        self.few_thr = few_thr
        self.sampling = dict(sampling or {})
        self.seed = seed

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
            self.report(runner)

    @torch.no_grad()
    def generate(self, model) -> tuple:
        """Sample ``num_per_class`` latents for every valid class."""
        geometry = model.geometry
        device = geometry.prototypes.device
        classes = torch.nonzero(geometry.valid_mask).flatten()
        labels = classes.repeat_interleave(self.num_per_class).to(device)
        rng_state = torch.random.get_rng_state()
        cuda_state = (torch.cuda.get_rng_state_all()
                      if torch.cuda.is_available() else None)
        torch.manual_seed(self.seed)
        try:
            latents = torch.cat([
                model.generate_latents(labels[i:i + self.chunk_size],
                                       **self.sampling)
                for i in range(0, labels.numel(), self.chunk_size)
            ])
        finally:
            # Reporting must not change the training run's random stream.
            torch.random.set_rng_state(rng_state)
            if cuda_state is not None:
                torch.cuda.set_rng_state_all(cuda_state)
        return latents, labels

    @torch.no_grad()
    def compute(self, model) -> dict:
        """The report as a dict (see the class docstring)."""
        model = get_ori_model(model)
        geometry = model.geometry
        latents, labels = self.generate(model)
        num_classes = geometry.counts.numel()
        k = self.num_per_class
        classes = labels[::k]
        gen = latents.view(-1, k, latents.size(-1))
        centre = gen.mean(dim=1)
        gen_radius = (gen - centre[:, None]).norm(dim=-1).mean(dim=1)
        real_protos = getattr(geometry, 'real_prototypes',
                              geometry.prototypes)[classes]
        proto_dist = (centre - real_protos).norm(dim=-1)
        logits = model.classify_latents(latents)
        correct = (logits.argmax(dim=1) == labels).float().view(-1, k)
        gen_acc = correct.mean(dim=1) * 100

        counts = geometry.counts[classes]
        head_mask = geometry.head_mask[classes]
        bands = class_bands(counts.cpu().numpy(), self.many_thr, self.few_thr)
        per_class = []
        for i, c in enumerate(classes.tolist()):
            n = int(counts[i])
            band = str(bands[i])
            r_real = float(geometry.r_real[c])
            per_class.append(
                dict(
                    cls=c,
                    train_count=n,
                    band=band,
                    split='head' if bool(head_mask[i]) else 'tail',
                    proto_dist=float(proto_dist[i]),
                    proto_dist_rel=float(proto_dist[i]) / max(r_real, 1e-12),
                    gen_radius=float(gen_radius[i]),
                    r_real=r_real,
                    r_obs=float(geometry.r_obs[c]),
                    r_cal=float(geometry.r_cal[c]),
                    gen_acc=float(gen_acc[i])))

        def summarise(rows: Sequence[dict]) -> dict:
            if not rows:
                return {}
            keys = ('proto_dist', 'proto_dist_rel', 'gen_radius', 'r_real',
                    'r_obs', 'r_cal', 'gen_acc')
            out = {key: sum(r[key] for r in rows) / len(rows) for key in keys}
            out['radius_ratio'] = out['gen_radius'] / max(out['r_real'],
                                                          1e-12)
            out['num_classes'] = len(rows)
            return out

        groups = {
            'all': per_class,
            'many': [r for r in per_class if r['band'] == 'many'],
            'medium': [r for r in per_class if r['band'] == 'medium'],
            'few': [r for r in per_class if r['band'] == 'few'],
            'head': [r for r in per_class if r['split'] == 'head'],
            'tail': [r for r in per_class if r['split'] == 'tail'],
        }
        return dict(
            num_classes=num_classes,
            num_per_class=k,
            r_prior=float(geometry.r_prior),
            summary={
                name: summarise(rows)
                for name, rows in groups.items() if rows
            },
            per_class=per_class)

    def report(self, runner) -> dict:
        """Compute, log and save the report (main process writes)."""
        report = self.compute(runner.model)
        report['epoch'] = runner.epoch + 1
        if is_main_process():
            path = osp.join(runner.work_dir, 'generation_report.json')
            with open(path, 'w') as f:
                json.dump(report, f, indent=2)
            lines = [
                'Generation report (stage 2): '
                f'{self.num_per_class} DDIM latents per class, '
                f'r_prior={report["r_prior"]:.4g}; saved to {path}',
                f'{"group":>7} {"classes":>7} {"gen_acc%":>8} '
                f'{"proto_dist/r_real":>17} {"gen_r":>8} {"r_real":>8} '
                f'{"r_obs":>8} {"r_cal":>8}'
            ]
            for name, s in report['summary'].items():
                lines.append(
                    f'{name:>7} {s["num_classes"]:>7d} {s["gen_acc"]:>8.2f} '
                    f'{s["proto_dist_rel"]:>17.3f} {s["gen_radius"]:>8.4g} '
                    f'{s["r_real"]:>8.4g} {s["r_obs"]:>8.4g} '
                    f'{s["r_cal"]:>8.4g}')
            runner.logger.info('\n'.join(lines))
        return report
