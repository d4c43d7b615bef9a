# Copyright (c) galddc_mm contributors. All rights reserved.
from contextlib import ExitStack, contextmanager

import torch.nn as nn
from mmengine.device import get_device
from mmengine.model import MMSeparateDistributedDataParallel
from mmengine.registry import MODEL_WRAPPERS as MMENGINE_MODEL_WRAPPERS
from mmpretrain.registry import MODEL_WRAPPERS
from torch.nn.parallel import DistributedDataParallel

from .cpu_compatible_ddp import CPUCompatibleDDP


@MODEL_WRAPPERS.register_module()
class GALDDCDistributedDataParallel(MMSeparateDistributedDataParallel):
    """Wrap each trainable child of a GALD-DC model in its own DDP.

    GALD-DC trains different parts in different stages (encoder + head,
    then the diffusion head, then head or encoder again) through
    ``OptimWrapperDict`` and the model's own ``train_step``. One DDP around
    the whole model cannot do that: ``MMDistributedDataParallel.train_step``
    never calls the module's ``train_step``, and a part that gets no
    gradient in a stage breaks DDP's reducer. As in mmengine's
    :class:`MMSeparateDistributedDataParallel`, every direct child with
    trainable parameters is wrapped separately (in
    :class:`CPUCompatibleDDP`); children without parameters, or whose
    parameters are all frozen (e.g. the frozen encoder copy), stay
    unwrapped, and ``train_step``/``val_step``/``test_step`` call the
    model's own methods. Differences from the upstream class:

    - CPU processes work: the ``device_ids`` mmengine's ``Runner`` passes are
      dropped for CPU children (see :class:`CPUCompatibleDDP`).
    - :meth:`no_sync` enters every wrapped child's ``no_sync`` and yields
      once (upstream yields inside its loop and fails on unwrapped
      children).

    A child that is frozen in some stage must then be called through its
    unwrapped module (``child.module``) under ``torch.no_grad()``, so its
    DDP never waits for a gradient that will not come.

    Args:
        module (nn.Module): The model whose children are wrapped.
        broadcast_buffers (bool): See
            :class:`torch.nn.parallel.DistributedDataParallel`.
            Defaults to False.
        find_unused_parameters (bool): See
            :class:`torch.nn.parallel.DistributedDataParallel`.
            Defaults to False.
        **kwargs: Other keyword arguments of ``DistributedDataParallel``
            (``device_ids`` is passed by mmengine's ``Runner``).
    """

    def __init__(self,
                 module: nn.Module,
                 broadcast_buffers: bool = False,
                 find_unused_parameters: bool = False,
                 **kwargs):
        # Like the upstream class, skip DDP's own constructor: only the
        # children are distributed, the wrapper just holds the model.
        super(DistributedDataParallel, self).__init__()
        self.module = module
        device = get_device()
        for name, child in module._modules.items():
            if child is None:
                continue
            child = child.to(device)
            if any(p.requires_grad for p in child.parameters()):
                child = CPUCompatibleDDP(
                    module=child,
                    broadcast_buffers=broadcast_buffers,
                    find_unused_parameters=find_unused_parameters,
                    **kwargs)
            module._modules[name] = child
        # mmengine's Runner saves ``model.module.state_dict()``, which would
        # now name a wrapped child's weights '<child>.module.<param>'. Strip
        # that segment so checkpoints have the same keys whatever the number
        # of processes (mmengine's loader already unwraps children).
        module._register_state_dict_hook(_strip_wrapper_keys)

    @contextmanager
    def no_sync(self):
        """Disable gradient synchronisation of every wrapped child."""
        with ExitStack() as stack:
            for child in self.module._modules.values():
                if isinstance(child, DistributedDataParallel):
                    stack.enter_context(child.no_sync())
            yield


def _strip_wrapper_keys(module, state_dict, prefix, local_metadata):
    """State-dict hook: '<prefix><child>.module.x' -> '<prefix><child>.x'."""
    for name, child in module._modules.items():
        if not isinstance(child, DistributedDataParallel):
            continue
        wrapped = f'{prefix}{name}.module.'
        for key in [k for k in state_dict if k.startswith(wrapped)]:
            new_key = f'{prefix}{name}.' + key[len(wrapped):]
            state_dict[new_key] = state_dict.pop(key)
    return state_dict


# mmengine's ``Runner.wrap_model`` looks the type up with the root
# ``mmengine.registry.MODEL_WRAPPERS.get(type)``, which searches the root and
# its parents but never the mmpretrain child, so an unscoped type name would
# come back as ``None``. Registering the class in the root registry as well
# makes both the plain and the ``'mmpretrain.'``-scoped name work.
MMENGINE_MODEL_WRAPPERS.register_module(module=GALDDCDistributedDataParallel)
