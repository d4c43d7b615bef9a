# Copyright (c) galddc_mm contributors. All rights reserved.
# Runtime defaults of every galddc_mm config: mmpretrain's registries, the
# plugin, hooks, distributed settings, logging and visualisation.

# Build every component from mmpretrain's registries; the plugin registers
# its own there when imported.
default_scope = 'mmpretrain'
custom_imports = dict(imports=['galddc_mm'], allow_failed_imports=False)

# mmengine's Runner plus a process group that starts on CPU-only machines
# (gloo) and is ended at exit, after a barrier, with its worker threads
# joined (galddc_mm/engine/runner/galddc_runner.py). MMPretrain's own
# tools/train.py and tools/test.py build it from the registry too.
runner_type = 'GALDDCRunner'

default_hooks = dict(
    # Time every iteration (feeds the ETA in the log).
    timer=dict(type='IterTimerHook'),
    # Print the log every 100 iterations.
    logger=dict(type='LoggerHook', interval=100),
    # Step the parameter schedulers.
    param_scheduler=dict(type='ParamSchedulerHook'),
    # Save a checkpoint every epoch, keep the last 3, and keep the best one
    # by validation top-1. Checkpoints are selected on val, never on test.
    # mmengine's CheckpointHook, but a kill while it writes a checkpoint or
    # `last_checkpoint` leaves the previous file intact (atomic writes).
    checkpoint=dict(
        type='AtomicCheckpointHook',
        interval=1,
        max_keep_ckpts=3,
        save_best='accuracy/top1',
        rule='greater'),
    # Re-seed the distributed sampler at every epoch.
    sampler_seed=dict(type='DistSamplerSeedHook'),
    # Visualise validation predictions; set enable=True to use it.
    visualization=dict(type='VisualizationHook', enable=False),
    # Stop at the first NaN/Inf loss, naming the loss and the stage, before
    # the poisoned weights are checkpointed (galddc_mm's hook; disable with
    # default_hooks.numerical_guard=None).
    numerical_guard=dict(type='NumericalGuardHook'),
    # At the end of a run, log the final metrics (top-1, many/medium/few)
    # as one table and write them to <work_dir>/<timestamp>/
    # final_metrics.json (galddc_mm's hook; also under MMPretrain's tools).
    final_metrics=dict(type='FinalMetricsHook'),
)

env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    # NCCL on GPUs. On a machine without CUDA, GALDDCRunner switches to
    # gloo, so `tools/dist_train.sh` also runs on CPUs.
    # `timeout` (seconds) bounds every collective: if a rank hangs, the
    # others fail after this long instead of waiting forever (a rank that
    # dies is noticed at once: torchrun stops the group). Keep it above the
    # longest stretch one rank works alone (e.g. a checkpoint save).
    dist_cfg=dict(backend='nccl', timeout=1800),
)

# Under DDP: mmengine's MMDistributedDataParallel that also accepts CPU
# processes (it drops the device_ids mmengine passes for CPU modules).
model_wrapper_cfg = dict(type='CPUCompatibleDDP')

# Smooth logged values over the last 10 iterations; epoch-based counters.
log_processor = dict(by_epoch=True, window_size=10)

vis_backends = [
    dict(type='LocalVisBackend'),
    # TensorBoard: uncomment (needs `pip install tensorboard`, or
    # `pip install -e ".[tensorboard]"`).
    # dict(type='TensorboardVisBackend'),
]
visualizer = dict(type='UniversalVisualizer', vis_backends=vis_backends)

log_level = 'INFO'

# Load weights from this checkpoint (e.g. a CE model to skip stage 1).
load_from = None
# Resume the full training state from `load_from` (or the latest checkpoint
# of the work dir with `tools/train.py --resume`).
resume = False

# A fixed seed makes runs repeatable (data order, initialisation); change
# it with `--cfg-options randomness.seed=1`. `deterministic=True` also
# forces deterministic cuDNN kernels, at some speed cost.
randomness = dict(seed=0, deterministic=False)
