"""The standalone 17-layer deep CBM action model of section 4.1, shaped like ResNet-18.

Layout (``w = width``, 64 in the paper):

* layer 1, the stem: ResNet-18's ``conv1`` is a stride-2 7x7 conv. CBM convolutions are stride 1, so the
  stride is taken first by a lossless, parameter-free space-to-depth rearrangement of every frame
  (``pixel_unshuffle(2)``: ``C -> 4C`` channels at half resolution); then one 7x7 recurrent layer with
  ``w`` channels and ResNet's 3x3 stride-2 max-pool, frame by frame. Spatial size is then ``H/4``.
* layers 2-17: four stages of four 3x3 recurrent layers (``w, 2w, 4w, 8w`` channels), each stage two
  ResNet blocks: a shortcut every 2 layers, identity or a 1x1 conv where the channels change (the first
  block of stages 2-4).
* downsampling between stages (our choice, as CBM has no stride): a per-frame 3x3 stride-2 conv keeping
  the channel count, followed by BatchNorm. These three convs are not recurrent and not counted in the 17.
* head: global average pool, dropout, linear, on every frame; the clip prediction is the mean of the
  per-frame logits. Recognition feeds the whole clip, anticipation (:meth:`anticipate`) only its first
  frames (the paper: 2); the model is causal, so those logits use no later frame.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .heads import FrameClassifier, check_clip, first_frames, per_frame
from .stack import recurrent_stack

STAGES = 4
LAYERS_PER_STAGE = 4


class StandaloneDeepCBM(nn.Module):
    """17 recurrent layers like ResNet-18, no backbone: clip ``(B, T, C, H, W)`` -> class logits.

    Args:
        num_classes: classes to predict.
        in_channels: channels of the frames (3 for RGB).
        width: channels of the first stage; stages have ``width * (1, 2, 4, 8)`` (paper: 64).
        cell: ``"cbm"`` or ``"convlstm"`` (the same architecture with ConvLSTM layers).
        backend: CBM kernels, see :func:`deeprnn_cuda.cbm_layer`.
        td_rate: Temporal Dropout rate of every CBM layer (training mode only).
        dropout: dropout before the classifier.

    ``forward(x) -> (clip_logits (B, K), frame_logits (B, T, K))``. Any ``H, W`` divisible by 32 keeps
    every stage's map at least 1x1; ``H`` and ``W`` must be even.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        width: int = 64,
        cell: str = "cbm",
        backend: str = "auto",
        td_rate: float = 0.0,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"width must be a positive int, got {width!r}")
        self.in_channels = in_channels
        self.stem = recurrent_stack(cell, 4 * in_channels, width, 1, 7, backend=backend, td_rate=td_rate)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        channels = [width * 2 ** s for s in range(STAGES)]
        self.downsample = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, c, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c))
            for c in channels[:-1]
        )
        self.stages = nn.ModuleList(
            recurrent_stack(
                cell, c_in, c, LAYERS_PER_STAGE, 3, shortcut_every=2, backend=backend, td_rate=td_rate
            )
            for c_in, c in zip([width] + channels[:-1], channels)
        )
        self.classifier = FrameClassifier(channels[-1], num_classes, dropout)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``x (B, T, C, H, W)`` -> ``(clip_logits (B, K), frame_logits (B, T, K))``."""
        x = check_clip(x, self.in_channels)
        if x.shape[-2] % 2 or x.shape[-1] % 2:
            raise ValueError(f"x must have even H and W (the stem halves them), got {tuple(x.shape[-2:])}")
        h = per_frame(lambda f: F.pixel_unshuffle(f, 2), x)
        h = per_frame(self.pool, self.stem(h)[0])
        for s, stage in enumerate(self.stages):
            if s > 0:
                h = per_frame(self.downsample[s - 1], h)
            h = stage(h)[0]
        frame_logits = self.classifier(h)
        return frame_logits.mean(dim=1), frame_logits

    def anticipate(self, x: torch.Tensor, num_frames: int = 2) -> Tuple[torch.Tensor, torch.Tensor]:
        """Action anticipation: predict from the first ``num_frames`` frames only (paper: 2)."""
        return self(first_frames(x, num_frames))
