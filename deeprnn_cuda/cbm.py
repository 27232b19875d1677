"""The Context Bridge Module family: the op :func:`cbm_layer`, its reference :func:`cbm_layer_ref` (the per-step
loop of docs/design.md section 1, the ground truth of every backend; defined in :mod:`deeprnn_cuda.reference`) and the
modules ``CBMCell`` and ``CBM``.
"""
from __future__ import annotations

from typing import List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from ._checks import ACT_R_CODES, ACT_T_CODES, BACKENDS, MERGE_CODES, check_cbm_args, check_choice
from ._stack import (
    IntOrList,
    _check_odd_kernel,
    _check_positive_int,
    _check_rate,
    _check_state,
    _ConvRNNStack,
    _shape,
)
from .authors import authors_to_cbm_state_dict, infer_authors_config
from .backends import autocast_args, empty_result, resolve_backend
from .reference import ACTIVATIONS, cbm_layer_ref  # noqa: F401  (public here too, beside its op)

TD_GRANULARITIES = ("node", "sample")


def cbm_layer(
    x: torch.Tensor,
    weight_r: torch.Tensor,
    bias_r: Optional[torch.Tensor],
    weight_t: torch.Tensor,
    bias_t: Optional[torch.Tensor],
    c0: Optional[torch.Tensor] = None,
    *,
    td_mask: Optional[torch.Tensor] = None,
    act_r: str = "relu",
    act_t: str = "sigmoid",
    merge: str = "mul",
    backend: str = "auto",
    all_states: bool = True,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Run one Context Bridge Module layer over a whole sequence.

    Args:
        x: input sequence ``(T, B, C_in, H, W)``.
        weight_r: representation unit R, ``(C, C_in, k_r, k_r)``; ``bias_r``: ``(C,)`` or None.
        weight_t: temporal unit T, ``(C, C_in + C, k_t, k_t)``, convolving ``cat([x_t, c_{t-1}], dim=1)``;
            ``bias_t``: ``(C,)`` or None.
        c0: initial state ``(B, C, H, W)``; None means zeros.
        td_mask: Temporal Dropout, bool ``(T,)`` (one coin per step) or ``(T, B)`` (one per sample).
            Where True, the gradient from T back into ``x_t`` is cut; the forward pass is unchanged.
        act_r: ``"relu"``, ``"tanh"`` or ``"identity"``. act_t: ``"sigmoid"`` or ``"relu"``.
        merge: ``"mul"`` (``o = r * c``) or ``"add"`` (``o = r + c``).
        backend: ``"auto"``, ``"reference"``, ``"native"`` or ``"triton"``. ``"auto"`` takes the compiled
            backend for the device and dtype; where several run (CUDA: native and Triton), the fastest for the
            shape, measured on the first call with it (see :mod:`deeprnn_cuda.autotune`).
        all_states: False returns only the final state, ``c[-1:]`` of what True returns, ``(1, B, C, H, W)``;
            without autograd the compiled ``native`` backend then never stores the others (less memory, and on
            the CPU fewer page faults).

    Returns:
        ``(o, c)``: outputs and the state after every step, both ``(T, B, C, H, W)``; ``c[-1]`` is the
        final state. Odd square kernels, stride 1, zero "same" padding. Under ``torch.autocast`` the layer
        runs in the autocast dtype, like the convolutions it is made of. An empty sequence, batch or image
        (T, B, H or W zero) gives empty outputs and zero gradients; zero channels (C_in or C) raise ``ValueError``.
    """
    x, weight_r, bias_r, weight_t, bias_t, c0 = autocast_args(x, weight_r, bias_r, weight_t, bias_t, c0)
    s = check_cbm_args(x, weight_r, bias_r, weight_t, bias_t, c0, td_mask, act_r, act_t, merge)
    impl = resolve_backend(backend, x)
    if s.T * s.B * s.H * s.W == 0:
        o, c = empty_result(x, [(s.T, s.B, s.C, s.H, s.W)] * 2, (x, weight_r, bias_r, weight_t, bias_t, c0))
        return o, c if all_states else c[-1:]
    if c0 is None:
        c0 = x.new_zeros(s.B, s.C, s.H, s.W)
    return impl(x, weight_r, bias_r, weight_t, bias_t, c0, td_mask=td_mask, act_r=act_r, act_t=act_t, merge=merge,
                all_states=all_states)


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
        bidirectional: also run every layer backwards in time with its own parameters ``layers_reverse[i]``;
            outputs of both directions are concatenated on channels, states are per layer and direction (see
            :class:`_ConvRNNStack`).
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
        bidirectional: bool = False,
    ) -> None:
        super().__init__(
            in_channels, hidden_channels, kernel_size, num_layers, batch_first, bias, shortcut_every, bidirectional
        )
        self.td_rate = td_rate
        self.td_granularity = check_choice("td_granularity", td_granularity, TD_GRANULARITIES)
        self.act_r = check_choice("act_r", act_r, ACT_R_CODES)
        self.act_t = check_choice("act_t", act_t, ACT_T_CODES)
        self.merge = check_choice("merge", merge, MERGE_CODES)
        self._build(init_gain, backend)

    def _make_layer(self, i: int) -> CBMLayerParams:
        return CBMLayerParams(self.layer_in_channels(i), self.hidden_channels[i], self.kernel_size[i], self.bias)

    @property
    def td_rate(self) -> float:
        """Temporal Dropout rate in ``[0, 1]`` (training mode only)."""
        return self._td_rate

    @td_rate.setter
    def td_rate(self, value: float) -> None:
        self._td_rate = _check_rate("td_rate", value)

    def _td_masks(self, T: int, B: int, device: torch.device) -> List[Optional[torch.Tensor]]:
        """One Temporal Dropout mask per layer and direction: bool ``(T,)`` or ``(T, B)``; None outside
        training."""
        n = self.num_layers * self.num_directions
        if not self.training or self.td_rate == 0.0:
            return [None] * n
        shape = (T,) if self.td_granularity == "node" else (T, B)
        return [torch.rand(shape, device=device) < self.td_rate for _ in range(n)]

    def forward(
        self, x: torch.Tensor, c0: Optional[Sequence[torch.Tensor]] = None, return_states: bool = False
    ) -> Union[
        Tuple[torch.Tensor, List[torch.Tensor]], Tuple[torch.Tensor, List[torch.Tensor], List[torch.Tensor]]
    ]:
        """Run the stack over ``x``; see the class docstring for shapes."""
        x = self._sequence_input(x)
        T, B, _, H, W = x.shape
        D = self.num_directions
        if c0 is None:
            init: Sequence[Optional[torch.Tensor]] = [None] * (self.num_layers * D)
        else:
            init = [
                _check_state(f"c0[{j}]", c, B, self._state_channels(j), H, W, x)
                for j, c in enumerate(self._check_list(c0, "states (B, C_i, H, W)"))
            ]
        masks = self._td_masks(T, B, x.device)
        directions = self._directions()

        def run_layer(i: int, d: int, inp: torch.Tensor):
            layer = directions[d][i]
            out, c = cbm_layer(
                inp, layer.weight_r, layer.bias_r, layer.weight_t, layer.bias_t, init[i * D + d],
                td_mask=masks[i * D + d], act_r=self.act_r, act_t=self.act_t, merge=self.merge, backend=self.backend,
                all_states=return_states,  # else only the final state is kept
            )
            return out, c[-1], c

        out, c_n, states = self._run_stack(x, run_layer)
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
        for name, want in (("act_r", "tanh"), ("act_t", "sigmoid"), ("merge", "mul"), ("shortcut_every", 0),
                           ("bidirectional", False)):
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
