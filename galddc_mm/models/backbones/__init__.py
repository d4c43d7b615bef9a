# Copyright (c) galddc_mm contributors. All rights reserved.
from .cifar_resnet import CifarResNet

__all__ = ['CifarResNet']
