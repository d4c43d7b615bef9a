# Copyright (c) galddc_mm contributors. All rights reserved.
"""Sampler benchmark: DDIM with few steps vs LDMLR's ancestral sampler.

:func:`bench_sampler` times, for a 64-d and a 2048-d latent space (16 and
64 with ``--tiny``), the T-step ancestral (DDPM) chain of
:func:`ancestral_sample`, the DDIM chain of 10/25/50 steps through the
head's fast path, the 25-step chain through the sampler's public ``step``
(the loop before the fast path), the 25-step chain with the denoiser's
conditioning computed per row (``ddim_25_per_row_t``, before the shared
timestep), and on CUDA the 25-step chain with the denoiser compiled
(``compile_denoiser``) and the DDIM chains captured as CUDA graphs.
"""
import copy

import torch
from mmpretrain.registry import MODELS

from . import internals
from .common import error_message
from .timing import time_loop

DDIM_STEPS = (10, 25, 50)


def ancestral_sample(head, labels: torch.Tensor,
                     coefs: list) -> torch.Tensor:
    r"""DDPM ancestral sampling over all T steps: LDMLR's sampler.

    Algorithm 2 of Ho et al. (2020), from :math:`z_T \sim N(0, I)`:

    .. math::
        z_{t-1} = \frac{1}{\sqrt{\alpha_t}} \left(z_t -
            \frac{\beta_t}{\sqrt{1 - \bar\alpha_t}}
            \epsilon_\theta(z_t, t, y)\right) + \sigma_t n,
        \quad \sigma_t^2 = \beta_t, \ n \sim N(0, I)

    (no noise at the last step). The reference of the DDIM benchmark:
    coefficients are host floats (``ancestral_coefficients``) and the
    network is the one :meth:`LatentDiffusionHead.sample` uses, so only the
    number of steps differs.

    Args:
        head (LatentDiffusionHead): The diffusion head.
        labels (torch.Tensor): Classes, ``(B, )``.
        coefs (list): ``(1 / sqrt(alpha_t), beta_t / sqrt(1 - abar_t),
            sigma_t)`` per timestep.

    Returns:
        torch.Tensor: Encoder-space latents ``(B, D)``.
    """
    device = labels.device
    denoiser = internals.sampling_denoiser(head, device)
    latent_dim, _ = internals.head_sizes(head)
    z = torch.randn(labels.shape[0], latent_dim, device=device)
    for t in range(len(coefs) - 1, -1, -1):
        c_scale, c_eps, sigma = coefs[t]
        t_in = torch.full((labels.shape[0], ), t, dtype=torch.long,
                          device=device)
        eps = denoiser(z, t_in, labels)
        z = c_scale * (z - c_eps * eps)
        if t > 0:
            z = z + sigma * torch.randn_like(z)
    return internals.denormalize(head, z)


def ancestral_coefficients(schedule) -> list:
    """Host-side ``(1/sqrt(alpha_t), beta_t/sqrt(1-abar_t), sqrt(beta_t))``."""
    # sqrt(1 - abar) from its own buffer (computed in float64): 1 - abar
    # of the float32 abar loses digits at small t.
    betas, root = internals.schedule_tables(schedule)
    return [(float(1 / (1 - b).sqrt()), float(b / r), float(b.sqrt()))
            for b, r in zip(betas, root)]


def sampler_head(ctx, dim):
    """A frozen LatentDiffusionHead sized like the recipe for ``dim``."""
    cfg = copy.deepcopy(ctx.galddc_cfg.model.diffusion_head.to_dict())
    if ctx.args.tiny:
        denoiser = dict(hidden_dim=32, num_blocks=2, time_embed_dim=16)
    elif dim >= 1024:  # configs/_base_/galddc_recipes/imagenet_lt_r50
        denoiser = dict(hidden_dim=2048, num_blocks=4, time_embed_dim=256)
    else:  # configs/_base_/galddc_recipes/cifar_lt_r32
        denoiser = dict(hidden_dim=512, num_blocks=4, time_embed_dim=128)
    cfg['denoiser'].update(denoiser)
    cfg.update(latent_dim=dim, num_classes=ctx.num_classes)
    head = MODELS.build(cfg)
    head.init_weights()
    internals.perturb_denoiser(head, std=0.02)
    head.to(ctx.device).eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(2)
    internals.fit_normalizer(
        head,
        torch.rand(512, dim, generator=gen).to(ctx.device))
    return head


def sampler_cases(ctx, head, labels):
    """``(label, fn, warmup, repeats)`` of the sampler benchmark."""
    dim, num_timesteps = internals.head_sizes(head)
    coefs = ancestral_coefficients(internals.noise_schedule(head))
    chain = internals.ddim_chain(head, 25)
    b, device = labels.shape[0], labels.device

    def step_api(_):
        # The pre-optimisation sampling loop: the public `step` with
        # 0-d device tensors as coefficients.
        denoiser = internals.sampling_denoiser(head, device)
        z = torch.randn(b, dim, device=device)
        for i, t in enumerate(chain):
            eps = denoiser(z, torch.full((b, ), t, device=device), labels)
            t_prev = chain[i + 1] if i + 1 < len(chain) else -1
            z = internals.ddim_step(head, eps, t, t_prev, z)
        return internals.denormalize(head, z)

    cases = [(f'ancestral_{num_timesteps}',
              lambda _: ancestral_sample(head, labels, coefs), 1, 3),
             ('ddim_25_step_api', step_api, 2, 10)]
    for steps in DDIM_STEPS:
        cases.append(
            (f'ddim_{steps}',
             lambda _, s=steps: internals.sample(head, labels, s), 2, 10))
    cases.append(('ddim_25_per_row_t',
                  lambda _: internals.sample_per_row_t(head, labels, 25), 2,
                  10))
    if ctx.cuda:
        # The first warm-up call compiles.
        cases.append(('ddim_25_compiled',
                      lambda _: internals.sample(
                          head, labels, 25, compile_denoiser=True), 2, 10))
        for steps in DDIM_STEPS:
            cases.append((f'ddim_{steps}_graph',
                          lambda _, s=steps: internals.sample(
                              head, labels, s, cuda_graph=True), 2, 10))
    return cases


@torch.no_grad()
def bench_sampler(ctx):
    """DDIM 10/25/50 steps vs 1000-step ancestral, 64-d and 2048-d."""
    dims = (16, 64) if ctx.args.tiny else (64, 2048)
    b = ctx.sampler_batch
    for dim in dims:
        ctx.reset()
        head = sampler_head(ctx, dim)
        labels = torch.randint(
            0, ctx.num_classes, (b, ), generator=ctx.gen).to(ctx.device)
        for label, fn, warmup, repeats in sampler_cases(ctx, head, labels):
            name = f'sampler_d{dim}@{label}'
            try:
                with ctx.autocast():
                    seconds, _ = time_loop(ctx, fn, lambda i: None, warmup,
                                           repeats)
            except Exception as exc:  # keep the other cases going
                ctx.record(name, error=error_message(exc))
                continue
            ctx.record(
                name,
                ms=seconds * 1e3,
                per_s=b / seconds,
                unit='latents/s',
                peak_mem_mib=ctx.peak_mib(),
                latent_dim=dim,
                batch=b)
