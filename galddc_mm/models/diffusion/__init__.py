# Copyright (c) galddc_mm contributors. All rights reserved.
from .ddim_sampler import DDIMSampler
from .latent_diffusion_head import DiffusionOutput, LatentDiffusionHead
from .latent_normalizer import LatentNormalizer
from .noise_schedule import NoiseSchedule
from .res_mlp_denoiser import ResMLPDenoiser

__all__ = [
    'DDIMSampler', 'DiffusionOutput', 'LatentDiffusionHead',
    'LatentNormalizer', 'NoiseSchedule', 'ResMLPDenoiser'
]
