# Copyright (c) galddc_mm contributors. All rights reserved.
"""GALD-DC for long-tailed recognition, as an MMPretrain plugin.

Importing the package only registers: its components in MMPretrain's
registries (the runner, hooks, loops, models, ...), the safe checkpoint
loaders with mmengine's ``CheckpointLoader`` and the allow-list with
``torch.serialization.add_safe_globals`` (see
:mod:`galddc_mm.utils.safe_loading`), the atomic local file backend with
mmengine's ``register_backend``, and two warning filters. No attribute of
mmengine or mmpretrain is rebound; configs select the plugin's behaviour
by name (``runner_type``, ``default_hooks``). Configs load it with
``custom_imports = dict(imports=['galddc_mm'], allow_failed_imports=False)``.
"""
# isort: off
from .utils import register_safe_loading, silence_known_warnings

# Before the models import mmcv (its warning is issued at import), and
# before anything loads a checkpoint.
silence_known_warnings()
register_safe_loading()
from . import datasets, engine, evaluation, models  # noqa: E402,F401
# isort: on
from .version import __version__  # noqa: E402

__all__ = ['__version__']
