# Copyright (c) galddc_mm contributors. All rights reserved.
from .galddc import GALDDCClassifier

__all__ = ['GALDDCClassifier']
