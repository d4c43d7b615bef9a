# Ablation: LDMLR-style latent diffusion - no geometry losses
# (eta_p = eta_r = eta_m = 0), no calibration (lam = 1), stable stage 3
# (frozen encoder, G trained on real + generated latents).
_base_ = ['../r20_digitslt.py']
model = dict(
    geometry=dict(lam=1.0),
    diffusion_head=dict(
        proto_loss=dict(loss_weight=0.0),
        radius_loss=dict(loss_weight=0.0),
        margin_loss=dict(loss_weight=0.0)))
train_cfg = dict(
    stages=[
        dict(name='representation', epochs=60),
        dict(name='diffusion', epochs=10, cache_latents=True, batch_size=128,
             repeat=100),
        dict(name='finetune', epochs=20, mode='stable',
             lr_mult=dict(head=0.1)),
    ])
