# Copyright (c) galddc_mm contributors. All rights reserved.
"""tools/benchmarks/decode_beside_step.py on the CPU.

Its figures are GPU figures (docs/benchmarks.md); here: the worker
collate's flat buffer holds exactly the decoded images, the crop of that
buffer reads the right pixels, and the script runs end to end and reports
nvImageCodec as skipped off CUDA.
"""
import json
import os.path as osp
import sys
import tempfile
from unittest import TestCase

import cv2
import numpy as np
import torch
from conftest import REPO_ROOT
from torchvision.io import ImageReadMode, decode_jpeg

sys.path.insert(0, osp.join(REPO_ROOT, 'tools', 'benchmarks'))

import decode_beside_step as dbs  # noqa: E402


def _write_jpegs(folder, sizes):
    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate(sizes):
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        paths.append(osp.join(folder, f'{i}.JPEG'))
        cv2.imwrite(paths[-1], img)
    return paths


class TestDecodeBesideStep(TestCase):

    def test_worker_collate_and_crop(self):
        with tempfile.TemporaryDirectory() as tmp:
            blobs = dbs.read_files(
                _write_jpegs(tmp, [(20, 30), (25, 17), (16, 16)]))
        flat, sizes = dbs.WorkerCollate('nvjpeg', 'cpu')(blobs)
        # Independently: torchvision's decode of each file, CHW, in order.
        files = [torch.frombuffer(bytearray(b), dtype=torch.uint8)
                 for b in blobs]
        expected = [decode_jpeg(f, mode=ImageReadMode.RGB) for f in files]
        self.assertEqual(sizes.tolist(),
                         [list(e.shape[-2:]) for e in expected])
        torch.testing.assert_close(
            flat, torch.cat([e.reshape(-1) for e in expected]))

        torch.manual_seed(0)
        x = dbs.crop_batch(flat, sizes, 8)
        self.assertEqual(tuple(x.shape), (3, 3, 8, 8))
        self.assertTrue(x.is_contiguous(memory_format=torch.channels_last))
        self.assertGreaterEqual(float(x.min()), 0.)
        self.assertLessEqual(float(x.max()), 1.)
        # Boxes covering each image whole, resampled to 16 x 16: the third
        # image (16 x 16) comes back as it is, so crop_batch splits the
        # buffer at the right places.
        whole = torch.cat([torch.zeros(3, 2, dtype=torch.long), sizes], 1)
        out = dbs.crop_batch(flat, sizes, 16, boxes=whole)
        torch.testing.assert_close(out[2] * 255., expected[2].float(),
                                   atol=1e-3, rtol=0)
        self.assertGreater(
            float((out[0] * 255. - expected[0][:, :16, :16].float()).abs()
                  .max()), 1.)  # a resized image differs from its corner

    def test_runs_on_cpu(self):
        """Every mode end to end, the workers mode with one spawned worker
        (its dataset, collate and sampler pickled into a fresh process)."""
        with tempfile.TemporaryDirectory() as tmp:
            _write_jpegs(tmp, [(24, 24)] * 4)
            out = osp.join(tmp, 'out.json')
            dbs.main([
                '--files', osp.join(tmp, '*.JPEG'), '--batch-size', '2',
                '--steps', '2', '--warmup', '1', '--model', 'resnet18',
                '--image-size', '32', '--workers', '1', '--gil-seconds',
                '0.2', '--device', 'cpu', '--out', out
            ])
            with open(out) as f:
                res = json.load(f)
        rows = res['results']
        self.assertEqual(res['files'], 4)
        self.assertGreater(rows['step_alone_ms'], 0)
        nvjpeg = rows['nvjpeg']
        self.assertGreater(nvjpeg['alone_img_s'], 0)
        self.assertGreater(nvjpeg['thread']['step_ms'], 0)
        # Tiny CPU decodes finish many times within two steps.
        self.assertGreater(nvjpeg['thread']['decode']['batches'], 0)
        self.assertGreater(nvjpeg['gil']['python_loop'], 0)
        self.assertGreater(nvjpeg['workers']['img_s'], 0)
        self.assertTrue(0 <= nvjpeg['workers']['waiting'] <= 1)
        for name in ('nvimgcodec_hw', 'nvimgcodec_hybrid'):
            self.assertIn('skipped', rows[name])

    def test_thread_error_is_raised(self):
        """A decoder that fails in the thread fails the measurement."""

        def broken(blobs):
            raise ValueError('not a JPEG')

        with self.assertRaisesRegex(RuntimeError, 'not a JPEG'):
            with dbs.DecodingThread(broken, [[b'x']],
                                    torch.device('cpu')) as th:
                th.rate(lambda: 0.0)

    def test_unknown_mode(self):
        with self.assertRaisesRegex(SystemExit, 'Unknown modes'):
            dbs.main(['--files', 'x', '--modes', 'alone,fast'])
