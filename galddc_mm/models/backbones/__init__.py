# Copyright (c) galddc_mm contributors. All rights reserved.
from .cifar_resnet import CifarResNet
from .latent_pass_through import LatentPassThrough

__all__ = ['CifarResNet', 'LatentPassThrough']
