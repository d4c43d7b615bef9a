# Backbone swap by config only: Swin-T for GALD-DC on ImageNet-LT. The
# latent becomes 768-d (head.in_channels; the diffusion head and geometry
# follow the cls head), and the encoder trains with AdamW as Swin expects.
_base_ = ['../r50_imagenetlt.py']
model = dict(
    backbone=dict(
        _delete_=True, type='SwinTransformer', arch='tiny', img_size=224,
        drop_path_rate=0.2),
    head=dict(in_channels=768),
    diffusion_head=dict(denoiser=dict(hidden_dim=1024)))
optim_wrapper = dict(
    encoder=dict(
        optimizer=dict(
            _delete_=True, type='AdamW', lr=5e-4, weight_decay=0.05),
        paramwise_cfg=dict(
            norm_decay_mult=0.0, bias_decay_mult=0.0,
            custom_keys={
                '.absolute_pos_embed': dict(decay_mult=0.0),
                '.relative_position_bias_table': dict(decay_mult=0.0)
            })),
    head=dict(
        optimizer=dict(
            _delete_=True, type='AdamW', lr=5e-4, weight_decay=0.05)))
