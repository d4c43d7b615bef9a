# Copyright (c) galddc_mm contributors. All rights reserved.
"""Tiny data files in the real on-disk formats, for tests.

* :func:`make_cifar_pickles` writes CIFAR-10/100 python-pickle batches
  (``cifar-10-batches-py/data_batch_1..5``, ``test_batch``;
  ``cifar-100-python/train``, ``test``) with a few images per class.
* :func:`make_list_dataset` writes the split lists of ImageNet-LT,
  Places-LT or iNaturalist 2018 and (optionally) tiny JPEG images at the
  paths they name.

Both return what they wrote so tests can compare against it. Nothing here
imports galddc_mm.
"""
import os
import os.path as osp
import pickle
from typing import Dict, Optional, Sequence, Union

import cv2
import numpy as np

CIFAR_LAYOUT = {
    'cifar10': dict(
        folder='cifar-10-batches-py',
        train=['data_batch_1', 'data_batch_2', 'data_batch_3',
               'data_batch_4', 'data_batch_5'],
        test=['test_batch'],
        label_key=b'labels',
        num_classes=10),
    'cifar100': dict(
        folder='cifar-100-python',
        train=['train'],
        test=['test'],
        label_key=b'fine_labels',
        num_classes=100),
}


def _cifar_images(labels: np.ndarray, rng: np.random.RandomState,
                  offset: int) -> np.ndarray:
    """Random (N, 3072) uint8 images; the first two bytes (red channel of
    pixels (0, 0) and (0, 1)) encode ``offset + i`` so every image of a
    generated set is unique and its origin can be read back."""
    data = rng.randint(0, 256, size=(len(labels), 3072)).astype(np.uint8)
    ids = offset + np.arange(len(labels))
    data[:, 0] = ids // 256
    data[:, 1] = ids % 256
    return data


def image_id(img: np.ndarray) -> int:
    """Read back the id written by :func:`make_cifar_pickles` from an HWC
    image (the ``'img'`` of a CIFAR-LT data sample)."""
    return int(img[0, 0, 0]) * 256 + int(img[0, 1, 0])


def make_cifar_pickles(root: str,
                       kind: str = 'cifar10',
                       per_class: Union[int, Sequence[int]] = 20,
                       test_per_class: int = 4,
                       seed: int = 0) -> dict:
    """Write a tiny CIFAR-10/100 in the official python-pickle format.

    Batches hold ``{b'batch_label', b'labels' | b'fine_labels',
    b'data', b'filenames'}`` like the official files read with
    ``encoding='bytes'``; ``data`` is ``(N, 3072)`` uint8, row-major CHW.
    Labels are shuffled (like the real files) and training images are
    split over the batches in order. Image ids (see :func:`image_id`) are
    ``0..N_train-1`` for train and ``N_train..`` for test.

    Args:
        root (str): Data root; the CIFAR folder is created inside it.
        kind (str): ``'cifar10'`` or ``'cifar100'``.
        per_class (int | Sequence[int]): Training images per class.
        test_per_class (int): Test images per class.
        seed (int): Seed of the labels' order and the pixels.

    Returns:
        dict: ``train_data`` (N, 3072), ``train_labels`` (N,),
        ``test_data``, ``test_labels`` and ``folder`` (the path written).
    """
    layout = CIFAR_LAYOUT[kind]
    num_classes = layout['num_classes']
    if isinstance(per_class, int):
        per_class = [per_class] * num_classes
    rng = np.random.RandomState(seed)
    train_labels = rng.permutation(
        np.repeat(np.arange(num_classes), per_class))
    test_labels = rng.permutation(
        np.repeat(np.arange(num_classes), test_per_class))
    train_data = _cifar_images(train_labels, rng, 0)
    test_data = _cifar_images(test_labels, rng, len(train_labels))

    folder = osp.join(root, layout['folder'])
    os.makedirs(folder, exist_ok=True)
    key = layout['label_key']
    chunks = np.array_split(np.arange(len(train_labels)), len(layout['train']))
    for name, idx in zip(layout['train'], chunks):
        _dump(osp.join(folder, name), train_data[idx], train_labels[idx], key,
              name)
    _dump(osp.join(folder, layout['test'][0]), test_data, test_labels, key,
          layout['test'][0])
    return dict(
        train_data=train_data,
        train_labels=train_labels,
        test_data=test_data,
        test_labels=test_labels,
        folder=folder)


def _dump(path, data, labels, key, name):
    entry = {
        b'batch_label': name.encode(),
        key: [int(x) for x in labels],
        b'data': data,
        b'filenames': [f'{name}_{i}.png'.encode() for i in range(len(data))],
    }
    with open(path, 'wb') as f:
        pickle.dump(entry, f, protocol=2)


LIST_LAYOUT = {
    'imagenet_lt': dict(
        lists=dict(
            train='ImageNet_LT_train.txt',
            val='ImageNet_LT_val.txt',
            test='ImageNet_LT_test.txt'),
        num_classes=1000),
    'places_lt': dict(
        lists=dict(
            train='Places_LT_train.txt',
            val='Places_LT_val.txt',
            test='Places_LT_test.txt'),
        num_classes=365),
    'inat2018': dict(
        lists=dict(
            train='iNaturalist18_train.txt', val='iNaturalist18_val.txt'),
        num_classes=8142),
}


def _train_path(kind: str, label: int, j: int) -> str:
    """Relative path of the j-th training-set image of a class."""
    if kind == 'imagenet_lt':
        wnid = f'n{label:08d}'
        return f'train/{wnid}/{wnid}_{j}.JPEG'
    if kind == 'places_lt':
        return f'data_256/a/class{label}/{j:08d}.jpg'
    return f'train_val2018/Plantae/{label}/{j:032x}.jpg'


def _eval_path(kind: str, label: int, idx: int, val_style: str) -> str:
    """Relative path of an image of the *original* validation set."""
    if kind == 'imagenet_lt':
        name = f'ILSVRC2012_val_{idx:08d}.JPEG'
        if val_style == 'flat':
            return f'val/{name}'
        return f'val/n{label:08d}/{name}'
    if kind == 'places_lt':
        return f'val_256/Places365_val_{idx:08d}.jpg'
    # iNat 2018 validation images live in the same tree as training ones.
    return f'train_val2018/Plantae/{label}/{10**6 + idx:032x}.jpg'


CountsLike = Union[Sequence[int], Dict[int, int]]


def make_list_dataset(root: str,
                      kind: str = 'imagenet_lt',
                      train_counts: CountsLike = (6, 4, 2, 1),
                      val_per_class: int = 2,
                      test_per_class: int = 3,
                      val_style: str = 'nested',
                      disk_val_style: Optional[str] = None,
                      write_images: bool = True,
                      image_size: int = 8) -> dict:
    """Write split lists (and tiny images) of a list-based LT data set.

    Lists follow the public files: ``relative/path label`` per line.

    * ``imagenet_lt``: ``train/<wnid>/<wnid>_<j>.JPEG`` for train and val
      (ImageNet-LT's val list is drawn from the ImageNet training images),
      ``val/<wnid>/ILSVRC2012_val_<id>.JPEG`` (``val_style='nested'``) or
      ``val/ILSVRC2012_val_<id>.JPEG`` (``'flat'``) for test. The fake wnid
      of label ``c`` is ``n{c:08d}``.
    * ``places_lt``: ``data_256/a/class<c>/<j>.jpg`` for train and val,
      ``val_256/Places365_val_<id>.jpg`` for test.
    * ``inat2018``: ``train_val2018/Plantae/<c>/<hex>.jpg``; only a train and
      a val list (no test list, as the real data set).

    Args:
        root (str): Data root; lists go directly into it.
        kind (str): ``'imagenet_lt'``, ``'places_lt'`` or ``'inat2018'``.
        train_counts (Sequence[int] | dict): Training images per class:
            a sequence for labels ``0..len-1`` or ``{label: count}``.
        val_per_class (int): Val-list images per class.
        test_per_class (int): Test-list images per class.
        val_style (str): ImageNet test-list path style, ``'nested'`` or
            ``'flat'``.
        disk_val_style (str, optional): Layout of the ImageNet validation
            images on disk; defaults to ``val_style``.
        write_images (bool): Write a tiny JPEG at every listed path.
        image_size (int): Side of the images.

    Returns:
        dict: ``lists`` (split -> list path), ``entries`` (split -> list of
        ``(path, label)`` as written), ``train_counts`` (np.ndarray of K
        training counts), ``num_classes``.
    """
    layout = LIST_LAYOUT[kind]
    num_classes = layout['num_classes']
    if not isinstance(train_counts, dict):
        train_counts = dict(enumerate(train_counts))
    disk_val_style = disk_val_style or val_style
    os.makedirs(root, exist_ok=True)

    entries = {split: [] for split in layout['lists']}
    disk_paths = []
    eval_idx = 1
    for label, count in sorted(train_counts.items()):
        for j in range(count):
            entries['train'].append((_train_path(kind, label, j), label))
        for j in range(val_per_class):
            if kind == 'inat2018':
                path = _eval_path(kind, label, eval_idx, val_style)
                eval_idx += 1
            else:
                # val lists of ImageNet-LT / Places-LT come from the
                # training images not in the train list.
                path = _train_path(kind, label, 10_000 + j)
            entries['val'].append((path, label))
        if 'test' in entries:
            for _ in range(test_per_class):
                path = _eval_path(kind, label, eval_idx, val_style)
                entries['test'].append((path, label))
                disk_paths.append(
                    _eval_path(kind, label, eval_idx, disk_val_style))
                eval_idx += 1
    lists = {}
    for split, name in layout['lists'].items():
        lists[split] = osp.join(root, name)
        with open(lists[split], 'w') as f:
            for path, label in entries[split]:
                f.write(f'{path} {label}\n')

    if write_images:
        rng = np.random.RandomState(0)
        for path in [p for p, _ in entries['train'] + entries['val']
                     ] + disk_paths:
            full = osp.join(root, path)
            os.makedirs(osp.dirname(full), exist_ok=True)
            img = rng.randint(0, 256, (image_size, image_size, 3),
                              dtype=np.uint8)
            cv2.imwrite(full, img)

    counts = np.zeros(num_classes, dtype=np.int64)
    for label, count in train_counts.items():
        counts[label] = count
    return dict(
        lists=lists,
        entries=entries,
        train_counts=counts,
        num_classes=num_classes)


# A tiny GALD-DC model (4 classes, 64-d latents from CifarResNet-20) for
# model-level tests that need the real classifier but no training run.
TINY_NUM_CLASSES, TINY_DIM = 4, 64
TINY_GALDDC_MODEL = dict(
    type='GALDDCClassifier',
    backbone=dict(type='CifarResNet', depth=20, in_channels=3),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=TINY_NUM_CLASSES,
        in_channels=TINY_DIM,
        loss=dict(type='CrossEntropyLoss')),
    diffusion_head=dict(
        type='LatentDiffusionHead',
        schedule=dict(type='NoiseSchedule', num_timesteps=50),
        denoiser=dict(type='ResMLPDenoiser', hidden_dim=32, num_blocks=2,
                      time_embed_dim=16),
        sampler=dict(type='DDIMSampler', num_steps=5),
        proto_loss=dict(type='PrototypeLoss', loss_weight=0.1),
        radius_loss=dict(type='CalibratedRadiusLoss', loss_weight=0.1),
        margin_loss=dict(type='PrototypeMarginLoss', margin=1.0,
                         loss_weight=0.1)),
    geometry=dict(type='ClassGeometry', tau=3))


class CountingBackend:
    """A ``torch.compile`` backend that runs the captured graph as it is
    and counts the compilations (``fail=True``: every one fails)."""

    def __init__(self, fail=False):
        self.calls = 0
        self.fail = fail

    def __call__(self, graph_module, example_inputs):
        self.calls += 1
        if self.fail:
            raise RuntimeError('this backend cannot compile')
        return graph_module.forward
