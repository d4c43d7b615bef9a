# Copyright (c) galddc_mm contributors. All rights reserved.
__all__ = []
