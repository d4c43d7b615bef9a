# Copyright (c) galddc_mm contributors. All rights reserved.
from .cpu_compatible_ddp import CPUCompatibleDDP, cpu_compatible_ddp_kwargs
from .galddc_ddp import GALDDCDistributedDataParallel
from .galddc_runner import GALDDCRunner
from .loader_workers import (
    runner_dataloaders,
    stop_loader_workers,
    stop_runner_loader_workers,
)
from .process_group import (
    import_modules_binding_world,
    init_process_group,
    release_model_wrappers,
    shutdown_process_group,
    track_model_owner,
)

__all__ = [
    'CPUCompatibleDDP', 'GALDDCDistributedDataParallel', 'GALDDCRunner',
    'cpu_compatible_ddp_kwargs', 'import_modules_binding_world',
    'init_process_group',
    'release_model_wrappers', 'runner_dataloaders', 'shutdown_process_group',
    'stop_loader_workers', 'stop_runner_loader_workers', 'track_model_owner'
]
