# Copyright (c) galddc_mm contributors. All rights reserved.
from .checkpoint_safety import (
    AtomicLocalBackend,
    DamagedCheckpointError,
    atomic_destination,
    atomic_torch_save,
    checkpoint_damage,
    find_resumable_checkpoint,
)
from .compiled_call import CompiledCall, compile_kwargs
from .final_metrics import (
    collect_split_metrics,
    dump_final_metrics,
    format_metrics_table,
    log_final_metrics,
)
from .safe_loading import (
    UnsafeCheckpointError,
    checkpoint_safe_globals,
    register_safe_loading,
    safe_torch_load,
)
from .warning_filters import silence_known_warnings
from .work_dir import WorkDir, load_per_class_accuracy

__all__ = [
    'CompiledCall', 'compile_kwargs',
    'AtomicLocalBackend', 'DamagedCheckpointError', 'atomic_destination',
    'atomic_torch_save', 'checkpoint_damage', 'find_resumable_checkpoint',
    'UnsafeCheckpointError', 'checkpoint_safe_globals',
    'register_safe_loading', 'collect_split_metrics', 'dump_final_metrics',
    'format_metrics_table', 'log_final_metrics', 'safe_torch_load',
    'silence_known_warnings', 'WorkDir', 'load_per_class_accuracy'
]
