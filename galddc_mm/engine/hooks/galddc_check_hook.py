# Copyright (c) galddc_mm contributors. All rights reserved.
import random

import numpy as np
import torch
from mmengine.hooks import Hook
from mmpretrain.registry import HOOKS
from mmpretrain.utils import get_ori_model

from galddc_mm.models.classifiers.stages import DIFFUSION


@HOOKS.register_module()
class GALDDCCheckHook(Hook):
    """Refuse GALD-DC configurations that would fail later, before any epoch.

    In the manner of MMPretrain's ``ClassNumCheckHook``: when training
    starts (``before_train``, before the first epoch), the config is
    checked against the model and the data, so a bad configuration costs
    seconds, not a stage of training:

    - every stage's trainable parts have an optimiser wrapper;
    - ``model.head.num_classes`` (which the diffusion head and the geometry
      inherit) equals the number of classes of the training set
      (``metainfo['classes']`` and the class counts);
    - with a diffusion stage: ``model.geometry.tau`` leaves at least one
      head class (``n_y >= tau``), else ``r_prior`` is undefined; no tail
      class, or a class without training images, is allowed and logged as
      a warning; a :class:`ClassGeometryHook` is registered (it fits the
      class statistics the stage needs);
    - the encoder (backbone + neck) pools one training sample to a
      ``(1, D)`` latent with ``D = model.head.in_channels``: one forward of
      the frozen copy E^(0) in eval mode, under a saved and restored random
      state, so the run is unchanged.

    DDIM step counts are checked when the model and the hooks are built.
    """

    priority = 'VERY_HIGH'

    def before_train(self, runner) -> None:
        loop = runner.train_loop
        stages = getattr(loop, 'stages', None)
        model = get_ori_model(runner.model)
        if stages is None or not hasattr(model, 'set_stage'):
            raise TypeError(
                'GALDDCCheckHook checks a GALDDCTrainLoop driving a '
                'GALDDCClassifier; got '
                f'{type(loop).__name__} and {type(model).__name__}.')
        self._check_optim_parts(runner, model, stages)
        dataset = loop.image_dataloader.dataset
        counts = (np.asarray(dataset.get_class_counts())
                  if hasattr(dataset, 'get_class_counts') else None)
        self._check_num_classes(model, dataset, counts)
        if any(stage.name == DIFFUSION for stage in stages):
            if counts is not None:
                for message in model.geometry.check_class_counts(counts):
                    runner.logger.warning(message)
            if not any(
                    type(hook).__name__ == 'ClassGeometryHook'
                    for hook in runner.hooks):
                raise ValueError(
                    'The diffusion stage needs a ClassGeometryHook (it fits '
                    'the class statistics and updates their EMA); add '
                    "default_hooks.class_geometry=dict(type="
                    "'ClassGeometryHook') or inherit "
                    'configs/_base_/galddc_default.py.')
        self._check_latent_dim(loop, model, dataset)

    @staticmethod
    def _check_optim_parts(runner, model, stages) -> None:
        optim_cfg = runner.cfg.get('optim_wrapper') or {}
        if optim_cfg.get('constructor') != 'GALDDCOptimWrapperConstructor':
            return
        for stage in stages:
            for part in model.trainable_parts(stage.name, stage.mode):
                # ``--cfg-options optim_wrapper.<part>=None`` drops it.
                if optim_cfg.get(part) is None:
                    raise KeyError(
                        f'Stage {stage!r} trains the {part!r} part but '
                        f'optim_wrapper has no {part!r} entry; add '
                        f'optim_wrapper.{part}=dict(optimizer=...).')

    @staticmethod
    def _check_num_classes(model, dataset, counts) -> None:
        classes = (getattr(dataset, 'metainfo', None) or {}).get('classes')
        for what, n in (("metainfo['classes']",
                         None if classes is None else len(classes)),
                        ('get_class_counts()',
                         None if counts is None else len(counts))):
            if n is not None and n != model.num_classes:
                raise ValueError(
                    f'model.head.num_classes={model.num_classes} disagrees '
                    f'with the training set {type(dataset).__name__}, which '
                    f'has {n} classes (dataset.{what}). Set '
                    f'model.head.num_classes={n} (the diffusion head and the '
                    'geometry inherit it) and the data preprocessor\'s '
                    'num_classes, or fix the data set.')

    @staticmethod
    @torch.no_grad()
    def _check_latent_dim(loop, model, dataset) -> None:
        if len(dataset) == 0:
            return
        # The train pipeline draws random numbers: restore them so that
        # the check leaves the run exactly as it would be without it.
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            try:
                batch = loop.image_dataloader.collate_fn([dataset[0]])
                was_training = model.training
                model.eval()  # no BN statistics update
                try:
                    inputs = model.data_preprocessor(batch, False)['inputs']
                    # As it is: no fold or compilation for one sample.
                    feats = model.encode_frozen(inputs, fast=False)
                finally:
                    model.train(was_training)
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)
        if feats.dim() != 2 or feats.size(1) != model.latent_dim:
            raise ValueError(
                'The encoder (model.backbone + model.neck) turns a training '
                f'sample into a latent of shape {tuple(feats.shape)}, but '
                f'the model expects (1, {model.latent_dim}): '
                f'model.head.in_channels={model.latent_dim} is the latent '
                'dimension of the cls head, the diffusion head and the '
                'geometry. Set model.head.in_channels to the encoder\'s '
                'output channels (or use a neck that pools to (B, D)).')
