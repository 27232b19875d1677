"""A recurrent next-frame predictor on patches, the layout of OpenSTL's ConvLSTM / PredRNN baselines.

Every ``H x W`` frame is cut into ``patch x patch`` patches stacked as channels (``pixel_unshuffle``, lossless),
a recurrent stack (:func:`recurrent_stack`: CBM or ConvLSTM, chosen by ``cell``) runs at ``H/patch``, and a
1x1 convolution with ``pixel_shuffle`` turns its top output into the logits of the next frame (or, with
``output="linear"``, the frame itself, as OpenSTL's models output it). Observed frames are read in one call of
the stack; each predicted frame is fed back as the next input (closed loop), or, in teacher-forced training,
every true frame is read in one call.

:meth:`PatchRecurrentPredictor.from_openstl_state_dict` loads OpenSTL's ``ConvLSTM_Model``: its
``reshape_patch`` orders a patch's channels (row in patch, column in patch, channel), ``pixel_unshuffle``
(channel, row, column), so the first layer's input columns and the output rows are permuted accordingly.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..convlstm import ConvLSTM, infer_openstl_config, strip_lightning_prefix
from .stack import recurrent_stack

OUTPUTS = ("sigmoid", "linear")


def openstl_patch_order(channels: int, patch: int) -> torch.Tensor:
    """For each ``pixel_unshuffle`` channel ``(c, i, j)`` (``c * p * p + i * p + j``), the index of the same pixel
    in OpenSTL's ``reshape_patch`` layout (``i * p * C + j * C + c``)."""
    c, i, j = torch.meshgrid(torch.arange(channels), torch.arange(patch), torch.arange(patch), indexing="ij")
    return (i * patch * channels + j * channels + c).flatten()


class PatchRecurrentPredictor(nn.Module):
    """Predict the frames after an observed clip ``(B, T_obs, C, H, W)``, values in ``[0, 1]``.

    Args:
        in_channels: frame channels.
        hidden: channels of every recurrent layer.
        num_layers: depth of the recurrent stack.
        cell: ``"cbm"`` or ``"convlstm"`` (:data:`~deeprnn_cuda.models.stack.CELLS`).
        patch: patch side; ``H`` and ``W`` must be divisible by it (OpenSTL: 4 on 64x64 Moving MNIST).
        kernel_size, shortcut_every, backend, td_rate: as in :func:`recurrent_stack`.
        init_intensity: the pixel value the untrained model predicts (the output bias starts at it, or its
            logit); Moving-MNIST frames are mostly black (mean about 0.1), so starting at 0.5 gray wastes early steps.
        output: ``"sigmoid"``: the 1x1 convolution gives logits, frames are their sigmoid; ``"linear"``: it gives
            the frames themselves (OpenSTL's ConvLSTM, trained with the MSE).
    """

    def __init__(
        self,
        in_channels: int = 1,
        hidden: int = 16,
        num_layers: int = 15,
        cell: str = "cbm",
        patch: int = 4,
        kernel_size: int = 3,
        shortcut_every: int = 2,
        backend: str = "auto",
        td_rate: float = 0.0,
        init_intensity: float = 0.1,
        output: str = "sigmoid",
    ) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("hidden", hidden), ("patch", patch)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not 0.0 < init_intensity < 1.0:
            raise ValueError(f"init_intensity must be in (0, 1), got {init_intensity!r}")
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {list(OUTPUTS)}, got {output!r}")
        self.in_channels, self.patch, self.output = in_channels, patch, output
        channels = in_channels * patch * patch
        self.rnn = recurrent_stack(cell, channels, hidden, num_layers, kernel_size, shortcut_every, backend, td_rate)
        self.to_frame = nn.Conv2d(hidden, channels, 1)
        bias = math.log(init_intensity / (1.0 - init_intensity)) if output == "sigmoid" else init_intensity
        nn.init.constant_(self.to_frame.bias, bias)

    @classmethod
    def from_openstl_state_dict(cls, state_dict, patch: int = 4, backend: str = "auto") -> "PatchRecurrentPredictor":
        """OpenSTL's ``ConvLSTM_Model`` (``state_dict`` with or without the ``model.`` prefix, ``layer_norm=0``,
        trained with ``patch_size=patch``) as a linear-output predictor on this library's ConvLSTM: the same
        frames from the same observed frames, closed loop. Raises ``ValueError`` for a ``layer_norm=1``
        checkpoint, layers of different widths or sizes that do not fit."""
        state_dict = strip_lightning_prefix(state_dict)
        config = infer_openstl_config(state_dict)
        hidden = config["hidden_channels"]
        if len(set(hidden)) != 1 or len(set(config["kernel_size"])) != 1:
            raise ValueError(f"OpenSTL layers of different widths {hidden} or kernels {config['kernel_size']} do not load")
        if "conv_last.weight" not in state_dict:
            raise ValueError("state_dict has no 'conv_last.weight': not an OpenSTL ConvLSTM_Model")
        channels, rem = divmod(config["in_channels"], patch * patch)
        if rem:
            raise ValueError(f"OpenSTL frame channels {config['in_channels']} are not a multiple of patch * patch = "
                             f"{patch * patch}; pass its patch_size as patch")
        model = cls(channels, hidden[0], config["num_layers"], "convlstm", patch, config["kernel_size"][0], 0, backend,
                    output="linear")
        order = openstl_patch_order(channels, patch)
        rnn = ConvLSTM(config["in_channels"], hidden, config["kernel_size"], config["num_layers"])
        rnn.load_openstl_state_dict(state_dict)
        with torch.no_grad():
            first = rnn.layers[0].weight
            rnn.layers[0].weight.copy_(torch.cat([first[:, :config["in_channels"]][:, order],
                                                  first[:, config["in_channels"]:]], 1))
            model.rnn.load_state_dict(rnn.state_dict())
            model.to_frame.weight.copy_(state_dict["conv_last.weight"][order])
            model.to_frame.bias.zero_()
        return model

    def _frames(self, out: torch.Tensor) -> torch.Tensor:
        """Frames from the 1x1 convolution's output."""
        return torch.sigmoid(out) if self.output == "sigmoid" else out

    def _check(self, video: torch.Tensor, name: str, min_frames: int) -> None:
        expected = f"(B, T>={min_frames}, C={self.in_channels}, H, W) with H, W divisible by patch={self.patch}"
        if not isinstance(video, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of shape {expected}, got {type(video).__name__}")
        if (video.dim() != 5 or video.shape[1] < min_frames or video.shape[2] != self.in_channels
                or video.shape[3] % self.patch or video.shape[4] % self.patch):
            raise ValueError(f"{name} must have shape {expected}, got {tuple(video.shape)}")

    def _run(self, frames: torch.Tensor, state: Optional[list]) -> tuple:
        """Next-frame logits ``(T, B, C, H, W)`` of time-major ``frames`` and the stack's new state."""
        x = F.pixel_unshuffle(frames.flatten(0, 1), self.patch).unflatten(0, frames.shape[:2])
        out, state = self.rnn(x, state)
        logits = F.pixel_shuffle(self.to_frame(out.flatten(0, 1)), self.patch)
        return logits.unflatten(0, frames.shape[:2]), state

    def rollout(self, video: torch.Tensor, observe: int, teacher_forced: bool = False) -> torch.Tensor:
        """Logits of frames ``1 .. T-1`` of ``video (B, T, C, H, W)``, shape ``(B, T - 1, C, H, W)``.

        Frames ``0 .. observe-1`` are inputs; after them each input is the previous prediction (closed
        loop, what evaluation measures), or with ``teacher_forced`` the true frame, which runs the whole
        sequence through the stack in one call: the cheap, dense training signal.
        """
        self._check(video, "video", 2)
        T = video.shape[1]
        if isinstance(observe, bool) or not isinstance(observe, int) or not 1 <= observe < T:
            raise ValueError(f"observe must be an int in [1, T={T}), got {observe!r}")
        frames = video.transpose(0, 1)
        if teacher_forced:
            return self._run(frames[:-1], None)[0].transpose(0, 1)
        logits, state = self._run(frames[:observe], None)
        outputs = [logits]
        for _ in range(observe, T - 1):
            logits, state = self._run(self._frames(outputs[-1][-1:]), state)
            outputs.append(logits)
        return torch.cat(outputs).transpose(0, 1)

    def forward(self, observed: torch.Tensor, num_future: int = 10, logits: bool = False) -> torch.Tensor:
        """The ``num_future`` frames after ``observed (B, T_obs, C, H, W)``, closed loop: ``(B, num_future, C, H, W)``.

        Frames in ``[0, 1]``, or their logits with ``logits=True`` (the same with ``output="linear"``).
        """
        self._check(observed, "observed", 1)
        if isinstance(num_future, bool) or not isinstance(num_future, int) or num_future < 1:
            raise ValueError(f"num_future must be a positive int, got {num_future!r}")
        T_obs = observed.shape[1]
        padded = torch.cat([observed, observed.new_zeros(observed.shape[0], num_future, *observed.shape[2:])], dim=1)
        out = self.rollout(padded, T_obs)[:, T_obs - 1:]
        return out if logits else self._frames(out)
