# Copyright (c) galddc_mm contributors. All rights reserved.
"""ClassGeometry under 2 gloo processes equals one process on all data.

Every rank initialises from the whole latent set (the gathered cache);
the EMA batches are split unevenly between the ranks and all-reduced.
"""
import os
import os.path as osp
import tempfile
from unittest import TestCase

import torch
import torch.multiprocessing as mp
from conftest import end_gloo_group, free_port, start_gloo_group

NUM_CLASSES, DIM = 7, 5
# Class 6 has no sample at all; class 5 has a single one.
COUNTS = [40, 31, 25, 9, 4, 1, 0]
TAU = 20
EMA_STEPS = 4


def make_data():
    """The full data set and EMA batches (identical in every process)."""
    gen = torch.Generator().manual_seed(0)
    labels = torch.cat([
        torch.full((n, ), c, dtype=torch.long) for c, n in enumerate(COUNTS)
    ])
    labels = labels[torch.randperm(len(labels), generator=gen)]
    latents = 2 * torch.randn(NUM_CLASSES, DIM, generator=gen)[labels] + \
        torch.randn(len(labels), DIM, generator=gen)
    return latents, labels


def make_batches():
    # Small batches, so classes go missing (some only on one rank).
    gen = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(EMA_STEPS):
        y = torch.randint(0, 6, (9, ), generator=gen)
        z = 3 * torch.randn(9, DIM, generator=gen)
        batches.append((z, y))
    return batches


def shard(num, rank):
    # Uneven shards: rank 0 takes every third item, rank 1 the rest.
    idx = torch.arange(num)
    return idx[idx % 3 == 0] if rank == 0 else idx[idx % 3 != 0]


def run_geometry(rank=None):
    """Init on all latents, EMA on this rank's shards (all when None)."""
    import warnings

    from mmpretrain.registry import MODELS

    import galddc_mm  # noqa: F401
    geom = MODELS.build(
        dict(
            type='ClassGeometry',
            num_classes=NUM_CLASSES,
            latent_dim=DIM,
            tau=TAU,
            proto_momentum=0.3,
            radius_momentum=0.2,
            radius_scale='seed'))  # r_obs follows the EMA
    latents, labels = make_data()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # the empty class 6
        geom.init_from_latents(
            latents, labels, class_counts=COUNTS, chunk_size=16)
    for z, y in make_batches():
        sel = torch.arange(len(y)) if rank is None else shard(len(y), rank)
        geom.ema_update(z[sel], y[sel])
    return {k: v.clone() for k, v in geom.state_dict().items()}


def _worker(rank, world_size, port, out_dir):
    os.environ.setdefault('OMP_NUM_THREADS', '1')
    torch.set_num_threads(1)
    start_gloo_group(rank, world_size, port)
    try:
        from mmengine.dist import get_world_size
        assert get_world_size() == world_size
        state = run_geometry(rank)
    finally:
        threads_left = end_gloo_group()
    torch.save(
        dict(state=state, gloo_threads_left=threads_left),
        osp.join(out_dir, f'rank{rank}.pth'))


class TestClassGeometryDistributed(TestCase):

    def test_two_ranks_match_single_process(self):
        with tempfile.TemporaryDirectory() as out_dir:
            mp.spawn(
                _worker,
                args=(2, free_port(), out_dir),
                nprocs=2,
                join=True)
            results = [
                torch.load(osp.join(out_dir, f'rank{r}.pth'))
                for r in range(2)
            ]
        # Nothing holds the group after it ends: no gloo thread is left to
        # abort a rank at interpreter exit.
        self.assertEqual([r['gloo_threads_left'] for r in results], [0, 0])
        states = [r['state'] for r in results]
        single = run_geometry(None)
        self.assertEqual(set(states[0]), set(single))
        for key, value in single.items():
            # Identical across ranks, bit for bit.
            self.assertTrue(
                torch.equal(states[0][key], states[1][key]), key)
            # Equal to one process on all the data up to float rounding.
            if value.is_floating_point():
                self.assertTrue(
                    torch.allclose(states[0][key], value, rtol=1e-5,
                                   atol=1e-6), key)
            else:
                self.assertTrue(torch.equal(states[0][key], value), key)
        # The EMA did move something, and the batch shards really differed.
        _, labels = make_batches()[0]
        self.assertNotEqual(
            sorted(labels[shard(len(labels), 0)].tolist()),
            sorted(labels[shard(len(labels), 1)].tolist()))
        self.assertFalse(
            torch.allclose(single['r_obs'], single['r_real']))
