"""``nn.Module`` front ends shaped like ``nn.LSTMCell`` / ``nn.LSTM``.

``CBMCell`` runs one CBM step, ``CBM`` a deep CBM stack over a sequence (layer by layer, each layer one
:func:`deeprnn_cuda.cbm_layer` call, so every backend gets the batched-over-time trick of DESIGN.md
section 1), with Temporal Dropout and ResNet-style shortcuts. ``ConvLSTM`` is the paper's baseline with
the same constructor and forward shape. Parameter names never depend on the backend.
"""
from __future__ import annotations

from typing import Callable, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._checks import ACT_R_CODES, ACT_T_CODES, BACKENDS, MERGE_CODES, check_choice
from .authors import authors_to_cbm_state_dict, infer_authors_config
from .functional import cbm_layer

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


class CBMLayerParams(nn.Module):
    """The parameters of one CBM layer: ``weight_r (C, C_in, k, k)``, ``bias_r (C,)``,
    ``weight_t (C, C_in + C, k, k)`` (convolving ``cat([x_t, c_{t-1}])``), ``bias_t (C,)``.

    A plain holder: arguments are validated by the modules that build it.
    """

    def __init__(self, in_channels: int, hidden_channels: int, kernel_size: int, bias: bool) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.hidden_channels = hidden_channels
        self.kernel_size = kernel_size
        k, C = kernel_size, hidden_channels
        self.weight_r = nn.Parameter(torch.empty(C, in_channels, k, k))
        self.bias_r = nn.Parameter(torch.empty(C)) if bias else None
        self.weight_t = nn.Parameter(torch.empty(C, in_channels + C, k, k))
        self.bias_t = nn.Parameter(torch.empty(C)) if bias else None

    def reset_parameters(self, gain: float = 1.0) -> None:
        """The authors' init: Xavier-normal weights with ``gain``, zero biases."""
        nn.init.xavier_normal_(self.weight_r, gain=gain)
        nn.init.xavier_normal_(self.weight_t, gain=gain)
        for b in (self.bias_r, self.bias_t):
            if b is not None:
                nn.init.zeros_(b)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.hidden_channels}, kernel_size={self.kernel_size}, "
            f"bias={self.bias_r is not None}"
        )


class CBMCell(CBMLayerParams):
    """One Context Bridge Module step, like ``nn.LSTMCell``.

    ``forward(x_t, c=None) -> (o_t, c_t)`` with ``x_t (B, C_in, H, W)`` and states ``(B, C, H, W)``;
    ``c=None`` means zeros. It runs :func:`deeprnn_cuda.cbm_layer` on a length-1 sequence, so every backend
    applies. Parameters as in :class:`CBMLayerParams`, initialized Xavier-normal with zero biases.
    """

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int,
        kernel_size: int = 3,
        bias: bool = True,
        act_r: str = "relu",
        act_t: str = "sigmoid",
        merge: str = "mul",
        backend: str = "auto",
    ) -> None:
        super().__init__(
            _check_positive_int("in_channels", in_channels),
            _check_positive_int("hidden_channels", hidden_channels),
            _check_odd_kernel("kernel_size", kernel_size),
            bias,
        )
        self.act_r = check_choice("act_r", act_r, ACT_R_CODES)
        self.act_t = check_choice("act_t", act_t, ACT_T_CODES)
        self.merge = check_choice("merge", merge, MERGE_CODES)
        self.backend = check_choice("backend", backend, BACKENDS)
        self.reset_parameters()

    def forward(self, x: torch.Tensor, c: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """One step: ``x (B, C_in, H, W)``, ``c (B, C, H, W)`` or None; returns ``(o_t, c_t)``."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor of shape (B, C_in, H, W), got {type(x).__name__}")
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must have shape (B, C_in={self.in_channels}, H, W), got {_shape(x)}")
        if c is not None:
            B, _, H, W = x.shape
            _check_state("c", c, B, self.hidden_channels, H, W, x)
        o, c_seq = cbm_layer(
            x.unsqueeze(0), self.weight_r, self.bias_r, self.weight_t, self.bias_t, c,
            act_r=self.act_r, act_t=self.act_t, merge=self.merge, backend=self.backend,
        )
        return o[0], c_seq[0]

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, act_r={self.act_r!r}, act_t={self.act_t!r}, merge={self.merge!r}, "
            f"backend={self.backend!r}"
        )


class _ConvRNNStack(nn.Module):
    """What ``CBM`` and ``ConvLSTM`` share: per-layer sizes, the input layout and the shortcuts.

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

    def _build_shortcuts(self) -> nn.ModuleList:
        """One module per complete block: ``nn.Identity`` or a bias-free 1x1 ``nn.Conv2d``."""
        k = self.shortcut_every
        shortcuts = []
        for j in range(self.num_layers // k if k else 0):
            c_in, c_out = self.layer_in_channels(j * k), self.hidden_channels[(j + 1) * k - 1]
            shortcuts.append(nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1, bias=False))
        return nn.ModuleList(shortcuts)

    def layer_in_channels(self, i: int) -> int:
        """Input channels of layer ``i``: ``in_channels`` for the first, else the previous layer's hidden."""
        return self.in_channels if i == 0 else self.hidden_channels[i - 1]

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

    def _check_list(self, c0: object, what: str) -> Sequence:
        if not isinstance(c0, (list, tuple)) or len(c0) != self.num_layers:
            got = f"{len(c0)} entries" if isinstance(c0, (list, tuple)) else type(c0).__name__
            raise ValueError(f"c0 must be None or a list of num_layers={self.num_layers} {what}, got {got}")
        return c0

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
            f"shortcut_every={self.shortcut_every}"
        )


class CBM(_ConvRNNStack):
    """A deep stack of Context Bridge Modules over a sequence, shaped like ``nn.LSTM``.

    Args:
        in_channels: channels of the input frames.
        hidden_channels: channels of every layer, an int or a list of ``num_layers`` ints.
        kernel_size: odd kernel of R and T, an int or a per-layer list.
        num_layers: stack depth; layer ``i``'s output is layer ``i+1``'s input.
        batch_first: ``x`` and the outputs are ``(B, T, C, H, W)`` instead of ``(T, B, C, H, W)``.
        bias: whether R and T have biases.
        td_rate: Temporal Dropout rate in ``[0, 1]``, applied in training mode only. A settable attribute
            (a TD schedule sets ``module.td_rate`` each epoch).
        td_granularity: ``"node"`` (one coin per layer and step, the paper's choice) or ``"sample"``
            (one per layer, step and sample).
        act_r, act_t, merge: as in :func:`deeprnn_cuda.cbm_layer`.
        shortcut_every: ``k > 0`` adds a ResNet-style shortcut around every block of ``k`` layers (see
            :class:`_ConvRNNStack`); 0 disables them.
        backend: ``"auto"``, ``"reference"``, ``"native"`` or ``"triton"``; a plain attribute, changeable.
        init_gain: gain of the Xavier-normal init (biases start at zero).

    ``forward(x, c0=None, return_states=False) -> (output, c_n)`` or ``(output, c_n, states)``:
    ``output`` is the last layer's output in ``x``'s layout; ``c_n`` the list of final states
    ``(B, C_i, H, W)``; ``c0`` None (zeros) or a list of per-layer initial states ``(B, C_i, H, W)``;
    ``states`` the list of every layer's per-step states ``(T, B, C_i, H, W)`` (in ``x``'s layout).
    """

    def __init__(
        self,
        in_channels: int,
        hidden_channels: IntOrList,
        kernel_size: IntOrList = 3,
        num_layers: int = 1,
        batch_first: bool = False,
        bias: bool = True,
        td_rate: float = 0.0,
        td_granularity: str = "node",
        act_r: str = "relu",
        act_t: str = "sigmoid",
        merge: str = "mul",
        shortcut_every: int = 0,
        backend: str = "auto",
        init_gain: float = 1.0,
    ) -> None:
        super().__init__(in_channels, hidden_channels, kernel_size, num_layers, batch_first, bias, shortcut_every)
        self.td_rate = td_rate
        self.td_granularity = check_choice("td_granularity", td_granularity, TD_GRANULARITIES)
        self.act_r = check_choice("act_r", act_r, ACT_R_CODES)
        self.act_t = check_choice("act_t", act_t, ACT_T_CODES)
        self.merge = check_choice("merge", merge, MERGE_CODES)
        self.backend = check_choice("backend", backend, BACKENDS)
        self.init_gain = _check_gain("init_gain", init_gain)
        self.layers = nn.ModuleList(
            CBMLayerParams(self.layer_in_channels(i), self.hidden_channels[i], self.kernel_size[i], bias)
            for i in range(num_layers)
        )
        self.shortcuts = self._build_shortcuts()
        self.reset_parameters()

    @property
    def td_rate(self) -> float:
        """Temporal Dropout rate in ``[0, 1]`` (training mode only)."""
        return self._td_rate

    @td_rate.setter
    def td_rate(self, value: float) -> None:
        self._td_rate = _check_rate("td_rate", value)

    def reset_parameters(self) -> None:
        """Xavier-normal weights with gain ``init_gain`` (layers and 1x1 shortcuts), zero biases."""
        for layer in self.layers:
            layer.reset_parameters(self.init_gain)
        self._reset_shortcuts(self.init_gain)

    def _td_masks(self, T: int, B: int, device: torch.device) -> List[Optional[torch.Tensor]]:
        """One Temporal Dropout mask per layer: bool ``(T,)`` or ``(T, B)``; None outside training."""
        if not self.training or self.td_rate == 0.0:
            return [None] * self.num_layers
        shape = (T,) if self.td_granularity == "node" else (T, B)
        return [torch.rand(shape, device=device) < self.td_rate for _ in range(self.num_layers)]

    def forward(
        self, x: torch.Tensor, c0: Optional[Sequence[torch.Tensor]] = None, return_states: bool = False
    ) -> Union[
        Tuple[torch.Tensor, List[torch.Tensor]], Tuple[torch.Tensor, List[torch.Tensor], List[torch.Tensor]]
    ]:
        """Run the stack over ``x``; see the class docstring for shapes."""
        x = self._sequence_input(x)
        T, B, _, H, W = x.shape
        if c0 is None:
            init: Sequence[Optional[torch.Tensor]] = [None] * self.num_layers
        else:
            init = [
                _check_state(f"c0[{i}]", c, B, self.hidden_channels[i], H, W, x)
                for i, c in enumerate(self._check_list(c0, "states (B, C_i, H, W)"))
            ]
        masks = self._td_masks(T, B, x.device)
        out = block_input = x
        c_n, states = [], []
        for i, layer in enumerate(self.layers):
            out, c = cbm_layer(
                out, layer.weight_r, layer.bias_r, layer.weight_t, layer.bias_t, init[i],
                td_mask=masks[i], act_r=self.act_r, act_t=self.act_t, merge=self.merge, backend=self.backend,
            )
            out, block_input = self._shortcut(i, out, block_input)
            c_n.append(c[-1])
            states.append(c)
        output = self._sequence_output(out)
        if return_states:
            return output, c_n, [self._sequence_output(s) for s in states]
        return output, c_n

    def load_authors_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Load a state dict of the authors' ``RBM`` (BoPang1996/Deep-RNN-Framework) into this CBM.

        ``cell_list.{i}.data_cnn`` becomes ``layers.{i}.weight_r/bias_r`` and ``cell_list.{i}.ctrl_cnn``
        becomes ``layers.{i}.weight_t/bias_t``, with T's input-channel halves swapped from their
        ``[c, x]`` to our ``[x, c]``. The CBM must compute what their RBM computes (``act_r="tanh"``,
        ``act_t="sigmoid"``, ``merge="mul"``, ``shortcut_every=0``) and have the same layer count and
        shapes; otherwise, or on missing or unexpected keys, ``ValueError`` names the mismatch.
        """
        for name, want in (("act_r", "tanh"), ("act_t", "sigmoid"), ("merge", "mul"), ("shortcut_every", 0)):
            if getattr(self, name) != want:
                raise ValueError(
                    f"load_authors_state_dict needs a CBM built like the authors' RBM, with {name}={want!r}; "
                    f"this CBM has {name}={getattr(self, name)!r}"
                )
        self.load_state_dict(
            authors_to_cbm_state_dict(state_dict, self.in_channels, self.hidden_channels, self.kernel_size, self.bias)
        )

    @classmethod
    def from_authors_state_dict(cls, state_dict: Mapping[str, torch.Tensor], **kwargs) -> "CBM":
        """Build a CBM from an authors' ``RBM`` state dict and load it.

        ``in_channels``, ``hidden_channels``, ``kernel_size``, ``num_layers`` and ``bias`` are inferred from
        the dict, ``act_r="tanh"`` is set; ``kwargs`` (e.g. ``batch_first``, ``backend``, ``td_rate``) are
        passed to the constructor. The parameters take the dict's dtype and device.
        """
        options = {**infer_authors_config(state_dict), "act_r": "tanh", **kwargs}
        model = cls(**options)
        ref = state_dict["cell_list.0.data_cnn.weight"]
        model.to(device=ref.device, dtype=ref.dtype)
        model.load_authors_state_dict(state_dict)
        return model

    def extra_repr(self) -> str:
        return (
            f"{self._stack_repr()}, td_rate={self.td_rate}, td_granularity={self.td_granularity!r}, "
            f"act_r={self.act_r!r}, act_t={self.act_t!r}, merge={self.merge!r}, backend={self.backend!r}"
        )


def _convlstm_layer(
    x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], h: torch.Tensor, c: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One ConvLSTM layer over ``x (T, B, C_in, H, W)``: returns ``(h for every step, h_T, c_T)``.

    ``weight (4C, C_in + C, k, k)`` convolves ``cat([x_t, h_{t-1}])`` into gates i, f, o, g. The input
    half (and the bias) is convolved for all steps at once; the loop convolves only ``h``.
    """
    T, B, C_in, H, W = x.shape
    pad = weight.shape[-1] // 2
    gates_x = F.conv2d(x.reshape(T * B, C_in, H, W), weight[:, :C_in], bias, padding=pad).view(T, B, -1, H, W)
    weight_h = weight[:, C_in:]
    hs = []
    for t in range(T):
        i, f, o, g = (gates_x[t] + F.conv2d(h, weight_h, padding=pad)).chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        hs.append(h)
    return torch.stack(hs), h, c


class ConvLSTM(_ConvRNNStack):
    """A stack of convolutional LSTMs, the paper's baseline; pure PyTorch.

    Same constructor and forward shape as :class:`CBM` (without the CBM-specific options). Layer ``i`` is an
    ``nn.Conv2d`` ``layers[i]`` with weight ``(4 C_i, C_in_i + C_i, k_i, k_i)`` computing the gates
    i, f, o, g from ``cat([x_t, h_{t-1}])``; ``c_t = f * c_{t-1} + i * g``, ``h_t = o * tanh(c_t)``.

    ``forward(x, c0=None, return_states=False) -> (output, c_n)`` or ``(output, c_n, states)``: ``c_n`` is
    the list of per-layer final ``(h, c)`` tuples, ``c0`` None (zeros) or a list of per-layer ``(h, c)``
    tuples, ``states`` the list of every layer's hidden outputs ``(T, B, C_i, H, W)`` in ``x``'s layout.
    """

    def __init__(
        self,
        in_channels: int,
        hidden_channels: IntOrList,
        kernel_size: IntOrList = 3,
        num_layers: int = 1,
        batch_first: bool = False,
        bias: bool = True,
        shortcut_every: int = 0,
        init_gain: float = 1.0,
    ) -> None:
        super().__init__(in_channels, hidden_channels, kernel_size, num_layers, batch_first, bias, shortcut_every)
        self.init_gain = _check_gain("init_gain", init_gain)
        self.layers = nn.ModuleList(
            nn.Conv2d(
                self.layer_in_channels(i) + C, 4 * C, self.kernel_size[i], padding=self.kernel_size[i] // 2, bias=bias
            )
            for i, C in enumerate(self.hidden_channels)
        )
        self.shortcuts = self._build_shortcuts()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-normal weights with gain ``init_gain`` (layers and 1x1 shortcuts), zero biases."""
        for conv in self.layers:
            nn.init.xavier_normal_(conv.weight, gain=self.init_gain)
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)
        self._reset_shortcuts(self.init_gain)

    def forward(
        self,
        x: torch.Tensor,
        c0: Optional[Sequence[Tuple[torch.Tensor, torch.Tensor]]] = None,
        return_states: bool = False,
    ) -> Union[
        Tuple[torch.Tensor, List[Tuple[torch.Tensor, torch.Tensor]]],
        Tuple[torch.Tensor, List[Tuple[torch.Tensor, torch.Tensor]], List[torch.Tensor]],
    ]:
        """Run the stack over ``x``; see the class docstring for shapes."""
        x = self._sequence_input(x)
        T, B, _, H, W = x.shape
        if c0 is None:
            init = [(x.new_zeros(B, C, H, W), x.new_zeros(B, C, H, W)) for C in self.hidden_channels]
        else:
            init = []
            for i, hc in enumerate(self._check_list(c0, "(h, c) tuples")):
                if not isinstance(hc, (list, tuple)) or len(hc) != 2:
                    raise ValueError(f"c0[{i}] must be an (h, c) tuple, got {type(hc).__name__}")
                C = self.hidden_channels[i]
                init.append((
                    _check_state(f"c0[{i}][0] (h)", hc[0], B, C, H, W, x),
                    _check_state(f"c0[{i}][1] (c)", hc[1], B, C, H, W, x),
                ))
        out = block_input = x
        c_n, states = [], []
        for i, conv in enumerate(self.layers):
            hs, h, c = _convlstm_layer(out, conv.weight, conv.bias, *init[i])
            out, block_input = self._shortcut(i, hs, block_input)
            c_n.append((h, c))
            states.append(hs)
        output = self._sequence_output(out)
        if return_states:
            return output, c_n, [self._sequence_output(s) for s in states]
        return output, c_n

    def extra_repr(self) -> str:
        return self._stack_repr()
