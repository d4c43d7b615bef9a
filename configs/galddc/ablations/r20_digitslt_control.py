# Copyright (c) galddc_mm contributors. All rights reserved.
# Same-budget control: GALD-DC (hybrid) with the pseudo-latent loss weight at
# 0 and everything else equal (stages, epochs, consistency loss, schedules).
# A gain of GALD-DC over this row is the generated latents' doing, not the
# extra 10 + 20 epochs. The pseudo-latents are still drawn (their cost is
# part of the budget); they only carry no loss.
_base_ = ['../r20_digitslt.py']
model = dict(pseudo_loss=dict(loss_weight=0.0))
