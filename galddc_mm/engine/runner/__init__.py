# Copyright (c) galddc_mm contributors. All rights reserved.
from .cpu_compatible_ddp import CPUCompatibleDDP, cpu_compatible_ddp_kwargs
from .galddc_ddp import GALDDCDistributedDataParallel

__all__ = [
    'CPUCompatibleDDP', 'GALDDCDistributedDataParallel',
    'cpu_compatible_ddp_kwargs'
]
