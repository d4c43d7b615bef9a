# Copyright (c) galddc_mm contributors. All rights reserved.
from typing import Dict

import torch.nn as nn
from mmengine.model import MMDistributedDataParallel
from mmengine.registry import MODEL_WRAPPERS as MMENGINE_MODEL_WRAPPERS
from mmpretrain.registry import MODEL_WRAPPERS


def cpu_compatible_ddp_kwargs(module: nn.Module, kwargs: Dict) -> Dict:
    """Drop ``device_ids``/``output_device`` for a module living on the CPU.

    mmengine's ``Runner.wrap_model`` always passes
    ``device_ids=[LOCAL_RANK]``; ``torch.nn.parallel.DistributedDataParallel``
    accepts device ids only for single-device *GPU* modules and raises for a
    CPU module. For a CPU module they must be ``None``; for anything else the
    arguments are left untouched.

    Args:
        module (nn.Module): The module about to be wrapped.
        kwargs (dict): Keyword arguments meant for ``DistributedDataParallel``.

    Returns:
        dict: A copy of ``kwargs``, with ``device_ids=None`` and
        ``output_device=None`` when every parameter of ``module`` is on the
        CPU.
    """
    kwargs = dict(kwargs)
    devices = {p.device.type for p in module.parameters()}
    if devices == {'cpu'}:
        kwargs['device_ids'] = None
        kwargs['output_device'] = None
    return kwargs


@MODEL_WRAPPERS.register_module()
class CPUCompatibleDDP(MMDistributedDataParallel):
    """``MMDistributedDataParallel`` that also runs on CPU processes (gloo).

    Identical to :class:`mmengine.model.MMDistributedDataParallel` on GPUs.
    On a CPU-only machine (``torchrun`` with the gloo backend) it ignores the
    ``device_ids=[LOCAL_RANK]`` that mmengine's ``Runner`` passes, because
    ``DistributedDataParallel`` refuses device ids for CPU modules. The base
    runtime config selects it with
    ``model_wrapper_cfg = dict(type='CPUCompatibleDDP')``.

    Args:
        module (nn.Module): Model to be wrapped.
        detect_anomalous_params (bool): See
            :class:`mmengine.model.MMDistributedDataParallel`.
            Defaults to False.
        **kwargs: Keyword arguments of
            :class:`torch.nn.parallel.DistributedDataParallel`.
    """

    def __init__(self,
                 module: nn.Module,
                 detect_anomalous_params: bool = False,
                 **kwargs):
        super().__init__(
            module=module,
            detect_anomalous_params=detect_anomalous_params,
            **cpu_compatible_ddp_kwargs(module, kwargs))


# mmengine's ``Runner.wrap_model`` looks the type up with the root
# ``mmengine.registry.MODEL_WRAPPERS.get(type)``, which searches the root and
# its parents but never the mmpretrain child, so an unscoped type name would
# come back as ``None``. Registering the class in the root registry as well
# makes both the plain and the ``'mmpretrain.'``-scoped name work.
MMENGINE_MODEL_WRAPPERS.register_module(module=CPUCompatibleDDP)
