# Copyright (c) galddc_mm contributors. All rights reserved.
from .galddc_optim_constructor import GALDDCOptimWrapperConstructor

__all__ = ['GALDDCOptimWrapperConstructor']
