# Copyright (c) galddc_mm contributors. All rights reserved.
"""The latent cache D_z = {(E^(0)(x_i), y_i)}: extracted once, held whole.

Each rank extracts the latents of its shard of the training set with the
frozen encoder (test pipeline, no augmentation), the shards are gathered
once, and every rank then holds the whole cache, ordered by data-set index
as one process would: the normaliser and the class geometry are fitted on
it directly, and :class:`LatentLoader` hands each rank its share of every
epoch's permutation.
"""
import copy
import math
import time
from typing import Callable, Iterator, NamedTuple, Optional

import torch
from mmengine.dist import all_gather, get_dist_info
from mmengine.utils import ProgressBar


class LatentCache(NamedTuple):
    """The whole latent set, ordered by data-set index.

    Attributes:
        latents (torch.Tensor): E^(0)(x), (N, D), float32.
        labels (torch.Tensor): Classes, (N,).
        indices (torch.Tensor): Data-set indices, (N,), increasing.
    """
    latents: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor


def extract_dataloader_cfg(train_cfg: dict, eval_cfg: dict) -> dict:
    """The dataloader config of the extraction: every training sample once.

    The training set with the evaluation pipeline (no augmentation: D_z
    describes the data, not its augmentations) and the evaluation loader's
    collate function (the one that fits that pipeline's output), not
    shuffled, no dropped last batch, no persistent workers (it runs once
    per stage entry).

    Args:
        train_cfg (dict): ``train_dataloader`` of the config.
        eval_cfg (dict): ``val_dataloader`` (or ``test_dataloader``).

    Returns:
        dict: A dataloader config for ``runner.build_dataloader``.
    """
    if (train_cfg is None or eval_cfg is None
            or 'pipeline' not in train_cfg.get('dataset', {})):
        raise ValueError(
            'Cannot derive the latent-extraction dataloader (needs '
            'train_dataloader.dataset.pipeline and a val/test dataloader '
            'pipeline); set train_cfg.extract_dataloader explicitly.')
    cfg = copy.deepcopy(dict(train_cfg))
    cfg['dataset'] = dict(cfg['dataset'])
    cfg['dataset']['pipeline'] = copy.deepcopy(eval_cfg['dataset']['pipeline'])
    if 'collate_fn' in eval_cfg:
        cfg['collate_fn'] = copy.deepcopy(eval_cfg['collate_fn'])
    else:
        cfg.pop('collate_fn', None)
    cfg['sampler'] = dict(type='DefaultSampler', shuffle=False)
    cfg.pop('batch_sampler', None)
    cfg['persistent_workers'] = False
    cfg['drop_last'] = False
    return cfg


@torch.no_grad()
def extract_latents(model,
                    loader,
                    show_progress: bool = False,
                    encode: Optional[Callable] = None) -> LatentCache:
    """E^(0)(x) of every batch of ``loader`` (this rank's shard).

    Args:
        model (GALDDCClassifier): The model, unwrapped; its data
            preprocessor and :meth:`encode_frozen` are used, in eval mode
            (restored after).
        loader (Iterable): Batches of the data set (``sample_idx`` in each
            data sample).
        show_progress (bool): Draw a progress bar. Defaults to False.
        encode (callable, optional): Another encoder ``inputs -> (B, D)``
            (e.g. the current E for analysis). Defaults to
            ``model.encode_frozen``.

    Returns:
        LatentCache: This rank's latents, in the loader's order.
    """
    was_training = model.training
    model.eval()
    idxs, feats, labels = [], [], []
    bar = ProgressBar(len(loader)) if show_progress else None
    try:
        for batch in loader:
            data = model.data_preprocessor(batch, False)
            inputs, samples = data['inputs'], data['data_samples']
            feats.append((encode or model.encode_frozen)(inputs).float())
            labels.append(
                torch.cat([s.gt_label for s in samples]).to(inputs.device))
            idxs.append(
                torch.tensor([s.sample_idx for s in samples],
                             device=inputs.device))
            if bar is not None:
                bar.update()
    finally:
        model.train(was_training)
    if bar is not None:
        print('', flush=True)
    return LatentCache(torch.cat(feats), torch.cat(labels), torch.cat(idxs))


def gather_latents(shard: LatentCache) -> LatentCache:
    """Gather every rank's shard once; dedupe and order by index.

    The distributed sampler pads shards by repeating samples, so each
    index is kept once. Without distributed training the shard is only
    ordered.

    Args:
        shard (LatentCache): This rank's latents.

    Returns:
        LatentCache: The whole cache, identical on every rank.
    """
    idx, z, y = shard.indices, shard.latents, shard.labels
    if get_dist_info()[1] > 1:
        n = torch.tensor([idx.numel()], device=idx.device)
        sizes = [int(s) for s in all_gather(n)]
        pad = max(sizes) - idx.numel()
        if pad:
            idx = torch.cat([idx, idx.new_full((pad, ), -1)])
            z = torch.cat([z, z.new_zeros(pad, z.size(1))])
            y = torch.cat([y, y.new_zeros(pad)])
        idx = torch.cat(all_gather(idx))
        z = torch.cat(all_gather(z))
        y = torch.cat(all_gather(y))
    order = torch.argsort(idx, stable=True)
    idx, z, y = idx[order], z[order], y[order]
    keep = idx >= 0
    keep[1:] &= idx[1:] != idx[:-1]
    return LatentCache(z[keep].contiguous(), y[keep], idx[keep])


def build_latent_cache(model, loader, logger=None,
                       show_progress: bool = False) -> LatentCache:
    """Extract this rank's shard, gather the whole cache, log the figures.

    Args:
        model (GALDDCClassifier): The unwrapped model.
        loader (DataLoader): This rank's extraction loader.
        logger (MMLogger, optional): Where to log the size and speed.
        show_progress (bool): Draw a progress bar. Defaults to False.

    Returns:
        LatentCache: The whole cache.
    """
    start = time.perf_counter()
    shard = extract_latents(model, loader, show_progress)
    elapsed = time.perf_counter() - start
    cache = gather_latents(shard)
    if logger is not None:
        logger.info(
            f'Latent cache: {cache.latents.size(0)} latents of dim '
            f'{cache.latents.size(1)} extracted in {elapsed:.1f}s '
            f'({shard.latents.size(0) / max(elapsed, 1e-9):.1f} img/s on '
            'this rank)')
    return cache


class LatentLoader:
    """Shuffled batches of the latent cache, one share per rank.

    It stands in for the image dataloader during cached stages (so the
    logger's ``[iter/len]`` and end-of-epoch checks see the right length).
    Every rank draws the same permutation of the cache from
    ``seed + epoch`` and takes every ``world_size``-th entry, padded like
    ``DefaultSampler`` so all ranks run the same number of steps.

    With ``class_balanced=True`` (class-aware sampling, as cRT trains the
    classifier) each latent of a batch is drawn with replacement: a class
    uniformly among the classes in the cache, then one of its latents
    uniformly. Each rank draws from its own generator, seeded by
    ``(seed + epoch, rank)``, so ranks differ and a run resumed at this
    epoch draws the same batches. The number of batches is the same as
    without it; every batch is full.

    Args:
        cache (LatentCache): The whole cache.
        batch_size (int): Latents per batch and rank.
        repeat (int): Passes over the cache per epoch.
        seed (int): Base seed of the permutations.
        epoch (int): The epoch (0-based), added to the seed.
        rank (int): This rank.
        world_size (int): The number of ranks.
        dataset (BaseDataset, optional): The image data set the latents
            come from (its metainfo is what checkpoints and visualisers
            read from ``runner.train_dataloader``). Defaults to None.
        class_balanced (bool): Class-aware sampling, see above. Defaults
            to False.
    """

    def __init__(self,
                 cache: LatentCache,
                 batch_size: int,
                 repeat: int,
                 seed: int,
                 epoch: int,
                 rank: int = 0,
                 world_size: int = 1,
                 dataset=None,
                 class_balanced: bool = False):
        self.latents, self.labels = cache.latents, cache.labels
        self.class_balanced = class_balanced
        self.dataset = dataset
        self.batch_size = batch_size
        self.repeat = repeat
        self.seed = seed
        self.epoch = epoch
        self.rank, self.world_size = rank, world_size
        self.per_rank = math.ceil(self.latents.size(0) / world_size)

    @staticmethod
    def num_batches(num_latents: int, batch_size: int, repeat: int,
                    world_size: int) -> int:
        """Batches per epoch and rank, without building a loader."""
        per_rank = math.ceil(num_latents / world_size)
        return repeat * math.ceil(per_rank / batch_size)

    def __len__(self) -> int:
        return self.num_batches(
            self.latents.size(0), self.batch_size, self.repeat,
            self.world_size)

    def __iter__(self) -> Iterator[dict]:
        if self.class_balanced:
            yield from self._class_balanced_batches()
            return
        n = self.latents.size(0)
        gen = torch.Generator()
        gen.manual_seed(self.seed + self.epoch)
        for _ in range(self.repeat):
            perm = torch.randperm(n, generator=gen)
            pad = self.per_rank * self.world_size - n
            perm = torch.cat([perm, perm[:pad]])
            perm = perm[self.rank::self.world_size].to(self.latents.device)
            for i in range(0, perm.numel(), self.batch_size):
                sel = perm[i:i + self.batch_size]
                yield dict(latents=self.latents[sel], labels=self.labels[sel])


    def _class_balanced_batches(self) -> Iterator[dict]:
        gen = torch.Generator()
        gen.manual_seed(((self.seed + self.epoch) * 1000003 + self.rank) %
                        (2**63))
        labels = self.labels.cpu()
        order = torch.argsort(labels, stable=True)
        classes, counts = torch.unique(labels, return_counts=True)
        offsets = torch.cumsum(counts, 0) - counts
        for _ in range(len(self)):
            cls = torch.randint(
                classes.numel(), (self.batch_size, ), generator=gen)
            within = (torch.rand(self.batch_size, generator=gen) *
                      counts[cls]).long().clamp(max=counts[cls] - 1)
            sel = order[offsets[cls] + within].to(self.latents.device)
            yield dict(latents=self.latents[sel], labels=self.labels[sel])
