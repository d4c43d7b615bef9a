# Copyright (c) galddc_mm contributors. All rights reserved.
"""Train a model; MMPretrain 1.2.0's ``tools/train.py`` plus a final summary.

Same flags and behaviour as upstream. Differences:

- ``galddc_mm`` is imported first, so its compatibility fixes (safe
  checkpoint loading under torch>=2.6, ``torchrun`` on CPU) apply even to a
  config that does not load the plugin through ``custom_imports``.
- ``--amp`` also covers GALD-DC's per-part optimiser config
  (``optim_wrapper=dict(constructor='GALDDCOptimWrapperConstructor',
  encoder=..., head=..., diffusion=...)``): the top-level ``type`` and
  ``loss_scale`` are set, which that constructor applies to every part. It
  fails early with a clear message on a machine without an accelerator.
- After training, the last validation (and test, if the loop ran one)
  metrics are logged as one table (top-1, many/medium/few, ...) and written
  to ``<work_dir>/<timestamp>/final_metrics.json``.
"""
import argparse
import os
import os.path as osp
from copy import deepcopy

import mmengine.device as device
import torch
from mmengine.config import Config, ConfigDict, DictAction
from mmengine.registry import RUNNERS
from mmengine.runner import Runner
from mmengine.utils import digit_version
from mmengine.utils.dl_utils import TORCH_VERSION

import galddc_mm  # noqa: F401  (compat fixes + registration)
from galddc_mm.utils import collect_split_metrics, log_final_metrics


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train a model')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument(
        '--resume',
        nargs='?',
        type=str,
        const='auto',
        help='If specify checkpoint path, resume from it, while if not '
        'specify, try to auto resume from the latest checkpoint '
        'in the work directory.')
    parser.add_argument(
        '--amp',
        action='store_true',
        help='enable automatic-mixed-precision training')
    parser.add_argument(
        '--no-validate',
        action='store_true',
        help='whether not to evaluate the checkpoint during training')
    parser.add_argument(
        '--auto-scale-lr',
        action='store_true',
        help='whether to auto scale the learning rate according to the '
        'actual batch size and the original batch size.')
    parser.add_argument(
        '--no-pin-memory',
        action='store_true',
        help='whether to disable the pin_memory option in dataloaders.')
    parser.add_argument(
        '--no-persistent-workers',
        action='store_true',
        help='whether to disable the persistent_workers option in dataloaders.'
    )
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override some settings in the used config, the key-value pair '
        'in xxx=yyy format will be merged into config file. If the value to '
        'be overwritten is a list, it should be like key="[a,b]" or key=a,b '
        'It also allows nested list/tuple values, e.g. key="[(a,b),(c,d)]" '
        'Note that the quotation marks are necessary and that no white space '
        'is allowed.')
    parser.add_argument(
        '--launcher',
        choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none',
        help='job launcher')
    # When using PyTorch version >= 2.0.0, the `torch.distributed.launch`
    # will pass the `--local-rank` parameter to `tools/train.py` instead
    # of `--local_rank`.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)

    return args


def check_amp_device():
    """Fail early: mmengine's ``AmpOptimWrapper`` needs an accelerator."""
    if not (device.is_cuda_available() or device.is_npu_available()
            or device.is_mlu_available() or device.is_musa_available()):
        raise RuntimeError(
            '--amp needs a CUDA (or NPU/MLU/MUSA) device, but none is '
            'available on this machine. Drop --amp to train in fp32 on the '
            'CPU.')


def merge_args(cfg, args):
    """Merge CLI arguments to config."""
    if args.no_validate:
        cfg.val_cfg = None
        cfg.val_dataloader = None
        cfg.val_evaluator = None

    cfg.launcher = args.launcher

    # work_dir is determined in this priority: CLI > segment in file > filename
    if args.work_dir is not None:
        # update configs according to CLI args if args.work_dir is not None
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        # use config filename as default work_dir if cfg.work_dir is None
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(args.config))[0])

    # enable automatic-mixed-precision training
    if args.amp is True:
        # The same two keys serve a plain ``optim_wrapper=dict(optimizer=
        # ...)`` and GALD-DC's per-part dict: its constructor takes the
        # top-level ``type``/``loss_scale`` as the default of every part.
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')

    # resume training
    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume

    # enable auto scale learning rate
    if args.auto_scale_lr:
        cfg.auto_scale_lr.enable = True

    # set dataloader args
    default_dataloader_cfg = ConfigDict(
        pin_memory=True,
        persistent_workers=True,
        collate_fn=dict(type='default_collate'),
    )
    if digit_version(TORCH_VERSION) < digit_version('1.8.0'):
        default_dataloader_cfg.persistent_workers = False

    def set_default_dataloader_cfg(cfg, field):
        if cfg.get(field, None) is None:
            return
        dataloader_cfg = deepcopy(default_dataloader_cfg)
        dataloader_cfg.update(cfg[field])
        cfg[field] = dataloader_cfg
        if args.no_pin_memory:
            cfg[field]['pin_memory'] = False
        if args.no_persistent_workers:
            cfg[field]['persistent_workers'] = False
        # Pinning memory only helps host-to-GPU copies and warns without
        # CUDA; persistent workers are refused with num_workers=0.
        if not torch.cuda.is_available():
            cfg[field]['pin_memory'] = False
        if cfg[field].get('num_workers', 0) == 0:
            cfg[field]['persistent_workers'] = False

    set_default_dataloader_cfg(cfg, 'train_dataloader')
    set_default_dataloader_cfg(cfg, 'val_dataloader')
    set_default_dataloader_cfg(cfg, 'test_dataloader')

    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)

    return cfg


def log_training_summary(runner):
    """Log the last val/test metrics of the run as one table."""
    hub = runner.message_hub
    metrics = {
        split: collect_split_metrics(hub, split)
        for split in ('val', 'test')
    }
    metrics = {split: m for split, m in metrics.items() if m}
    extra = dict(epoch=runner.epoch, iter=runner.iter)
    best_ckpt = hub.get_info('best_ckpt')
    if best_ckpt is not None:
        extra.update(
            best_ckpt=best_ckpt, best_score=float(hub.get_info('best_score')))
    log_final_metrics(
        runner,
        metrics,
        title=f'Final metrics (%) after epoch {runner.epoch} '
        f'(last evaluation of each split)',
        **extra)
    if best_ckpt is not None:
        runner.logger.info(
            f'Best checkpoint (selected on val): {best_ckpt}, score '
            f'{extra["best_score"]:.2f}')


def main(argv=None):
    args = parse_args(argv)
    if args.amp:
        check_amp_device()

    # load config
    cfg = Config.fromfile(args.config)

    # merge cli arguments to config
    cfg = merge_args(cfg, args)

    # build the runner from config
    if 'runner_type' not in cfg:
        # build the default runner
        runner = Runner.from_cfg(cfg)
    else:
        # build customized runner from the registry
        # if 'runner_type' is set in the cfg
        runner = RUNNERS.build(cfg)

    # start training
    runner.train()
    log_training_summary(runner)


if __name__ == '__main__':
    main()
