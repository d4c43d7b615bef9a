# Copyright (c) galddc_mm contributors. All rights reserved.
"""The benchmark names of ``--only`` and the loop that runs them."""
import traceback

from .common import error_message
from .generation_report import bench_generation_report
from .geometry import bench_geometry
from .sampler import bench_sampler
from .train_steps import (
    TRAIN_BENCHES,
    bench_compiled_stage2,
    bench_frozen_encoder,
    bench_layout,
    bench_preprocess,
    bench_train,
)

#: Benchmarks besides the training configurations of TRAIN_BENCHES.
OTHER_BENCHES = {
    'layout': bench_layout,
    'preprocess': bench_preprocess,
    'frozen_encoder': bench_frozen_encoder,
    'sampler': bench_sampler,
    'geometry': bench_geometry,
    'generation_report': bench_generation_report,
}
#: The torch.compile variants, run by default only with --compile.
COMPILE_BENCHES = {
    'stage2_cached_compiled': bench_compiled_stage2,
    'geometry_compiled': lambda ctx: bench_geometry(ctx, compiled=True),
}
#: What a run under --launcher pytorch times without --only.
DIST_DEFAULT = ('baseline', 'stage1', 'stage1_sf', 'stage3_hybrid_graph_sf',
                'stage3_stable_cached_graph_sf')
#: Every name --only accepts, in the order of a full run.
KNOWN = list(TRAIN_BENCHES) + list(OTHER_BENCHES) + list(COMPILE_BENCHES)


def selected(ctx):
    """The benchmarks to run: ``--only``, or the default set."""
    args = ctx.args
    if args.only:
        names = [n.strip() for n in args.only.split(',') if n]
        unknown = [n for n in names if n not in KNOWN]
        if unknown:
            raise ValueError(f'--only: unknown benchmark(s) {unknown}; '
                             f'known: {KNOWN}.')
        return names
    if ctx.distributed:
        return list(DIST_DEFAULT)
    names = list(TRAIN_BENCHES) + list(OTHER_BENCHES)
    if not ctx.cuda:
        # CUDA-graph variants need CUDA; compiled ones compile on CUDA
        # only, so on the CPU they would repeat their eager rows.
        names = [n for n in names
                 if not n.endswith('_graph') and not n.endswith('compiled')]
    if args.compile:
        names += list(COMPILE_BENCHES)
    return names


def run(ctx):
    """Run the selected benchmarks; a failure is recorded, not raised."""
    for name in selected(ctx):
        try:
            if name in TRAIN_BENCHES:
                bench_train(ctx, name)
            else:
                {**OTHER_BENCHES, **COMPILE_BENCHES}[name](ctx)
        except Exception as exc:  # report it, run the others
            ctx.record(name, error=error_message(exc))
            if ctx.rank == 0:
                traceback.print_exc()
    return ctx.results
