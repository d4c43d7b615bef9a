# Copyright (c) galddc_mm contributors. All rights reserved.
"""The frozen encoder E^(0) with its BatchNorms folded into its convolutions.

E^(0) only ever runs in eval mode, where a BatchNorm is a fixed per-channel
affine map ``y = a * x + b``. Folded into the convolution that feeds it
(``W' = a W``, ``b' = a c + b`` for a convolution ``W x + c``), it costs
nothing: one read and one write of every activation less per BatchNorm.
The hybrid finetune stage runs E^(0) on every image batch next to E, the
on-the-fly diffusion stage and the latent-cache extraction run nothing
else, so the saving is a share of their GPU time.

The folded copy is derived data, never state: it lives outside the module
tree (not in ``state_dict``, ``parameters()`` or DDP) and is rebuilt from
E^(0) whenever one of E^(0)'s tensors has been replaced or written in
place (``freeze_encoder_copy``, a checkpoint load, ``.to()``).
"""
import copy
from typing import Callable, Optional, Tuple

import torch
import torch.fx as fx
import torch.nn as nn
from mmengine.logging import print_log
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils.fusion import fuse_conv_bn_eval


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


def _foldable(node: fx.Node, modules: dict) -> bool:
    """Whether ``node`` is an eval BatchNorm fed only by a 2-D convolution."""
    if node.op != 'call_module' or not isinstance(modules[node.target],
                                                  _BatchNorm):
        return False
    bn = modules[node.target]
    src = node.args[0] if len(node.args) == 1 and not node.kwargs else None
    return (isinstance(src, fx.Node) and src.op == 'call_module'
            and type(modules[src.target]) is nn.Conv2d
            and len(src.users) == 1 and not bn.training
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
    count = 0
    for node in list(folded.graph.nodes):
        if not _foldable(node, modules):
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


class FoldedEncoderCache:
    """E^(0)'s forward, through a BatchNorm-folded copy kept up to date.

    Call :meth:`forward` with the frozen backbone and neck. The copy is
    rebuilt when any of their parameters or buffers has a new storage or a
    new in-place version, so it can never be stale; building it takes one
    trace and one deep copy. An encoder with no BatchNorm, or one that
    ``torch.fx`` cannot trace, runs as it is (the latter said once in the
    log).
    """

    def __init__(self):
        self._key = None
        self._forward: Optional[Callable[[Tensor], Tensor]] = None
        self._reported = False

    @staticmethod
    def _state_key(encoder: nn.Module) -> tuple:
        tensors = list(encoder.parameters()) + list(encoder.buffers())
        return tuple((t.data_ptr(), t._version, t.device) for t in tensors)

    def _build(self, encoder: _Encoder) -> Callable[[Tensor], Tensor]:
        if not any(isinstance(m, _BatchNorm) for m in encoder.modules()):
            return encoder
        try:
            folded, count = fold_batch_norms(encoder)
        except Exception as error:  # noqa: BLE001 (exact fallback, logged)
            if not self._reported:
                self._reported = True
                print_log(
                    'fold_frozen_bn: E^(0) runs unfolded, torch.fx cannot '
                    f'trace the encoder ({type(error).__name__}: {error}).',
                    logger='current')
            return encoder
        if not self._reported:
            self._reported = True
            print_log(
                f'fold_frozen_bn: {count} BatchNorm layers of E^(0) folded '
                'into their convolutions.',
                logger='current')
        return folded

    @torch.no_grad()
    def forward(self, backbone: nn.Module, neck: nn.Module,
                inputs: Tensor) -> Tensor:
        """``neck(backbone(inputs))`` through the folded copy, ``(B, D)``.

        Args:
            backbone (nn.Module): E^(0)'s backbone, in eval mode.
            neck (nn.Module): E^(0)'s neck, in eval mode.
            inputs (Tensor): The image batch.

        Returns:
            Tensor: The latents, ``(B, D)``.
        """
        encoder = _Encoder(backbone, neck)
        key = self._state_key(encoder)
        if key != self._key:
            self._forward = self._build(encoder)
            self._key = key
        return self._forward(inputs)
