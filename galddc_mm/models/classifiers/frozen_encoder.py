# Copyright (c) galddc_mm contributors. All rights reserved.
"""How the frozen encoder E^(0) runs: folded BatchNorms, ``torch.compile``.

E^(0) only ever runs in eval mode and without gradients: the hybrid
finetune stage runs it on every image batch next to E, the on-the-fly
diffusion stage and the latent-cache extraction run nothing else. Two
ways to make that forward cheaper, both exact up to float rounding:

- **Folding.** An eval BatchNorm is a fixed per-channel affine map
  ``y = a * x + b``; folded into the convolution that feeds it
  (``W' = a W``, ``b' = a c + b`` for a convolution ``W x + c``), it is no
  longer an operation of its own. In eager PyTorch this alone is *slower*
  on a GPU (docs/benchmarks.md: the convolution's bias becomes a broadcast
  add that costs more than the BatchNorm kernel did); with ``torch.compile``
  the bias, the ReLU and the residual add fuse into one kernel.
- **Compiling** (``torch.compile``): the element-wise work between the
  convolutions fused into few kernels.

What runs is derived data, never state: it lives outside the module tree
(not in ``state_dict``, ``parameters()`` or DDP) and is rebuilt from E^(0)
whenever one of E^(0)'s tensors has been replaced or written in place
(``freeze_encoder_copy``, a checkpoint load, ``.to()``).
"""
import copy
import weakref
from collections import Counter
from typing import Callable, Optional, Tuple

import torch
import torch.fx as fx
import torch.nn as nn
from mmengine.logging import print_log
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils.fusion import fuse_conv_bn_eval

from galddc_mm.utils.compiled_call import CompiledCall


class _Encoder(nn.Module):
    """``neck(backbone(x))`` as one module, its last output as ``(B, D)``."""

    def __init__(self, backbone: nn.Module, neck: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.neck = neck

    def forward(self, inputs: Tensor) -> Tensor:
        feats = self.neck(self.backbone(inputs))
        return feats[-1] if isinstance(feats, (tuple, list)) else feats


class _ConvBNTracer(fx.Tracer):
    """Keeps convolutions and every BatchNorm flavour as single nodes.

    ``SyncBatchNorm``'s forward branches on its input, which symbolic
    tracing cannot follow; as a leaf it is never looked into.
    """

    def is_leaf_module(self, module: nn.Module, qualname: str) -> bool:
        return (isinstance(module, (nn.Conv2d, _BatchNorm))
                or super().is_leaf_module(module, qualname))


def _foldable(node: fx.Node, modules: dict, calls: Counter) -> bool:
    """Whether ``node`` is an eval BatchNorm fed only by a 2-D convolution.

    Both modules must be called once in the whole graph: a convolution
    called twice would carry the BatchNorm into its other call too.
    """
    if node.op != 'call_module' or not isinstance(modules[node.target],
                                                  _BatchNorm):
        return False
    bn = modules[node.target]
    src = node.args[0] if len(node.args) == 1 and not node.kwargs else None
    return (isinstance(src, fx.Node) and src.op == 'call_module'
            and type(modules[src.target]) is nn.Conv2d
            and len(src.users) == 1 and calls[src.target] == 1
            and calls[node.target] == 1 and not bn.training
            and bn.running_mean is not None and bn.running_var is not None)


def fold_batch_norms(module: nn.Module) -> Tuple[nn.Module, int]:
    """An inference copy of ``module`` with eval BatchNorms folded.

    Every BatchNorm whose only input is the output of a plain
    ``nn.Conv2d`` (used by nothing else) is merged into that convolution
    with :func:`torch.nn.utils.fusion.fuse_conv_bn_eval`; the rest of the
    graph is left as traced. ``module`` itself is not changed.

    Args:
        module (nn.Module): In eval mode; traceable by ``torch.fx``.

    Returns:
        tuple[nn.Module, int]: The folded copy (a ``GraphModule``) and the
        number of BatchNorms folded.

    Raises:
        Exception: Whatever ``torch.fx`` raises for a module it cannot trace
            (e.g. ``TraceError`` for control flow on tensor values).
    """
    module = copy.deepcopy(module)
    graph = _ConvBNTracer().trace(module)
    folded = fx.GraphModule(module, graph)
    modules = dict(folded.named_modules())
    calls = Counter(node.target for node in folded.graph.nodes
                    if node.op == 'call_module')
    count = 0
    for node in list(folded.graph.nodes):
        if not _foldable(node, modules, calls):
            continue
        conv_node = node.args[0]
        conv = modules[conv_node.target]
        fused = fuse_conv_bn_eval(conv, modules[node.target])
        if conv.weight.is_contiguous(memory_format=torch.channels_last):
            fused.to(memory_format=torch.channels_last)
        parent, _, name = conv_node.target.rpartition('.')
        setattr(folded.get_submodule(parent), name, fused)
        modules[conv_node.target] = fused
        node.replace_all_uses_with(conv_node)
        folded.graph.erase_node(node)
        count += 1
    folded.graph.lint()
    folded.recompile()
    folded.delete_all_unused_submodules()
    return folded.requires_grad_(False).eval(), count


class FrozenEncoderRunner:
    """E^(0)'s forward, folded and/or compiled, kept up to date.

    Call :meth:`forward` with the frozen backbone and neck. What runs is
    rebuilt when any of their parameters or buffers is replaced, moved to a
    new storage or written in place by a PyTorch operation (which bumps the
    tensor's version: ``load_state_dict``, ``copy_``), or a module changes
    mode. A write through ``tensor.data`` bumps nothing and is not seen:
    call :meth:`GALDDCClassifier.freeze_encoder_copy` or load a state
    dict instead. A rebuild takes one
    trace and one deep copy (folding) and a new compilation at the next
    call of each input shape (compiling). An encoder with no BatchNorm, or
    one that ``torch.fx`` cannot trace, is not folded; a compilation that
    fails (a ``torch._dynamo`` error) falls back to the eager forward. Both
    are said once in the log.

    Args:
        fold_bn (bool): Fold the BatchNorms (:func:`fold_batch_norms`).
        compile_cfg (dict, optional): Keyword arguments of
            ``torch.compile``; None runs eagerly. Defaults to None.
        compile_devices (tuple[str]): Device types whose inputs take the
            compiled forward; others run eagerly (a CPU run of a GPU recipe
            does not wait for a compiler). Defaults to ``('cuda', )``.
    """

    def __init__(self,
                 fold_bn: bool,
                 compile_cfg: Optional[dict] = None,
                 compile_devices: Tuple[str, ...] = ('cuda', )):
        self.fold_bn = bool(fold_bn)
        self.compile_cfg = None if compile_cfg is None else dict(compile_cfg)
        self.compile_devices = tuple(compile_devices)
        self._key = None
        self._forward: Optional[Callable[[Tensor], Tensor]] = None
        self._fold_said = False

    @staticmethod
    def _state(encoder: nn.Module) -> list:
        """What a rebuild depends on: each tensor (weakly), its storage,
        its in-place version, its device; and each module's mode."""
        tensors = list(encoder.parameters()) + list(encoder.buffers())
        return ([(weakref.ref(t), t.data_ptr(), t._version, t.device)
                 for t in tensors] +
                [module.training for module in encoder.modules()])

    def _unchanged(self, encoder: nn.Module) -> bool:
        key = self._key
        if key is None:
            return False
        tensors = list(encoder.parameters()) + list(encoder.buffers())
        modules = list(encoder.modules())
        if len(key) != len(tensors) + len(modules):
            return False
        for (ref, ptr, version, device), t in zip(key, tensors):
            if (ref() is not t or ptr != t.data_ptr()
                    or version != t._version or device != t.device):
                return False
        return key[len(tensors):] == [m.training for m in modules]

    def _fold(self, encoder: _Encoder) -> nn.Module:
        if not any(isinstance(m, _BatchNorm) for m in encoder.modules()):
            return encoder
        try:
            folded, count = fold_batch_norms(encoder)
            message = (f'fold_frozen_bn: {count} BatchNorm layers of E^(0) '
                       'folded into their convolutions.')
        except Exception as error:  # noqa: BLE001 (exact fallback, logged)
            folded = encoder
            message = ('fold_frozen_bn: E^(0) runs unfolded, torch.fx '
                       f'cannot trace the encoder ({type(error).__name__}: '
                       f'{error}).')
        if not self._fold_said:
            self._fold_said = True
            print_log(message, logger='current')
        return folded

    def _build(self, encoder: _Encoder) -> Callable[[Tensor], Tensor]:
        module = self._fold(encoder) if self.fold_bn else encoder
        if self.compile_cfg is None:
            return module
        # A failed compilation is said once per build (rebuilds are rare).
        return CompiledCall(module, self.compile_cfg, self.compile_devices,
                            'compile_frozen_encoder: E^(0)')

    @torch.no_grad()
    def forward(self, backbone: nn.Module, neck: nn.Module,
                inputs: Tensor) -> Tensor:
        """``neck(backbone(inputs))``, the last output as ``(B, D)``.

        Args:
            backbone (nn.Module): E^(0)'s backbone, in eval mode.
            neck (nn.Module): E^(0)'s neck, in eval mode.
            inputs (Tensor): The image batch.

        Returns:
            Tensor: The latents, ``(B, D)``.
        """
        encoder = _Encoder(backbone, neck)
        if not self._unchanged(encoder):
            self._forward = self._build(encoder)
            self._key = self._state(encoder)
        return self._forward(inputs)
