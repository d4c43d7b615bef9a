# Copyright (c) galddc_mm contributors. All rights reserved.
from .galddc_train_loop import GALDDCTrainLoop

__all__ = ['GALDDCTrainLoop']
