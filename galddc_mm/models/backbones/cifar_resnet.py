# Copyright (c) galddc_mm contributors. All rights reserved.
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import build_conv_layer, build_norm_layer
from mmpretrain.models.backbones.base_backbone import BaseBackbone
from mmpretrain.models.backbones.resnet import BasicBlock
from mmpretrain.registry import MODELS
from torch.nn.modules.batchnorm import _BatchNorm


class _PadShortcut(nn.Module):
    """Parameter-free shortcut of He et al. (option A).

    Subsamples the identity with the block's stride and zero-pads the new
    channels: ``F.pad(x[:, :, ::s, ::s], channels)``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.stride = stride
        pad = out_channels - in_channels
        # Pad both sides equally, as the reference CIFAR ResNets do.
        self.pad = (pad // 2, pad - pad // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0) + self.pad)


@MODELS.register_module()
class CifarResNet(BaseBackbone):
    """The ResNet of He et al. for 32x32 images (ResNet-20/32/44/56/110).

    "Deep Residual Learning for Image Recognition" (CVPR 2016), section
    4.2, the backbone of the CIFAR-LT literature (LDAM-DRW uses ResNet-32).
    Depth :math:`6n + 2` with BasicBlocks: a 3x3 conv stem with 16
    channels, then three stages of ``n`` blocks with 16 / 32 / 64 channels
    and strides 1 / 2 / 2 (32x32 -> 32 / 16 / 8), no max-pool. The output
    is a tuple of stage feature maps, so mmpretrain's
    ``GlobalAveragePooling`` neck and ``LinearClsHead`` apply unchanged
    (64-d features for the last stage).

    Where the resolution or width changes, the shortcut is

    * ``'B'`` (default): a 1x1 strided conv + norm (projection);
    * ``'A'``: strided identity, zero-padded to the new width (no
      parameters; the original paper's CIFAR choice, and LDAM-DRW's).

    Parameter count of ResNet-32 without the classifier: 463,504 with
    option A (the well-known 0.46M is 464,154 with a 10-way FC), 466,256
    with option B.

    Args:
        depth (int): 20, 32, 44, 56 or 110.
        in_channels (int): Input image channels. Defaults to 3.
        shortcut (str): ``'B'`` or ``'A'``, see above. Defaults to ``'B'``.
        out_indices (Sequence[int]): Stages (0, 1, 2) whose outputs are
            returned. Defaults to (2, ).
        frozen_stages (int): Stages to freeze (``requires_grad=False`` and
            eval mode); -1 freezes nothing, 0 the stem, ``i`` the stem and
            stages ``0..i-1``. Defaults to -1.
        norm_eval (bool): Keep the norm layers in eval mode during
            training (frozen statistics). Defaults to False.
        conv_cfg (dict, optional): Conv layer config. Defaults to None.
        norm_cfg (dict): Norm layer config.
            Defaults to ``dict(type='BN', requires_grad=True)``.
        zero_init_residual (bool): Zero-initialise the last norm of each
            block so that blocks start as identities. Defaults to False
            (the reference CIFAR ResNets do not).
        init_cfg (dict | list[dict], optional): Initialisation config.
            Defaults to Kaiming for convs and 1 for norm weights.
    """

    ARCH_DEPTHS = (20, 32, 44, 56, 110)
    STAGE_CHANNELS = (16, 32, 64)
    STAGE_STRIDES = (1, 2, 2)

    def __init__(self,
                 depth: int,
                 in_channels: int = 3,
                 shortcut: str = 'B',
                 out_indices: Sequence[int] = (2, ),
                 frozen_stages: int = -1,
                 norm_eval: bool = False,
                 conv_cfg: Optional[dict] = None,
                 norm_cfg: Optional[dict] = None,
                 zero_init_residual: bool = False,
                 init_cfg=None):
        if init_cfg is None:
            init_cfg = [
                dict(type='Kaiming', layer=['Conv2d']),
                dict(type='Constant', val=1, layer=['_BatchNorm', 'GroupNorm'])
            ]
        super().__init__(init_cfg)
        if depth not in self.ARCH_DEPTHS:
            raise KeyError(
                f'Invalid depth {depth} for CifarResNet; choose one of '
                f'{self.ARCH_DEPTHS} (6n+2 with BasicBlocks). For ImageNet '
                "sized inputs use mmpretrain's ResNet.")
        if shortcut not in ('A', 'B'):
            raise ValueError(
                f"shortcut must be 'A' (zero-padding) or 'B' (1x1 conv), "
                f'got {shortcut!r}.')
        if isinstance(out_indices, int):
            out_indices = (out_indices, )
        num_stages = len(self.STAGE_CHANNELS)
        out_indices = tuple(
            i + num_stages if i < 0 else i for i in out_indices)
        if not out_indices or any(not 0 <= i < num_stages
                                  for i in out_indices):
            raise ValueError(
                f'out_indices must be stage indices in [0, {num_stages}), '
                f'got {out_indices}.')
        if not -1 <= frozen_stages <= num_stages:
            raise ValueError(f'frozen_stages must be in [-1, {num_stages}], '
                             f'got {frozen_stages}.')
        norm_cfg = norm_cfg or dict(type='BN', requires_grad=True)
        self.depth = depth
        self.num_blocks = (depth - 2) // 6
        self.shortcut = shortcut
        self.out_indices = out_indices
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.zero_init_residual = zero_init_residual

        stem_channels = self.STAGE_CHANNELS[0]
        self.conv1 = build_conv_layer(
            conv_cfg,
            in_channels,
            stem_channels,
            kernel_size=3,
            stride=1,
            padding=1,
            bias=False)
        self.norm1_name, norm1 = build_norm_layer(
            norm_cfg, stem_channels, postfix=1)
        self.add_module(self.norm1_name, norm1)
        self.relu = nn.ReLU(inplace=True)

        self.res_layers = []
        channels = stem_channels
        for i, (out_channels, stride) in enumerate(
                zip(self.STAGE_CHANNELS, self.STAGE_STRIDES)):
            blocks = []
            for j in range(self.num_blocks):
                s = stride if j == 0 else 1
                blocks.append(
                    BasicBlock(
                        channels,
                        out_channels,
                        stride=s,
                        downsample=self._make_shortcut(
                            channels, out_channels, s, conv_cfg, norm_cfg),
                        conv_cfg=conv_cfg,
                        norm_cfg=norm_cfg))
                channels = out_channels
            layer_name = f'layer{i + 1}'
            self.add_module(layer_name, nn.Sequential(*blocks))
            self.res_layers.append(layer_name)
        self.feat_dim = channels
        self._freeze_stages()

    def _make_shortcut(self, in_channels, out_channels, stride, conv_cfg,
                       norm_cfg) -> Optional[nn.Module]:
        if stride == 1 and in_channels == out_channels:
            return None
        if self.shortcut == 'A':
            return _PadShortcut(in_channels, out_channels, stride)
        return nn.Sequential(
            build_conv_layer(
                conv_cfg,
                in_channels,
                out_channels,
                kernel_size=1,
                stride=stride,
                bias=False),
            build_norm_layer(norm_cfg, out_channels)[1])

    @property
    def norm1(self) -> nn.Module:
        return getattr(self, self.norm1_name)

    def init_weights(self):
        """Apply ``init_cfg``, then zero the residual norms if asked."""
        super().init_weights()
        if isinstance(self.init_cfg, dict) and \
                self.init_cfg.get('type') == 'Pretrained':
            return
        if self.zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    nn.init.constant_(m.norm2.weight, 0)

    def _freeze_stages(self) -> None:
        if self.frozen_stages >= 0:
            self.norm1.eval()
            for m in (self.conv1, self.norm1):
                for param in m.parameters():
                    param.requires_grad = False
        for i in range(self.frozen_stages):
            layer = getattr(self, self.res_layers[i])
            layer.eval()
            for param in layer.parameters():
                param.requires_grad = False

    def forward(self, x: torch.Tensor) -> tuple:
        """Return the feature maps of the stages in ``out_indices``.

        Args:
            x (torch.Tensor): Images, shape ``(B, C, H, W)``.

        Returns:
            tuple[torch.Tensor]: One ``(B, C_i, H_i, W_i)`` map per
            requested stage, with ``C_i`` = 16 / 32 / 64 and strides
            1 / 2 / 4.
        """
        x = self.relu(self.norm1(self.conv1(x)))
        outs = []
        for i, layer_name in enumerate(self.res_layers):
            x = getattr(self, layer_name)(x)
            if i in self.out_indices:
                outs.append(x)
        return tuple(outs)

    def train(self, mode: bool = True):
        """Set train mode, keeping frozen stages and (``norm_eval``) norms
        in eval mode."""
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self
