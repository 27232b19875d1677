"""What every recurrent stack module shares (``CBM``, ``ConvLSTM``, ``ConvGRU``): argument checks, per-layer
sizes, the input layout, both directions of a bidirectional stack and the ResNet-style shortcuts.
"""
from __future__ import annotations

from typing import Any, Callable, List, Sequence, Tuple, Union

import torch
import torch.nn as nn

from ._checks import BACKENDS, check_choice

IntOrList = Union[int, Sequence[int]]
TD_GRANULARITIES = ("node", "sample")


def _shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def _check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _check_odd_kernel(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or value % 2 == 0:
        raise ValueError(f"{name} must be an odd positive int (1, 3, 5, ...), got {value!r}")
    return value


def _per_layer(name: str, value: IntOrList, num_layers: int, check: Callable[[str, object], int]) -> List[int]:
    """Expand an int to ``num_layers`` copies, or check a per-layer list; validate every entry."""
    if isinstance(value, (list, tuple)):
        if len(value) != num_layers:
            raise ValueError(
                f"{name} must be an int or a list of num_layers={num_layers} ints, "
                f"got {len(value)} values {list(value)}"
            )
        return [check(f"{name}[{i}]", v) for i, v in enumerate(value)]
    return [check(name, value)] * num_layers


def _check_rate(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def _check_gain(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)


def _check_state(name: str, state: object, B: int, C: int, H: int, W: int, x: torch.Tensor) -> torch.Tensor:
    """Check one initial state: a tensor ``(B, C, H, W)`` with ``x``'s dtype and device."""
    expected = f"(B={B}, C={C}, H={H}, W={W})"
    if not isinstance(state, torch.Tensor):
        raise ValueError(f"{name} must be a tensor of shape {expected}, got {type(state).__name__}")
    if tuple(state.shape) != (B, C, H, W):
        raise ValueError(f"{name} must have shape {expected}, got {_shape(state)}")
    if state.dtype != x.dtype or state.device != x.device:
        raise ValueError(
            f"{name} must have x's dtype {x.dtype} and device {x.device}, got {state.dtype} on {state.device}"
        )
    return state


class _ConvRNNStack(nn.Module):
    """What ``CBM``, ``ConvLSTM`` and ``ConvGRU`` share: per-layer sizes, the input layout, directions and
    the shortcuts.

    Bidirectional (``bidirectional=True``, like ``nn.LSTM``): every layer runs a second set of parameters over the
    reversed sequence; the two directions' outputs are concatenated on channels (layer ``i`` emits
    ``2 * hidden_channels[i]`` channels, the next layer's input), and states, initial and final, are per layer and
    direction, ordered ``[layer 0 forward, layer 0 reverse, layer 1 forward, ...]``.

    Shortcuts (``shortcut_every=k > 0``): layers ``[j*k, (j+1)*k)`` form block ``j``; the block's input is
    added to its output, through ``shortcuts[j]`` (``nn.Identity``, or a bias-free 1x1 ``nn.Conv2d`` when
    the channel counts differ), frame by frame. Trailing layers that do not fill a block get no shortcut.
    """

    def __init__(
        self,
        in_channels: int,
        hidden_channels: IntOrList,
        kernel_size: IntOrList,
        num_layers: int,
        batch_first: bool,
        bias: bool,
        shortcut_every: int,
        bidirectional: bool = False,
    ) -> None:
        super().__init__()
        self.num_layers = _check_positive_int("num_layers", num_layers)
        self.in_channels = _check_positive_int("in_channels", in_channels)
        self.hidden_channels = _per_layer("hidden_channels", hidden_channels, num_layers, _check_positive_int)
        self.kernel_size = _per_layer("kernel_size", kernel_size, num_layers, _check_odd_kernel)
        if isinstance(shortcut_every, bool) or not isinstance(shortcut_every, int) or shortcut_every < 0:
            raise ValueError(f"shortcut_every must be an int >= 0 (0: no shortcuts), got {shortcut_every!r}")
        self.shortcut_every = shortcut_every
        self.batch_first = batch_first
        self.bias = bias
        if not isinstance(bidirectional, bool):
            raise ValueError(f"bidirectional must be a bool, got {bidirectional!r}")
        self.bidirectional = bidirectional
        self.num_directions = 2 if bidirectional else 1

    def _build(self, init_gain: float, backend: str) -> None:
        """The end of every cell's constructor: the init gain and backend, the layers of each direction (the
        cell's :meth:`_make_layer`), the shortcuts and the initial parameters."""
        self.init_gain = _check_gain("init_gain", init_gain)
        self.backend = check_choice("backend", backend, BACKENDS)
        self.layers = self._make_layers()
        if self.bidirectional:
            self.layers_reverse = self._make_layers()
        self.shortcuts = self._build_shortcuts()
        self.reset_parameters()

    def _make_layers(self) -> nn.ModuleList:
        return nn.ModuleList(self._make_layer(i) for i in range(self.num_layers))

    def _make_layer(self, i: int) -> nn.Module:
        """The parameters of layer ``i`` of one direction (each cell defines it)."""
        raise NotImplementedError

    def _reset_layer(self, layer: nn.Module) -> None:
        """Initialise one layer's parameters (Xavier-normal with ``init_gain``, zero biases)."""
        layer.reset_parameters(self.init_gain)

    def _directions(self) -> List[nn.ModuleList]:
        return [self.layers, self.layers_reverse] if self.bidirectional else [self.layers]

    def reset_parameters(self) -> None:
        """Xavier-normal weights with gain ``init_gain`` (layers and 1x1 shortcuts), zero biases."""
        for layers in self._directions():
            for layer in layers:
                self._reset_layer(layer)
        self._reset_shortcuts(self.init_gain)

    def _build_shortcuts(self) -> nn.ModuleList:
        """One module per complete block: ``nn.Identity`` or a bias-free 1x1 ``nn.Conv2d``."""
        k = self.shortcut_every
        shortcuts = []
        for j in range(self.num_layers // k if k else 0):
            c_in, c_out = self.layer_in_channels(j * k), self.layer_out_channels((j + 1) * k - 1)
            shortcuts.append(nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1, bias=False))
        return nn.ModuleList(shortcuts)

    def layer_in_channels(self, i: int) -> int:
        """Input channels of layer ``i``: ``in_channels`` for the first, else the previous layer's output."""
        return self.in_channels if i == 0 else self.layer_out_channels(i - 1)

    def layer_out_channels(self, i: int) -> int:
        """Output channels of layer ``i``: its hidden channels times the number of directions."""
        return self.hidden_channels[i] * self.num_directions

    def _reset_shortcuts(self, gain: float) -> None:
        for proj in self.shortcuts:
            if isinstance(proj, nn.Conv2d):
                nn.init.xavier_normal_(proj.weight, gain=gain)

    def _sequence_input(self, x: torch.Tensor) -> torch.Tensor:
        """Validate ``x`` and return it as ``(T, B, C, H, W)``."""
        layout = "(B, T, C_in, H, W)" if self.batch_first else "(T, B, C_in, H, W)"
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor of shape {layout}, got {type(x).__name__}")
        if x.dim() != 5 or x.shape[2] != self.in_channels:
            raise ValueError(f"x must have shape {layout} with C_in={self.in_channels}, got {_shape(x)}")
        x = x.transpose(0, 1) if self.batch_first else x
        if x.shape[0] == 0:
            raise ValueError(f"x must have at least one time step, got shape {_shape(x)} as (T, B, C_in, H, W)")
        return x

    def _sequence_output(self, y: torch.Tensor) -> torch.Tensor:
        """``(T, B, ...)`` back to the layout of ``x``."""
        return y.transpose(0, 1) if self.batch_first else y

    def _check_list(self, c0: object, what: str, name: str = "c0") -> Sequence:
        n = self.num_layers * self.num_directions
        if not isinstance(c0, (list, tuple)) or len(c0) != n:
            got = f"{len(c0)} entries" if isinstance(c0, (list, tuple)) else type(c0).__name__
            count = f"num_layers={self.num_layers}" if self.num_directions == 1 else f"2 * num_layers={n}"
            raise ValueError(f"{name} must be None or a list of {count} {what}, got {got}")
        return c0

    def _state_channels(self, j: int) -> int:
        """Hidden channels of state entry ``j`` (layer ``j // num_directions``)."""
        return self.hidden_channels[j // self.num_directions]

    def _run_stack(self, x: torch.Tensor, run_layer: Callable[[int, int, torch.Tensor], Tuple[torch.Tensor, Any, Any]]):
        """Run every layer and direction over ``x (T, B, C_in, H, W)``.

        ``run_layer(i, d, inp)`` runs direction ``d`` of layer ``i`` over ``inp`` (reversed in time for d = 1)
        and returns ``(out (T, B, C_i, H, W), final state, per-step states (T, ...))``. Returns the last layer's
        output (both directions concatenated on channels, shortcuts applied) and the per layer-direction lists
        of final states and of per-step states, all in ``x``'s time order.
        """
        out = block_input = x
        finals: List[Any] = []
        sequences: List[Any] = []
        for i in range(self.num_layers):
            outs = []
            for d in range(self.num_directions):
                o, final, seq = run_layer(i, d, out if d == 0 else out.flip(0))
                if d == 1:
                    o, seq = o.flip(0), seq.flip(0)
                outs.append(o)
                finals.append(final)
                sequences.append(seq)
            out = torch.cat(outs, dim=2) if len(outs) > 1 else outs[0]
            out, block_input = self._shortcut(i, out, block_input)
        return out, finals, sequences

    def _shortcut(self, i: int, out: torch.Tensor, block_input: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """After layer ``i``: add the block's input if ``i`` ends a block; return ``(out, next block input)``."""
        k = self.shortcut_every
        if k == 0 or (i + 1) % k != 0:
            return out, block_input
        T, B = block_input.shape[:2]
        out = out + self.shortcuts[(i + 1) // k - 1](block_input.flatten(0, 1)).unflatten(0, (T, B))
        return out, out

    def _stack_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.hidden_channels}, kernel_size={self.kernel_size}, "
            f"num_layers={self.num_layers}, batch_first={self.batch_first}, bias={self.bias}, "
            f"shortcut_every={self.shortcut_every}" + (", bidirectional=True" if self.bidirectional else "")
        )
