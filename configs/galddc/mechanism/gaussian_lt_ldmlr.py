# Copyright (c) galddc_mm contributors. All rights reserved.
# The LDMLR-style counterpart on the known-answer testbed: plain class-
# conditional latent diffusion (no geometry losses, no calibration, lam=1),
# everything else as gaussian_lt_galddc.py.
_base_ = ['./gaussian_lt_galddc.py']
model = dict(
    geometry=dict(lam=1.0),
    diffusion_head=dict(
        proto_loss=dict(loss_weight=0.0),
        radius_loss=dict(loss_weight=0.0),
        margin_loss=dict(loss_weight=0.0)))
