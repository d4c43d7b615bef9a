# Copyright (c) galddc_mm contributors. All rights reserved.
from .class_geometry import ClassGeometry

__all__ = ['ClassGeometry']
