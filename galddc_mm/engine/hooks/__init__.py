# Copyright (c) galddc_mm contributors. All rights reserved.
from .class_geometry_hook import ClassGeometryHook
from .galddc_check_hook import GALDDCCheckHook
from .generation_report_hook import GenerationReportHook
from .numerical_guard_hook import NonFiniteLossError, NumericalGuardHook
from .rank_consistency_hook import RankConsistencyHook

__all__ = [
    'ClassGeometryHook', 'GALDDCCheckHook', 'GenerationReportHook',
    'NonFiniteLossError', 'NumericalGuardHook', 'RankConsistencyHook'
]
