# Copyright (c) galddc_mm contributors. All rights reserved.
"""A call that runs through ``torch.compile`` where it pays, eagerly else."""
import logging
from typing import Callable, Optional, Tuple, Union

import torch
from mmengine.logging import print_log
from torch import Tensor


class CompiledCall:
    """``fn`` through ``torch.compile`` on some device types, eager elsewhere.

    The device is that of the first tensor argument. Compilation is lazy
    (at the first call of each new input shape, as ``torch.compile``'s).
    When the compiled call raises a ``torch._dynamo`` error, the call is
    run again eagerly: if that raises too, the error is ``fn``'s own (e.g.
    a shape mismatch, which dynamo reports as its own error) and
    propagates, the compiled path kept; if it succeeds, compiling failed,
    and the call falls back to ``fn`` for good, said once in the log. The
    eager retry repeats whatever the compiled pieces that ran before the
    failure did, so ``fn`` should be free of side effects (the frozen
    encoder and the sampling denoiser are). Once dynamo's recompilation
    limit is reached it runs ``fn`` eagerly itself, without an error.
    Attributes not found here are read from ``fn`` (e.g. a denoiser's
    ``accepts_shared_timestep``).

    Args:
        fn (callable): What to run, e.g. an ``nn.Module``.
        compile_cfg (dict, optional): Keyword arguments of
            ``torch.compile``; None never compiles. Defaults to None.
        devices (tuple[str]): Device types that take the compiled path.
            Defaults to ``('cuda', )``: a CPU run of a GPU recipe does not
            wait minutes for a C++ compiler.
        name (str): What the log calls it. Defaults to ``'call'``.
    """

    def __init__(self,
                 fn: Callable,
                 compile_cfg: Optional[dict] = None,
                 devices: Tuple[str, ...] = ('cuda', ),
                 name: str = 'call'):
        self.fn = fn
        self.compile_cfg = None if compile_cfg is None else dict(compile_cfg)
        self.compiled = (None if compile_cfg is None else torch.compile(
            fn, **self.compile_cfg))
        self.devices = tuple(devices)
        self.name = name
        self._announced = False

    def __getattr__(self, attr: str):
        # Only called for attributes not set in __init__; before __init__
        # (copy and pickle probe a bare instance) there is nothing to read.
        fn = self.__dict__.get('fn')
        if fn is None:
            raise AttributeError(attr)
        return getattr(fn, attr)

    def __call__(self, *args, **kwargs):
        first = next((a for a in args if isinstance(a, Tensor)), None)
        if (self.compiled is not None and first is not None
                and first.device.type in self.devices):
            from torch._dynamo.exc import TorchDynamoException
            if not self._announced:
                self._announced = True
                print_log(
                    f'{self.name} runs through torch.compile('
                    f'{self.compile_cfg}); each new input shape compiles '
                    'once.',
                    logger='current')
            try:
                return self.compiled(*args, **kwargs)
            except TorchDynamoException as error:
                # fn's own errors propagate from here, compiling kept.
                out = self.fn(*args, **kwargs)
                self.compiled = None
                print_log(
                    f'{self.name}: torch.compile failed, it runs eagerly '
                    f'from now on ({type(error).__name__}: {error}).',
                    logger='current',
                    level=logging.WARNING)
                return out
        return self.fn(*args, **kwargs)


def compile_kwargs(value: Union[bool, dict], name: str) -> Optional[dict]:
    """``torch.compile`` arguments of a bool-or-dict switch (None: eager).

    Args:
        value (bool | dict): False: no compilation; True:
            ``dict(dynamic=False)`` (one compilation per input shape); a
            dict: the arguments themselves.
        name (str): The switch, for the error message.

    Returns:
        dict | None: The arguments, or None.
    """
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, bool):
        return dict(dynamic=False) if value else None
    raise TypeError(f'{name} must be a bool or a dict of torch.compile '
                    f'arguments, got {value!r}.')
