"""The backbone-supported deep model of section 4.1 (Fig. 6): 15 recurrent layers on CNN feature maps.

A per-frame CNN backbone turns every frame into a feature map; dropout (paper: 0.2) on the features, then
15 recurrent layers with a shortcut every 2 layers (seven identity-shortcut blocks and a last plain layer;
the first block gets a 1x1-conv shortcut when the backbone's channels differ from ``hidden_channels``),
then global average pooling, dropout (paper: 0.5) and a linear classifier on every frame. The clip
prediction is the mean of the per-frame logits.

Backbones: ``"small"`` (built in: three stride-2 3x3 conv + BatchNorm + ReLU blocks), ``"vgg16"`` /
``"resnet18"`` (torchvision's, ImageNet weights when ``pretrained=True``; torchvision must be installed),
or any ``nn.Module`` mapping ``(N, C, H, W)`` images to ``(N, backbone_channels, h, w)`` maps.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
import torch.nn as nn

from .heads import FrameClassifier, check_clip, first_frames, per_frame
from .stack import recurrent_stack

BACKBONES = ("small", "vgg16", "resnet18")
NUM_LAYERS = 15


def small_backbone(in_channels: int, width: int) -> nn.Sequential:
    """Three stride-2 ``conv3x3 -> BN -> ReLU`` blocks with ``width, 2 width, 4 width`` channels (``H/8``)."""
    layers = []
    for c_in, c_out in zip([in_channels, width, 2 * width], [width, 2 * width, 4 * width]):
        layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
    return nn.Sequential(*layers)


def torchvision_backbone(name: str, pretrained: bool) -> Tuple[nn.Module, int]:
    """torchvision's VGG-16 conv layers or ResNet-18 without its pool and fc, with their output channels."""
    try:
        import torchvision.models as tvm
    except ImportError as err:
        raise ImportError(
            f"backbone={name!r} needs torchvision (pip install torchvision); use backbone='small' or pass an "
            f"nn.Module"
        ) from err
    if name == "vgg16":
        return tvm.vgg16(weights="DEFAULT" if pretrained else None).features, 512
    net = tvm.resnet18(weights="DEFAULT" if pretrained else None)
    return nn.Sequential(*list(net.children())[:-2]), 512


class BackboneDeepCBM(nn.Module):
    """A per-frame CNN backbone with 15 recurrent layers on its feature maps: clip -> class logits.

    Args:
        num_classes: classes to predict.
        in_channels: channels of the frames (3 for RGB; torchvision backbones need 3).
        hidden_channels: channels of every recurrent layer.
        backbone: ``"small"``, ``"vgg16"``, ``"resnet18"`` or an ``nn.Module`` (see the module docstring).
        backbone_channels: output channels of a module backbone (required for it, ignored otherwise).
        backbone_width: first-block channels of the ``"small"`` backbone.
        pretrained: ImageNet weights for torchvision backbones.
        cell, backend, td_rate: as in :class:`StandaloneDeepCBM`.
        feature_dropout, dropout: dropout on the backbone features and before the classifier (paper: 0.2,
            0.5).

    ``forward(x) -> (clip_logits (B, K), frame_logits (B, T, K))``.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        hidden_channels: int = 256,
        backbone: Union[str, nn.Module] = "small",
        backbone_channels: Optional[int] = None,
        backbone_width: int = 32,
        pretrained: bool = False,
        cell: str = "cbm",
        backend: str = "auto",
        td_rate: float = 0.0,
        feature_dropout: float = 0.2,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        if isinstance(backbone, nn.Module):
            if backbone_channels is None:
                raise ValueError("backbone_channels must be given when backbone is an nn.Module")
            self.backbone, features = backbone, backbone_channels
        elif backbone == "small":
            self.backbone, features = small_backbone(in_channels, backbone_width), 4 * backbone_width
        elif backbone in BACKBONES:
            self.backbone, features = torchvision_backbone(backbone, pretrained)
        else:
            raise ValueError(f"backbone must be an nn.Module or one of {list(BACKBONES)}, got {backbone!r}")
        if not 0.0 <= feature_dropout < 1.0:
            raise ValueError(f"feature_dropout must be in [0, 1), got {feature_dropout!r}")
        self.feature_dropout = nn.Dropout(feature_dropout)
        self.rnn = recurrent_stack(
            cell, features, hidden_channels, NUM_LAYERS, 3, shortcut_every=2, backend=backend, td_rate=td_rate
        )
        self.classifier = FrameClassifier(hidden_channels, num_classes, dropout)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``x (B, T, C, H, W)`` -> ``(clip_logits (B, K), frame_logits (B, T, K))``."""
        features = per_frame(self.backbone, check_clip(x, self.in_channels))
        frame_logits = self.classifier(self.rnn(self.feature_dropout(features))[0])
        return frame_logits.mean(dim=1), frame_logits

    def anticipate(self, x: torch.Tensor, num_frames: int = 2) -> Tuple[torch.Tensor, torch.Tensor]:
        """Action anticipation: predict from the first ``num_frames`` frames only (paper: 2)."""
        return self(first_frames(x, num_frames))
