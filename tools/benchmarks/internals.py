# Copyright (c) galddc_mm contributors. All rights reserved.
"""Every call the benchmarks make past the models' public interface.

The benchmarks time GALD-DC's parts one at a time, so beyond
``MODELS.build``, ``init_weights``, ``data_preprocessor`` and
``train_step`` they reach into methods and buffers that are not a stable
API (some are being renamed). They do so only through the functions of
this module, so that such a rename is followed here and nowhere else:

* ``set_stage``: ``GALDDCClassifier.set_stage``;
* ``train_iteration``: ``train_step`` plus the EMA of the class statistics
  that ``ClassGeometryHook`` applies after a stage-2 step
  (``take_geometry_batch``, ``geometry.ema_update``);
* ``init_latent_state``: ``GALDDCClassifier.freeze_encoder_copy`` and
  ``fit_latent_statistics``;
* ``compile_diffusion_loss``: ``LatentDiffusionHead.loss`` (the stage-2
  losses), replaced by its ``torch.compile`` wrapper;
* ``encode_frozen``: ``GALDDCClassifier.encode_frozen``;
* ``frozen_encoder_forward``: ``GALDDCClassifier.frozen_encoder``'s
  ``'backbone'`` and ``'neck'``;
* ``set_non_blocking``: mmengine's private
  ``BaseDataPreprocessor._non_blocking``;
* ``head_sizes``, ``noise_schedule``: ``LatentDiffusionHead.latent_dim``,
  ``.schedule`` and ``schedule.num_timesteps``;
* ``perturb_denoiser``: ``LatentDiffusionHead.denoiser.blocks[i].fc2``;
* ``fit_normalizer``, ``denormalize``: ``LatentDiffusionHead.normalizer``;
* ``sampling_denoiser``: ``LatentDiffusionHead._sampling_denoiser``;
* ``sample``: ``LatentDiffusionHead.sample``;
* ``ddim_chain``, ``ddim_step``: ``DDIMSampler.timesteps`` and ``.step``;
* ``schedule_tables``: ``NoiseSchedule.betas`` and
  ``.sqrt_one_minus_alphas_cumprod``;
* ``fill_geometry``, ``geometry_tensors``, ``geometry_loss``,
  ``ema_update_fn``, ``ema_state``, ``ema_momenta``: ``ClassGeometry``'s
  buffers (``counts``, ``prototypes``, ``r_obs``, ``r_real``,
  ``r_prior``, ``initialized``), properties (``head_mask``,
  ``valid_mask``, ``r_cal``), momenta and ``ema_update``, and the call
  signatures of the three geometry losses.
"""
from typing import Callable, Sequence, Tuple

import torch
from mmpretrain.utils import get_ori_model

# ----------------------------------------------------------------------
# GALDDCClassifier
# ----------------------------------------------------------------------


def unwrap(model):
    """The model inside a DDP wrapper (the model itself otherwise)."""
    return get_ori_model(model)


def train_iteration(model, batch, optim) -> None:
    """One training iteration as the runner does it, hooks' work included.

    After a stage-2 step ``ClassGeometryHook`` moves the class statistics
    towards the step's denoised estimates; a step of another stage hands
    over no batch and this is ``train_step`` alone.
    """
    model.train_step(batch, optim)
    ori = unwrap(model)
    take = getattr(ori, 'take_geometry_batch', None)  # not on baselines
    geometry_batch = None if take is None else take()
    if geometry_batch is not None:
        ori.geometry.ema_update(geometry_batch.latents, geometry_batch.labels)


def set_stage(model, stage: str, mode=None) -> None:
    """Put a (possibly DDP-wrapped) GALD-DC model in ``stage``."""
    unwrap(model).set_stage(stage, mode)


@torch.no_grad()
def init_latent_state(model, latents: torch.Tensor,
                      labels: torch.Tensor) -> None:
    """Freeze E^(0), fit the normaliser and the geometry on ``latents``
    (the whole set, as every rank holds the gathered cache)."""
    model = unwrap(model)
    model.freeze_encoder_copy()
    model.fit_latent_statistics(latents, labels)


def compile_diffusion_loss(model, mode: str) -> None:
    """Replace the stage-2 losses by their ``torch.compile`` wrapper."""
    head = unwrap(unwrap(model).diffusion_head)
    head.loss = torch.compile(head.loss, mode=mode)


def encode_frozen(model, inputs: torch.Tensor) -> torch.Tensor:
    """E^(0)(x) the model's way (under ``no_grad``)."""
    return unwrap(model).encode_frozen(inputs)


def frozen_encoder_forward(model, inputs: torch.Tensor) -> torch.Tensor:
    """E^(0)(x) part by part, leaving the grad mode to the caller."""
    encoder = unwrap(model).frozen_encoder
    return encoder['neck'](encoder['backbone'](inputs))


def frozen_encoder_runner(fold: bool, compiled: bool, devices=('cuda', )):
    """A :class:`FrozenEncoderRunner` of its own (not the model's)."""
    from galddc_mm.models.classifiers import frozen_encoder
    return frozen_encoder.FrozenEncoderRunner(
        fold, dict(dynamic=False) if compiled else None,
        compile_devices=devices)


def run_frozen_encoder(model, runner, inputs: torch.Tensor) -> torch.Tensor:
    """E^(0)(x) through ``runner``."""
    encoder = unwrap(model).frozen_encoder
    return runner.forward(encoder['backbone'], encoder['neck'], inputs)


def set_non_blocking(data_preprocessor, non_blocking: bool) -> None:
    """mmengine keeps the preprocessor's copy mode private."""
    data_preprocessor._non_blocking = non_blocking


# ----------------------------------------------------------------------
# LatentDiffusionHead, its schedule and sampler
# ----------------------------------------------------------------------


def head_sizes(head) -> Tuple[int, int]:
    """``(latent_dim, num_timesteps)`` of a diffusion head."""
    return head.latent_dim, head.schedule.num_timesteps


def noise_schedule(head):
    """The head's ``NoiseSchedule``."""
    return head.schedule


def perturb_denoiser(head, std: float) -> None:
    """Normal ``fc2`` weights: trained blocks are not the identity."""
    for block in head.denoiser.blocks:
        torch.nn.init.normal_(block.fc2.weight, std=std)


def fit_normalizer(head, latents: torch.Tensor) -> None:
    head.normalizer.fit(latents)


def denormalize(head, z: torch.Tensor) -> torch.Tensor:
    """Standardised latents back to encoder space."""
    return head.normalizer.denormalize(z)


def sampling_denoiser(head, device: torch.device) -> torch.nn.Module:
    """The network ``head.sample`` runs (a 16-bit copy under autocast)."""
    return head._sampling_denoiser(device)


def sample(head, labels: torch.Tensor, num_steps: int,
           cuda_graph: bool = False,
           compile_denoiser: bool = False) -> torch.Tensor:
    """DDIM sampling through the head's own fast path."""
    return head.sample(labels, num_steps=num_steps, cuda_graph=cuda_graph,
                       compile_denoiser=compile_denoiser)


def sample_per_row_t(head, labels: torch.Tensor,
                     num_steps: int) -> torch.Tensor:
    """DDIM sampling with a ``(B, )`` timestep per call, not a shared one.

    What the sampler did before ``ResMLPDenoiser.accepts_shared_timestep``:
    the conditioning computed for every row.
    """
    denoiser = head._sampling_denoiser(labels.device)
    denoiser.accepts_shared_timestep = False
    try:
        return head.sample(labels, num_steps=num_steps)
    finally:
        del denoiser.accepts_shared_timestep


def ddim_chain(head, num_steps: int) -> list:
    """The descending DDIM timesteps of ``num_steps`` steps."""
    return head.sampler.timesteps(head.schedule.num_timesteps,
                                  num_steps).tolist()


def ddim_step(head, eps: torch.Tensor, t: int, t_prev: int,
              z: torch.Tensor) -> torch.Tensor:
    """One DDIM update through the sampler's public ``step``."""
    z, _ = head.sampler.step(head.schedule, eps, t, t_prev, z)
    return z


def schedule_tables(schedule) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(beta_t, sqrt(1 - abar_t))`` per timestep, float64 on the host."""
    betas = schedule.betas.detach().double().cpu()
    root = schedule.sqrt_one_minus_alphas_cumprod.detach().double().cpu()
    return betas, root


# ----------------------------------------------------------------------
# ClassGeometry and the geometry losses
# ----------------------------------------------------------------------


def fill_geometry(geom, counts: torch.Tensor, prototypes: torch.Tensor,
                  r_obs: torch.Tensor) -> None:
    """An initialised geometry from given statistics (not timed)."""
    geom.counts.copy_(counts)
    geom.prototypes.copy_(prototypes)
    geom.r_obs.copy_(r_obs)
    geom.r_real.copy_(geom.r_obs)
    geom.r_prior.copy_(geom.r_obs[geom.head_mask].mean())
    geom.initialized.fill_(1)


def geometry_tensors(geom) -> Tuple[torch.Tensor, ...]:
    """``(prototypes, r_cal, valid_mask)``, read at call time."""
    return geom.prototypes, geom.r_cal, geom.valid_mask


def geometry_loss(losses: Sequence[torch.nn.Module], geom,
                  z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """PrototypeLoss + CalibratedRadiusLoss + PrototypeMarginLoss of ``z``.
    """
    protos, r_cal = geom.prototypes, geom.r_cal
    return (losses[0](z, labels, protos) +
            losses[1](z, labels, protos, r_cal) +
            losses[2](z, labels, protos, geom.valid_mask))


def ema_update_fn(geom) -> Callable:
    """The bound ``ema_update(latents, labels)``, to call or compile."""
    return geom.ema_update


def ema_state(geom) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(prototypes, r_obs)``: the buffers the EMA updates in place."""
    return geom.prototypes, geom.r_obs


def ema_momenta(geom) -> Tuple[float, float]:
    """``(proto_momentum, radius_momentum)`` of the EMA."""
    return geom.proto_momentum, geom.radius_momentum
