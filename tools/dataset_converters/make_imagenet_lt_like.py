# Copyright (c) galddc_mm contributors. All rights reserved.
"""Write an ImageNet-LT-shaped data set of generated JPEGs, for benchmarks.

Nothing can be downloaded on the benchmark machines, yet a whole-run figure
must include what the real data costs: opening and decoding JPEGs of
ImageNet's size, then cropping them to 224 px. This script writes such a
set in the official layout and list format, so ``configs/galddc/
r50_imagenetlt.py`` (and the CE baseline) read it unchanged with
``--cfg-options train_dataloader.dataset.data_root=ROOT ...``::

    ROOT/ImageNet_LT_train.txt   train/<wnid>/<wnid>_<j>.JPEG <label>
    ROOT/ImageNet_LT_val.txt     (drawn from train/, as the real list)
    ROOT/ImageNet_LT_test.txt    val/<wnid>/ILSVRC2012_val_<id>.JPEG <label>
    ROOT/train/..., ROOT/val/...

Class sizes follow ImageNet-LT's profile: 1,000 classes sorted by size,
1,280 images in the largest and 5 in the smallest, 385 many-shot (> 100),
479 medium and 136 few-shot (< 20) classes, 115,846 training images in all
(log-linear between the ranks 0, 70, 385, 864, 999; ``--scale`` shrinks
every class, at least one image each). Val and test have 20 and 50 images
per class as the real lists (``--val-per-class``, ``--test-per-class``).

The images are not natural images, but they cost what natural images cost
to load: 500 x 375 pixels by default (ImageNet's most common size), a
low-frequency colour field per class plus texture, JPEG quality 90, about
60 KB each (the measured mean is printed). The wnid of label ``c`` is
``n{c:08d}``. Images are written by ``--workers`` processes; the output is
the same for a given ``--seed`` whatever the number of workers.

Example (about a minute on 16 cores; ~7 GB)::

    python tools/dataset_converters/make_imagenet_lt_like.py \\
        data/imagenet_lt_like --workers 16
"""
import argparse
import os
import os.path as osp
import time
from multiprocessing import Pool
from typing import List, Tuple

import cv2
import numpy as np

# Anchors of log(class size) against class rank (see the module docstring).
_RANKS = (0, 70, 384.5, 863.5, 999)
_SIZES = (1280, 220, 100.5, 19.5, 5)


def imagenet_lt_counts(num_classes: int = 1000,
                       scale: float = 1.0) -> np.ndarray:
    """Training images per class with ImageNet-LT's profile, largest first.

    Args:
        num_classes (int): Classes; the profile is stretched over them.
            Defaults to 1000.
        scale (float): Multiplies every class size (at least 1 image).
            Defaults to 1.0.

    Returns:
        np.ndarray: Sizes, (num_classes,), int.
    """
    ranks = np.arange(num_classes) * (999 / max(num_classes - 1, 1))
    sizes = np.exp(np.interp(ranks, _RANKS, np.log(_SIZES)))
    return np.maximum(np.round(sizes * scale), 1).astype(int)


def _image(label: int, index: int, seed: int, width: int,
           height: int) -> np.ndarray:
    """A BGR uint8 image: a class colour field plus per-image texture."""
    rng = np.random.default_rng([seed, label, index])
    class_rng = np.random.default_rng([seed, label])
    base = class_rng.uniform(40, 215, size=(1, 1, 3)).astype(np.float32)
    field = rng.standard_normal(
        (height // 25 + 1, width // 25 + 1, 3), dtype=np.float32) * 40
    field = cv2.resize(field, (width, height),
                       interpolation=cv2.INTER_CUBIC)
    texture = rng.standard_normal((height, width, 1), dtype=np.float32) * 7
    field += base
    field += texture
    return np.clip(field, 0, 255, out=field).astype(np.uint8)


def _write(job: Tuple[str, int, int, int, int, int, int]) -> int:
    path, label, index, seed, width, height, quality = job
    os.makedirs(osp.dirname(path), exist_ok=True)
    ok, data = cv2.imencode('.JPEG', _image(label, index, seed, width,
                                             height),
                            [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError(f'JPEG encoding failed for {path}.')
    data.tofile(path)
    return data.size


def plan(root: str, counts: np.ndarray, val_per_class: int,
         test_per_class: int) -> Tuple[dict, List[Tuple[str, int, int]]]:
    """The three lists and every image to write.

    Returns:
        tuple: ``({split: [(relative path, label)]}, [(path, label,
        index)])``; val entries reuse training-folder file names after the
        class's training images, as ImageNet-LT's val list does.
    """
    lists = dict(train=[], val=[], test=[])
    images = []
    test_id = 0
    for label, count in enumerate(counts):
        wnid = f'n{label:08d}'
        for j in range(count + val_per_class):
            rel = f'train/{wnid}/{wnid}_{j}.JPEG'
            lists['train' if j < count else 'val'].append((rel, label))
            images.append((osp.join(root, rel), label, j))
        for _ in range(test_per_class):
            test_id += 1
            rel = f'val/{wnid}/ILSVRC2012_val_{test_id:08d}.JPEG'
            lists['test'].append((rel, label))
            images.append((osp.join(root, rel), label, 10**6 + test_id))
    return lists, images


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Write an ImageNet-LT-shaped set of generated JPEGs.')
    parser.add_argument('root', help='output folder (the data_root)')
    parser.add_argument('--num-classes', type=int, default=1000)
    parser.add_argument('--scale', type=float, default=1.0,
                        help='multiplies every class size (default 1.0)')
    parser.add_argument('--val-per-class', type=int, default=20)
    parser.add_argument('--test-per-class', type=int, default=50)
    parser.add_argument('--size', type=int, nargs=2, default=(500, 375),
                        metavar=('W', 'H'), help='default 500 375')
    parser.add_argument('--quality', type=int, default=90)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--workers', type=int, default=os.cpu_count())
    args = parser.parse_args(argv)
    if args.num_classes < 1 or args.scale <= 0:
        parser.error('--num-classes must be >= 1 and --scale > 0.')
    if min(args.size) < 8 or not 1 <= args.quality <= 100:
        parser.error('--size needs at least 8 x 8 px and --quality 1-100.')
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    counts = imagenet_lt_counts(args.num_classes, args.scale)
    lists, images = plan(args.root, counts, args.val_per_class,
                         args.test_per_class)
    os.makedirs(args.root, exist_ok=True)
    for split, entries in lists.items():
        with open(osp.join(args.root, f'ImageNet_LT_{split}.txt'), 'w') as f:
            f.writelines(f'{rel} {label}\n' for rel, label in entries)
    width, height = args.size
    jobs = [(path, label, index, args.seed, width, height, args.quality)
            for path, label, index in images]
    start = time.perf_counter()
    with Pool(max(args.workers, 1)) as pool:
        sizes = pool.map(_write, jobs, chunksize=256)
    elapsed = time.perf_counter() - start
    print(f'{len(jobs)} JPEGs ({len(lists["train"])} train, '
          f'{len(lists["val"])} val, {len(lists["test"])} test; classes '
          f'{counts.max()}..{counts.min()}) written to {args.root} in '
          f'{elapsed:.1f}s; mean size {np.mean(sizes) / 1024:.1f} KB')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
