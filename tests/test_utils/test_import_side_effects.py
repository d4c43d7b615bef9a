# Copyright (c) galddc_mm contributors. All rights reserved.
"""Importing galddc_mm registers things and changes nothing of its host.

A plugin that rebinds mmengine's or mmpretrain's functions on import
surprises every user who imports another plugin. Each check runs in a
fresh interpreter, so that the import really is the first one.
"""
import textwrap
from unittest import TestCase

from conftest import run_tool

# The acceptance check of the extension-points issue, verbatim.
EXACT = (
    "import mmengine.hooks.checkpoint_hook as h, "
    "mmengine.runner.checkpoint as c; "
    "a=(h.__dict__.get('open'), c.save_checkpoint, c._load_checkpoint); "
    "import galddc_mm; "
    "assert a==(h.__dict__.get('open'), c.save_checkpoint, "
    "c._load_checkpoint)")

# Snapshot ``vars()`` of every mmengine*/mmpretrain* module imported so
# far (the ones galddc_mm uses, imported first), import galddc_mm, compare.
# Registries' dicts may grow (that is registration); no module attribute
# may be rebound, and none may be added except newly imported submodules.
SNAPSHOT = textwrap.dedent('''
    import importlib
    import sys
    import types

    for name in [
            'mmengine', 'mmengine.dist', 'mmengine.fileio', 'mmengine.hooks',
            'mmengine.hooks.checkpoint_hook', 'mmengine.logging',
            'mmengine.model', 'mmengine.optim', 'mmengine.registry',
            'mmengine.runner', 'mmengine.runner.checkpoint',
            'mmengine.runner.runner', 'mmpretrain', 'mmpretrain.datasets',
            'mmpretrain.engine', 'mmpretrain.evaluation', 'mmpretrain.models',
            'mmpretrain.registry', 'mmpretrain.structures'
    ]:
        importlib.import_module(name)
    before = {
        name: dict(vars(module))
        for name, module in list(sys.modules.items())
        if module is not None
        and name.split('.')[0] in ('mmengine', 'mmpretrain')
    }
    import galddc_mm
    changed = []
    for name, attrs in before.items():
        now = vars(sys.modules[name])
        changed += [f'rebound {name}.{key}' for key, value in attrs.items()
                    if now.get(key, KeyError) is not value]
        changed += [f'added {name}.{key}' for key, value in now.items()
                    if key not in attrs
                    and not isinstance(value, types.ModuleType)]
    assert len(before) > 100, len(before)
    print(f'{len(before)} modules;', changed or 'nothing changed')
    assert not changed, changed
''')


class TestImportChangesNoHostAttribute(TestCase):

    def test_checkpoint_functions_untouched(self):
        run_tool(['-c', EXACT])

    def test_no_module_attribute_rebound_or_added(self):
        proc = run_tool(['-c', SNAPSHOT])
        self.assertIn('nothing changed', proc.stdout)
