# Copyright (c) galddc_mm contributors. All rights reserved.
from .atomic_checkpoint_hook import AtomicCheckpointHook
from .class_geometry_hook import ClassGeometryHook
from .final_metrics_hook import FinalMetricsHook
from .galddc_check_hook import GALDDCCheckHook
from .generation_report_hook import GenerationReportHook
from .known_answer_hook import KnownAnswerHook
from .numerical_guard_hook import NonFiniteLossError, NumericalGuardHook
from .rank_consistency_hook import RankConsistencyHook

__all__ = [
    'AtomicCheckpointHook', 'ClassGeometryHook', 'FinalMetricsHook',
    'GALDDCCheckHook', 'GenerationReportHook', 'KnownAnswerHook',
    'NonFiniteLossError',
    'NumericalGuardHook', 'RankConsistencyHook'
]
