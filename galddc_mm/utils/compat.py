# Copyright (c) galddc_mm contributors. All rights reserved.
"""Compatibility fixes for torch>=2.6 / mmengine 0.10.7 (filled in by the foundation work)."""
