# Copyright (c) galddc_mm contributors. All rights reserved.
from .atomic_checkpoint_hook import AtomicCheckpointHook
from .final_metrics_hook import FinalMetricsHook
from .generation_report_hook import GenerationReportHook
from .numerical_guard_hook import NonFiniteLossError, NumericalGuardHook
from .rank_consistency_hook import RankConsistencyHook

__all__ = [
    'AtomicCheckpointHook', 'FinalMetricsHook', 'GenerationReportHook',
    'NonFiniteLossError', 'NumericalGuardHook', 'RankConsistencyHook'
]
