# Copyright (c) galddc_mm contributors. All rights reserved.
"""GALD-DC for long-tailed recognition, as an MMPretrain plugin.

Importing the package registers every component in MMPretrain's registries
and applies the small compatibility fixes this stack needs (see
:mod:`galddc_mm.utils.compat`). Configs load it with
``custom_imports = dict(imports=['galddc_mm'], allow_failed_imports=False)``.
"""
# isort: off
# The compatibility fixes must be in place before anything loads a checkpoint.
from .utils import compat  # noqa: F401
# isort: on
from . import datasets, engine, evaluation, models  # noqa: F401
from .version import __version__

__all__ = ['__version__']
