# Copyright (c) galddc_mm contributors. All rights reserved.
"""Install galddc_mm, the GALD-DC plugin for MMPretrain.

``pip install -e ".[tests]"`` installs the package, its runtime stack and
what the test suite needs. To use a full ``mmcv`` build (with CUDA ops)
instead of ``mmcv-lite``, install ``mmcv`` first and set
``GALDDC_USE_FULL_MMCV=1`` when installing this package.
"""
import os
import re

from setuptools import find_packages, setup


def get_version():
    with open(os.path.join('galddc_mm', 'version.py')) as f:
        return re.search(r"__version__ = '([^']+)'", f.read()).group(1)


mmcv_req = ('mmcv>=2.0.0,<2.3.0' if os.environ.get('GALDDC_USE_FULL_MMCV')
            else 'mmcv-lite==2.2.0')

install_requires = [
    'torch>=2.4',  # torch.serialization.add_safe_globals
    'torchvision>=0.19',
    'mmengine==0.10.7',
    mmcv_req,
    'mmpretrain==1.2.0',
    # mmengine resolves ``mmpretrain::`` config inheritance through
    # ``pkg_resources``, which setuptools>=81 no longer ships.
    'setuptools<81',
    'numpy',
    'scikit-learn',
    'matplotlib',
]

extras_require = {
    'tests': ['pytest', 'diffusers', 'ruff', 'isort'],
    'tensorboard': ['tensorboard'],
}

setup(
    name='galddc_mm',
    version=get_version(),
    description='GALD-DC: geometry-aware latent diffusion with distribution '
    'calibration for long-tailed recognition, as an MMPretrain plugin',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    packages=find_packages(exclude=('configs', 'tools', 'tests', 'docs')),
    include_package_data=True,
    python_requires='>=3.9',
    install_requires=install_requires,
    extras_require=extras_require,
    license='Apache-2.0',
    zip_safe=False,
)
