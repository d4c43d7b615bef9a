# Copyright (c) galddc_mm contributors. All rights reserved.
from .checkpoint_safety import (
    AtomicLocalBackend,
    DamagedCheckpointError,
    atomic_destination,
    atomic_torch_save,
    checkpoint_damage,
    find_resumable_checkpoint,
)
from .compat import (
    UnsafeCheckpointError,
    apply_patches,
    checkpoint_safe_globals,
    safe_torch_load,
)
from .final_metrics import (
    collect_split_metrics,
    dump_final_metrics,
    format_metrics_table,
    log_final_metrics,
)
from .work_dir import WorkDir, load_per_class_accuracy

__all__ = [
    'AtomicLocalBackend', 'DamagedCheckpointError', 'atomic_destination',
    'atomic_torch_save', 'checkpoint_damage',
    'find_resumable_checkpoint', 'UnsafeCheckpointError', 'apply_patches',
    'checkpoint_safe_globals',
    'collect_split_metrics', 'dump_final_metrics', 'format_metrics_table',
    'log_final_metrics', 'safe_torch_load', 'WorkDir',
    'load_per_class_accuracy'
]
