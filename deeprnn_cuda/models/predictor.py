"""MCnet-style video future prediction (Villegas et al., ICLR 2017) with a deep recurrent motion encoder.

Section 4.3 of the paper replaces the 1-layer ConvLSTM of MCnet's motion encoder with a 15-layer deep CBM;
the rest follows MCnet (``w = width``, 64 in MCnet):

* motion encoder: on frame differences ``x_t - x_{t-1}``, per frame ``conv5x5(w) -> pool -> conv5x5(2w)
  -> pool -> conv7x7(4w)`` (ReLUs), then the recurrent stack (``4w`` channels, shortcut every 2 layers) at
  ``H/4``;
* content encoder: on the last frame, VGG-like ``[conv3x3(w)] x2 -> pool -> [conv3x3(2w)] x2 -> pool ->
  [conv3x3(4w)] x3``;
* combination: two 3x3 convs on ``[motion, content]``; residuals: at each of the three scales a 3x3 conv
  of ``[motion features, content features]`` is added to the decoder (MCnet's multi-scale residuals);
* decoder: upsample x2 + 3x3 conv twice, a last 3x3 conv to the frame channels and a sigmoid (frames in
  ``[0, 1]``).

Prediction is closed loop, as in MCnet: each predicted frame becomes the next content input and its
difference to the previous frame the next motion input, the recurrent state carried over.
:meth:`DeepVideoPredictor.predict_next` is the teacher-forced variant for training. Both return logits
on request: train with a cross entropy on them (see :mod:`deeprnn_cuda.training.video_task`; MCnet adds a
gradient-difference and an adversarial loss, not implemented here).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .heads import per_frame
from .stack import recurrent_stack


def _convs(channels: List[int], kernel: int) -> nn.Sequential:
    """``conv(kernel) -> ReLU`` layers through ``channels`` (``[c_in, c_1, ..., c_n]``)."""
    layers: List[nn.Module] = []
    for c_in, c_out in zip(channels[:-1], channels[1:]):
        layers += [nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2), nn.ReLU()]
    return nn.Sequential(*layers)


class DeepVideoPredictor(nn.Module):
    """Observe frames ``(B, T_obs, C, H, W)``, predict ``num_future`` more (paper: observe 10, predict 20).

    Args:
        in_channels: frame channels.
        width: ``w`` of the module docstring (MCnet: 64).
        num_layers: depth of the recurrent motion stack (paper: 15; MCnet: a 1-layer ConvLSTM).
        cell, backend, td_rate: as in :func:`recurrent_stack` (paper: CBM, final TD rate 0.5).

    ``H`` and ``W`` must be divisible by 4. ``forward(observed, num_future=20) -> (B, num_future, C, H, W)``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        width: int = 64,
        num_layers: int = 15,
        cell: str = "cbm",
        backend: str = "auto",
        td_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"width must be a positive int, got {width!r}")
        w, self.in_channels = width, in_channels
        self.motion_convs = nn.ModuleList(
            [_convs([in_channels, w], 5), _convs([w, 2 * w], 5), _convs([2 * w, 4 * w], 7)]
        )
        self.motion_rnn = recurrent_stack(
            cell, 4 * w, 4 * w, num_layers, 3, shortcut_every=2, backend=backend, td_rate=td_rate
        )
        self.content_convs = nn.ModuleList(
            [_convs([in_channels, w, w], 3), _convs([w, 2 * w, 2 * w], 3), _convs([2 * w, 4 * w, 4 * w, 4 * w], 3)]
        )
        self.combine = _convs([8 * w, 4 * w, 4 * w], 3)
        self.residuals = nn.ModuleList(_convs([2 * c, c], 3) for c in (w, 2 * w, 4 * w))
        self.decoder = nn.ModuleList([_convs([4 * w, 2 * w], 3), _convs([2 * w, w], 3)])
        self.to_frame = nn.Conv2d(w, in_channels, 3, padding=1)

    def _content(self, frame: torch.Tensor) -> List[torch.Tensor]:
        """Content features of a frame ``(B, C, H, W)`` at ``H, H/2, H/4``."""
        feats = []
        h = frame
        for i, conv in enumerate(self.content_convs):
            h = conv(F.max_pool2d(h, 2) if i else h)
            feats.append(h)
        return feats

    def _motion_features(self, diffs: torch.Tensor) -> List[torch.Tensor]:
        """Per-frame motion conv features of ``diffs (T, B, C, H, W)`` at ``H, H/2, H/4``, each ``(T, B, ...)``."""
        feats = []
        h = diffs
        for i, conv in enumerate(self.motion_convs):
            h = per_frame(conv, per_frame(lambda f: F.max_pool2d(f, 2), h) if i else h)
            feats.append(h)
        return feats

    def _motion(self, diffs: torch.Tensor, state: Optional[Sequence]) -> Tuple[List[torch.Tensor], List]:
        """Motion features of the last of ``diffs (T, B, C, H, W)`` at three scales, and the new state."""
        feats = self._motion_features(diffs)
        out, state = self.motion_rnn(feats[-1], state)
        return [feats[0][-1], feats[1][-1], out[-1]], state

    def _decode(self, motion: List[torch.Tensor], content: List[torch.Tensor]) -> torch.Tensor:
        """The next frame's logits from motion and content features (MCnet's combination, residuals, decoder)."""
        res = [r(torch.cat([m, c], dim=1)) for r, m, c in zip(self.residuals, motion, content)]
        h = self.combine(torch.cat([motion[-1], content[-1]], dim=1)) + res[2]
        for conv, skip in zip(self.decoder, (res[1], res[0])):
            h = conv(F.interpolate(h, scale_factor=2.0, mode="nearest")) + skip
        return self.to_frame(h)

    def predict_next(self, video: torch.Tensor, logits: bool = False) -> torch.Tensor:
        """Teacher-forced one-step predictions: frame ``t + 1`` from the true frames ``0..t``, for ``t >= 1``.

        ``video (B, T >= 3, C, H, W) -> (B, T - 2, C, H, W)``, predicting ``video[:, 2:]``. All steps run as
        one batch over time (the recurrent stack once over the whole sequence), so this is the cheap,
        dense training signal; :meth:`forward` is the closed-loop prediction that the metrics measure.
        """
        self._check_video(video, "video", min_frames=3)
        frames = video.transpose(0, 1)
        diffs = frames[1:-1] - frames[:-2]  # d_1 .. d_{T-2}; d_t pairs with the content of frame t
        feats = self._motion_features(diffs)
        feats[-1], _ = self.motion_rnn(feats[-1])
        motion = [m.flatten(0, 1) for m in feats]
        content = self._content(frames[1:-1].flatten(0, 1))
        out = self._decode(motion, content).unflatten(0, diffs.shape[:2]).transpose(0, 1)
        return out if logits else torch.sigmoid(out)

    def _check_video(self, video: torch.Tensor, name: str, min_frames: int) -> None:
        expected = f"(B, T>={min_frames}, C={self.in_channels}, H, W)"
        if not isinstance(video, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of shape {expected}, got {type(video).__name__}")
        if video.dim() != 5 or video.shape[1] < min_frames or video.shape[2] != self.in_channels:
            raise ValueError(f"{name} must have shape {expected}, got {tuple(video.shape)}")
        if video.shape[3] % 4 or video.shape[4] % 4:
            raise ValueError(f"{name} must have H and W divisible by 4, got {tuple(video.shape[3:])}")

    def forward(self, observed: torch.Tensor, num_future: int = 20, logits: bool = False) -> torch.Tensor:
        """Predict ``num_future`` frames after ``observed (B, T_obs >= 2, C, H, W)``, closed loop.

        Returns frames in ``[0, 1]``, or with ``logits=True`` their logits (for a cross-entropy loss; the
        frames fed back are still the sigmoids).
        """
        self._check_video(observed, "observed", min_frames=2)
        if isinstance(num_future, bool) or not isinstance(num_future, int) or num_future < 1:
            raise ValueError(f"num_future must be a positive int, got {num_future!r}")
        frames = observed.transpose(0, 1)
        motion, state = self._motion(frames[1:] - frames[:-1], None)
        last = frames[-1]
        predictions, frame_logits = [], []
        for t in range(num_future):
            if t:
                motion, state = self._motion((predictions[-1] - last).unsqueeze(0), state)
                last = predictions[-1]
            frame_logits.append(self._decode(motion, self._content(last)))
            predictions.append(torch.sigmoid(frame_logits[-1]))
        return torch.stack(frame_logits if logits else predictions, dim=1)
