# Copyright (c) galddc_mm contributors. All rights reserved.
from .backbones import *  # noqa: F401,F403
from .classifiers import *  # noqa: F401,F403
from .data_preprocessors import *  # noqa: F401,F403
from .diffusion import *  # noqa: F401,F403
from .geometry import *  # noqa: F401,F403
from .losses import *  # noqa: F401,F403
