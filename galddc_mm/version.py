# Copyright (c) galddc_mm contributors. All rights reserved.
__version__ = '0.1.0'
