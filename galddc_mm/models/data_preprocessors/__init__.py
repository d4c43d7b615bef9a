# Copyright (c) galddc_mm contributors. All rights reserved.
from .gpu_decode import (
    GPUDecodeClsDataPreprocessor,
    center_resize_box,
    resample_bilinear,
    sample_crop_boxes,
)

__all__ = [
    'GPUDecodeClsDataPreprocessor', 'center_resize_box', 'resample_bilinear',
    'sample_crop_boxes'
]
