# Copyright (c) galddc_mm contributors. All rights reserved.
from .crop_geometry import (
    center_resize_box,
    resample_bilinear,
    sample_crop_boxes,
)
from .gpu_decode import GPUDecodeClsDataPreprocessor

__all__ = [
    'GPUDecodeClsDataPreprocessor', 'center_resize_box', 'resample_bilinear',
    'sample_crop_boxes'
]
