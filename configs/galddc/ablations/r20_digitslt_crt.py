# Copyright (c) galddc_mm contributors. All rights reserved.
# cRT (Kang et al., ICLR 2020, "Decoupling representation and classifier"):
# stage 1 as GALD-DC's, then the classifier G re-initialised and re-trained
# for 20 epochs on the frozen features (the cached real latents) with
# class-balanced sampling: a class uniformly, then one of its latents. No
# diffusion stage and no pseudo-latents: the re-balancing baseline a
# generator has to beat. G is re-initialised, as in Kang et al.
#   python tools/train.py configs/galddc/ablations/r20_digitslt_crt.py
_base_ = ['../r20_digitslt.py']
train_cfg = dict(
    stages=[
        dict(name='representation', epochs=60),
        dict(name='diffusion', epochs=0),
        dict(name='finetune', epochs=20, mode='stable', cache_latents=True,
             pseudo_latents=False, sampler='class_balanced',
             reinit_head=True, lr_mult=dict(head=1.0)),
    ])
