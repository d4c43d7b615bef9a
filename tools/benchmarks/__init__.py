# Copyright (c) galddc_mm contributors. All rights reserved.
"""The benchmarks of ``tools/benchmark.py``, one subject a module.

* ``common``: device, AMP and memory-format set-up, the configs, model
  builders, synthetic data and loaders, the recorded rows;
* ``timing``: median times, host-device sync counts, profiles;
* ``train_steps``: training iterations (baseline, stages 1-3 and their
  variants), layout, compiled stage 2, preprocessing, frozen encoder;
* ``sampler``: DDIM vs the ancestral (DDPM) sampler;
* ``geometry``: the stage-2 geometry losses + EMA vs per-sample loops
  (also run alone by ``geometry_losses.py``);
* ``suite``: the benchmark names and the loop that runs them;
* ``report``: targets, multi-GPU scaling and the printed table;
* ``internals``: every call into the models' internals.
"""
from .common import BenchmarkContext, machine_info
from .report import compute_targets, print_table, scaling_from
from .sampler import ancestral_coefficients, ancestral_sample
from .suite import COMPILE_BENCHES, DIST_DEFAULT, KNOWN, run

__all__ = [
    'BenchmarkContext', 'machine_info', 'compute_targets', 'print_table',
    'scaling_from', 'ancestral_coefficients', 'ancestral_sample',
    'COMPILE_BENCHES', 'DIST_DEFAULT', 'KNOWN', 'run'
]
