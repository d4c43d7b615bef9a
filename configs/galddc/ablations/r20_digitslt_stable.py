# Ablation: GALD-DC with the stable stage 3 (encoder frozen, only G trains on
# real and pseudo-latents) instead of hybrid. Stable mode can run on the
# cached latents, which makes stage 3 cost almost nothing.
_base_ = ['../r20_digitslt.py']
train_cfg = dict(
    stages=[
        dict(name='representation', epochs=60),
        dict(name='diffusion', epochs=10, cache_latents=True, batch_size=128,
             repeat=100),
        dict(name='finetune', epochs=20, mode='stable', cache_latents=True,
             lr_mult=dict(head=0.1)),
    ])
