# Copyright (c) galddc_mm contributors. All rights reserved.
import hashlib
import json
import os.path as osp
from typing import Dict, Sequence

import torch
from mmengine.dist import all_gather_object, get_dist_info, is_main_process
from mmengine.hooks import Hook
from mmpretrain.registry import HOOKS
from mmpretrain.utils import get_ori_model


def _digest(tensor: torch.Tensor) -> str:
    data = tensor.detach().cpu().contiguous()
    if data.dtype == torch.bfloat16:
        data = data.float()
    return hashlib.sha1(data.numpy().tobytes()).hexdigest()[:16]


@HOOKS.register_module()
class RankConsistencyHook(Hook):
    """Check that every rank holds the same geometry and frozen encoder.

    GALD-DC keeps state outside the parameters DDP synchronises: the class
    geometry, the latent normalisation and the frozen encoder E^(0). They
    must be bit-identical on every rank. After training (and, optionally,
    after every stage-2/3 epoch) this hook hashes those tensors on each
    rank, gathers the digests, logs the verdict and writes
    ``{work_dir}/rank_consistency.json``.

    Args:
        prefixes (Sequence[str]): State-dict prefixes of the model to check.
            Defaults to the geometry, the normaliser and the frozen encoder.
        every_epoch (bool): Also check after each epoch once the geometry
            is initialised. Defaults to False.
        strict (bool): Raise ``RuntimeError`` on a mismatch instead of only
            logging it. Defaults to False.
    """

    priority = 'VERY_LOW'

    def __init__(self,
                 prefixes: Sequence[str] = ('geometry.',
                                            'diffusion_head.normalizer.',
                                            'frozen_encoder.'),
                 every_epoch: bool = False,
                 strict: bool = False):
        self.prefixes = tuple(prefixes)
        self.every_epoch = every_epoch
        self.strict = strict

    def digests(self, model) -> Dict[str, str]:
        """``{name: digest}`` of the checked tensors of this rank."""
        model = get_ori_model(model)
        state = {}
        for name, tensor in model.state_dict(keep_vars=False).items():
            # Separate DDP wraps children: drop the wrappers' 'module.'.
            name = name.replace('.module.', '.')
            if name.startswith(self.prefixes):
                state[name] = _digest(tensor)
        return state

    def check(self, runner) -> bool:
        """Compare the digests of all ranks; log and save the verdict."""
        mine = self.digests(runner.model)
        every = all_gather_object(mine)
        _, world_size = get_dist_info()
        mismatched = sorted(
            name for name in mine
            if any(other.get(name) != mine[name] for other in every))
        verdict = dict(
            epoch=runner.epoch,
            world_size=world_size,
            num_tensors=len(mine),
            identical=not mismatched,
            mismatched=mismatched)
        if is_main_process():
            with open(osp.join(runner.work_dir, 'rank_consistency.json'),
                      'w') as f:
                json.dump(dict(verdict, digests=every), f, indent=2)
        if mismatched:
            msg = (f'Rank consistency: {len(mismatched)} of {len(mine)} '
                   f'tensors differ across {world_size} ranks, e.g. '
                   f'{mismatched[:5]}')
            if self.strict:
                raise RuntimeError(msg)
            runner.logger.warning(msg)
        else:
            runner.logger.info(
                f'Rank consistency: geometry, latent normaliser and frozen '
                f'encoder ({len(mine)} tensors) are bit-identical across '
                f'{world_size} rank(s).')
        return not mismatched

    def after_train_epoch(self, runner) -> None:
        model = get_ori_model(runner.model)
        if self.every_epoch and getattr(model, 'geometry_ready', False):
            self.check(runner)

    def after_train(self, runner) -> None:
        self.check(runner)
