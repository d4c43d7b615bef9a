# Copyright (c) galddc_mm contributors. All rights reserved.
from .generation_report_hook import GenerationReportHook
from .numerical_guard_hook import NonFiniteLossError, NumericalGuardHook
from .rank_consistency_hook import RankConsistencyHook

__all__ = [
    'GenerationReportHook', 'NonFiniteLossError', 'NumericalGuardHook',
    'RankConsistencyHook'
]
