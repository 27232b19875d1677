"""The authors' ``RBM`` module (their name for a CBM stack), transcribed, and the bridge from its weights.

Source: BoPang1996/Deep-RNN-Framework, ``Auxiliary Annotation/Polygon RNN/utils/rbm.py``; its forward pass
rewritten in this package's style. What differs from our :class:`deeprnn_cuda.CBM`, and what
:func:`authors_to_cbm_state_dict` bridges:

- T (``ctrl_cnn``) convolves ``cat([c_{t-1}, x_t])``, state FIRST (ours: ``[x_t, c_{t-1}]``);
- R (``data_cnn``) uses tanh, T sigmoid; the output is ``ctrl * data`` and the state carried is ``ctrl``;
- time runs along dim 1 (their ``permute`` result is discarded, so the input is effectively
  ``(B, T, C, H, W)``);
- Temporal Dropout detaches ``x_t`` on T's input with probability ``p_TD``, one coin per cell call,
  in training and evaluation alike.

:class:`AuthorsRBM` is also the "authors' per-step eager formulation" the benchmarks time, so it stays
per-step: a cat, two convolutions, two activations and a multiply per layer and step.
"""
from __future__ import annotations

import random
import re
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

_KEY = re.compile(r"cell_list\.(\d+)\.(data_cnn|ctrl_cnn)\.(weight|bias)")


def _per_layer(name: str, value: Union[int, Sequence[int]], num_layers: int) -> List[int]:
    if isinstance(value, (list, tuple)):
        if len(value) != num_layers:
            raise ValueError(f"{name} must be an int or a list of num_layers={num_layers} ints, got {list(value)}")
        return list(value)
    return [value] * num_layers


class AuthorsRBMCell(nn.Module):
    """One step of the authors' ``RBM_Cell``: ``data_cnn`` is R, ``ctrl_cnn`` is T over ``cat([c, x])``."""

    def __init__(self, input_dim: int, hidden_dim: int, kernel_size: int, bias: bool, p_TD: float) -> None:
        super().__init__()
        self.p_TD = p_TD
        padding = kernel_size // 2
        self.data_cnn = nn.Conv2d(input_dim, hidden_dim, kernel_size, padding=padding, bias=bias)
        self.ctrl_cnn = nn.Conv2d(input_dim + hidden_dim, hidden_dim, kernel_size, padding=padding, bias=bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``x (B, C_in, H, W)``, ``c (B, C, H, W)`` -> ``(ctrl * data, ctrl)``."""
        ctrl_x = x.detach() if random.random() < self.p_TD else x
        data = torch.tanh(self.data_cnn(x))
        ctrl = torch.sigmoid(self.ctrl_cnn(torch.cat((c, ctrl_x), dim=1)))
        return ctrl * data, ctrl


class AuthorsRBM(nn.Module):
    """The authors' ``RBM`` stack, with their parameter names (``cell_list.{i}.data_cnn/ctrl_cnn``).

    Args:
        input_dim: channels of the input frames.
        hidden_dim: channels per layer, an int or a list of ``num_layers`` ints.
        kernel_size: odd kernel of both convolutions, an int or a per-layer list.
        num_layers: stack depth.
        p_TD: Temporal Dropout probability per cell call.
        bias: whether the convolutions have biases (PyTorch's default ``nn.Conv2d`` init, as theirs).

    ``forward(x, hidden_state=None) -> (output, last_states)``: ``x (B, T, C, H, W)``; ``hidden_state`` None
    (zeros) or a list of per-layer states ``(B, C_i, H, W)``; ``output (B, T, C_last, H, W)`` is the last
    layer's per-step output and ``last_states`` the list of every layer's final state.
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dim: Union[int, Sequence[int]],
        kernel_size: Union[int, Sequence[int]] = 3,
        num_layers: int = 1,
        p_TD: float = 0.0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.hidden_dim = _per_layer("hidden_dim", hidden_dim, num_layers)
        self.kernel_size = _per_layer("kernel_size", kernel_size, num_layers)
        self.cell_list = nn.ModuleList(
            AuthorsRBMCell(input_dim if i == 0 else self.hidden_dim[i - 1], C, k, bias, p_TD)
            for i, (C, k) in enumerate(zip(self.hidden_dim, self.kernel_size))
        )

    def forward(
        self, x: torch.Tensor, hidden_state: Optional[Sequence[torch.Tensor]] = None
    ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """Layer by layer, step by step, as the authors do; see the class docstring for shapes."""
        B, T, _, H, W = x.shape
        if hidden_state is None:
            hidden_state = [x.new_zeros(B, C, H, W) for C in self.hidden_dim]
        layer_input = x
        last_states = []
        for cell, c in zip(self.cell_list, hidden_state):
            outputs = []
            for t in range(T):
                o, c = cell(layer_input[:, t], c)
                outputs.append(o)
            layer_input = torch.stack(outputs, dim=1)
            last_states.append(c)
        return layer_input, last_states


def _layer_count(state_dict: Mapping[str, torch.Tensor]) -> int:
    """Number of ``cell_list`` layers in an authors' state dict; ``ValueError`` on foreign keys."""
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"state_dict must be a mapping of the authors' RBM keys, got {type(state_dict).__name__}")
    foreign = sorted(k for k in state_dict if not _KEY.fullmatch(k))
    if foreign:
        raise ValueError(
            f"state_dict has unexpected keys {foreign}; expected only cell_list.{{i}}.data_cnn/ctrl_cnn.weight/bias"
        )
    if not state_dict:
        raise ValueError("state_dict is empty; expected cell_list.{i}.data_cnn/ctrl_cnn.weight/bias keys")
    return 1 + max(int(_KEY.fullmatch(k).group(1)) for k in state_dict)


def infer_authors_config(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, object]:
    """``in_channels``, ``hidden_channels``, ``kernel_size``, ``num_layers`` and ``bias`` of the
    :class:`deeprnn_cuda.CBM` equivalent to an authors' ``RBM`` state dict (read from ``data_cnn``)."""
    num_layers = _layer_count(state_dict)
    hidden, kernels = [], []
    for i in range(num_layers):
        key = f"cell_list.{i}.data_cnn.weight"
        if key not in state_dict:
            raise ValueError(f"state_dict is missing key {key!r} (it has cell_list layers 0..{num_layers - 1})")
        w = state_dict[key]
        if w.dim() != 4 or w.shape[-1] != w.shape[-2]:
            raise ValueError(f"state_dict[{key!r}] must have shape (C, C_in, k, k), got {tuple(w.shape)}")
        hidden.append(int(w.shape[0]))
        kernels.append(int(w.shape[-1]))
    return {
        "in_channels": int(state_dict["cell_list.0.data_cnn.weight"].shape[1]),
        "hidden_channels": hidden,
        "kernel_size": kernels,
        "num_layers": num_layers,
        "bias": "cell_list.0.data_cnn.bias" in state_dict,
    }


def _take(state_dict: Mapping[str, torch.Tensor], key: str, shape: Tuple[int, ...]) -> torch.Tensor:
    t = state_dict[key]
    if tuple(t.shape) != shape:
        raise ValueError(f"state_dict[{key!r}] must have shape {shape} for this CBM, got {tuple(t.shape)}")
    return t


def authors_to_cbm_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    in_channels: int,
    hidden_channels: Sequence[int],
    kernel_size: Sequence[int],
    bias: bool,
) -> Dict[str, torch.Tensor]:
    """Map an authors' ``RBM`` state dict to the ``layers.{i}.*`` keys of a CBM with these sizes.

    ``data_cnn -> weight_r/bias_r``, ``ctrl_cnn -> weight_t/bias_t`` with ``weight_t``'s input channels
    reordered from their ``[c, x]`` to our ``[x, c]``. ``ValueError`` names any layer-count, key or shape
    mismatch.
    """
    num_layers = _layer_count(state_dict)
    if num_layers != len(hidden_channels):
        raise ValueError(
            f"state_dict has {num_layers} layers (cell_list.0..{num_layers - 1}), "
            f"the CBM has num_layers={len(hidden_channels)}"
        )
    params = ("weight", "bias") if bias else ("weight",)
    expected = {
        f"cell_list.{i}.{unit}.{p}" for i in range(num_layers) for unit in ("data_cnn", "ctrl_cnn") for p in params
    }
    missing, unexpected = sorted(expected - set(state_dict)), sorted(set(state_dict) - expected)
    if missing or unexpected:
        raise ValueError(
            f"state_dict does not match a CBM with bias={bias}: missing keys {missing}, unexpected keys {unexpected}"
        )
    mapped = {}
    for i, (C, k) in enumerate(zip(hidden_channels, kernel_size)):
        C_in = in_channels if i == 0 else hidden_channels[i - 1]
        prefix = f"cell_list.{i}"
        mapped[f"layers.{i}.weight_r"] = _take(state_dict, f"{prefix}.data_cnn.weight", (C, C_in, k, k))
        w_t = _take(state_dict, f"{prefix}.ctrl_cnn.weight", (C, C + C_in, k, k))
        mapped[f"layers.{i}.weight_t"] = torch.cat([w_t[:, C:], w_t[:, :C]], dim=1)
        if bias:
            mapped[f"layers.{i}.bias_r"] = _take(state_dict, f"{prefix}.data_cnn.bias", (C,))
            mapped[f"layers.{i}.bias_t"] = _take(state_dict, f"{prefix}.ctrl_cnn.bias", (C,))
    return mapped
