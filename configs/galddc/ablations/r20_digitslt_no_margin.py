# Ablation: GALD-DC without the prototype margin loss (eta_m = 0).
_base_ = ['../r20_digitslt.py']
model = dict(diffusion_head=dict(margin_loss=dict(loss_weight=0.0)))
