"""The convolutional GRU family: the op :func:`convgru_layer`, its reference :func:`convgru_layer_ref` (defined in
:mod:`deeprnn_cuda.reference`) and the ``ConvGRU`` stack module, shaped like ``nn.GRU``.

Gates z, r, n (docs/design.md section 7): ``z|r = σ(conv(x_t, W_x[:2C]) + conv(h_{t-1}, W_h[:2C]) + b)``,
``n = tanh(conv(x_t, W_x[2C:]) + conv(r * h_{t-1}, W_h[2C:]) + b_n)``, ``h_t = (1 - z) * n + z * h_{t-1}``.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from ._checks import check_convgru_args
from ._stack import IntOrList, _check_state, _ConvRNNStack
from .backends import autocast_args, empty_result, resolve_cell_backend
from .reference import convgru_layer_ref  # noqa: F401  (public here too, beside its op)


def convgru_layer(
    x: torch.Tensor,
    weight_x: torch.Tensor,
    bias_x: Optional[torch.Tensor] = None,
    weight_h: Optional[torch.Tensor] = None,
    bias_h: Optional[torch.Tensor] = None,
    h0: Optional[torch.Tensor] = None,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """Run one ConvGRU layer over a whole sequence.

    Args:
        x: input sequence ``(T, B, C_in, H, W)``.
        weight_x: ``(3C, C_in, k_x, k_x)``, the input's share of the gates z, r, n (in that order on the output
            channels); ``bias_x``: ``(3C,)`` or None.
        weight_h: ``(3C, C, k_h, k_h)``, the hidden state's share (required); ``bias_h``: ``(3C,)`` or None.
        h0: initial state ``(B, C, H, W)``; None means zeros.
        backend: ``"auto"`` (the compiled kernels when built, else the reference with one warning),
            ``"reference"``, ``"native"`` or ``"triton"``.

    Returns:
        ``h``: the state after every step, ``(T, B, C, H, W)``; ``h[-1]`` is the final state. Stride 1, zero
        "same" padding. Autocast and ``torch.no_grad()`` as in :func:`deeprnn_cuda.convlstm_layer`.
    """
    if weight_h is None:
        raise ValueError("weight_h is required: a (3C, C, k_h, k_h) tensor (gates z, r, n)")
    x, weight_x, bias_x, weight_h, bias_h, h0 = autocast_args(x, weight_x, bias_x, weight_h, bias_h, h0)
    s = check_convgru_args(x, weight_x, bias_x, weight_h, bias_h, h0)
    impl = resolve_cell_backend("convgru", backend, x)
    if s.T * s.B * s.H * s.W == 0:  # empty output, zero gradients (as cbm_layer)
        return empty_result(x, [(s.T, s.B, s.C, s.H, s.W)], (x, weight_x, bias_x, weight_h, bias_h, h0))[0]
    h0 = x.new_zeros(s.B, s.C, s.H, s.W) if h0 is None else h0
    return impl(x, weight_x, bias_x, weight_h, bias_h, h0)


class ConvGRULayerParams(nn.Module):
    """The parameters of one ConvGRU layer: ``weight_x (3C, C_in, k, k)``, ``bias_x (3C,)``,
    ``weight_h (3C, C, k, k)``, ``bias_h (3C,)``, gates z, r, n. A plain holder: the stack validates."""

    def __init__(self, in_channels: int, hidden_channels: int, kernel_size: int, bias: bool) -> None:
        super().__init__()
        k, C = kernel_size, hidden_channels
        self.in_channels, self.hidden_channels, self.kernel_size = in_channels, C, k
        self.weight_x = nn.Parameter(torch.empty(3 * C, in_channels, k, k))
        self.bias_x = nn.Parameter(torch.empty(3 * C)) if bias else None
        self.weight_h = nn.Parameter(torch.empty(3 * C, C, k, k))
        self.bias_h = nn.Parameter(torch.empty(3 * C)) if bias else None

    def reset_parameters(self, gain: float = 1.0) -> None:
        """Xavier-normal weights with ``gain``, zero biases (as the other cells)."""
        nn.init.xavier_normal_(self.weight_x, gain=gain)
        nn.init.xavier_normal_(self.weight_h, gain=gain)
        for b in (self.bias_x, self.bias_h):
            if b is not None:
                nn.init.zeros_(b)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.hidden_channels}, kernel_size={self.kernel_size}, "
                f"bias={self.bias_x is not None}")


class ConvGRU(_ConvRNNStack):
    """A stack of convolutional GRUs shaped like ``nn.GRU``; every layer is one :func:`convgru_layer` call.

    Constructor as :class:`~deeprnn_cuda.ConvLSTM`. Layer ``i`` is ``layers[i]`` (``layers_reverse[i]`` for the
    reverse direction when ``bidirectional``), a :class:`ConvGRULayerParams`.

    ``forward(x, h0=None, return_states=False) -> (output, h_n)`` or ``(output, h_n, states)``: ``h_n`` the list
    of per-layer (and direction) final states ``(B, C_i, H, W)``, ``h0`` None (zeros) or such a list of initial
    states, ``states`` every layer's per-step states ``(T, B, C_i, H, W)`` in ``x``'s layout.
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
        bidirectional: bool = False,
        backend: str = "auto",
    ) -> None:
        super().__init__(
            in_channels, hidden_channels, kernel_size, num_layers, batch_first, bias, shortcut_every, bidirectional
        )
        self._build(init_gain, backend)

    def _make_layer(self, i: int) -> "ConvGRULayerParams":
        return ConvGRULayerParams(self.layer_in_channels(i), self.hidden_channels[i], self.kernel_size[i], self.bias)

    def forward(
        self, x: torch.Tensor, h0: Optional[Sequence[torch.Tensor]] = None, return_states: bool = False
    ) -> Union[Tuple[torch.Tensor, List[torch.Tensor]], Tuple[torch.Tensor, List[torch.Tensor], List[torch.Tensor]]]:
        """Run the stack over ``x``; see the class docstring for shapes."""
        x = self._sequence_input(x)
        T, B, _, H, W = x.shape
        D = self.num_directions
        init: Sequence[Optional[torch.Tensor]] = [None] * (self.num_layers * D)
        if h0 is not None:
            init = [
                _check_state(f"h0[{j}]", h, B, self._state_channels(j), H, W, x)
                for j, h in enumerate(self._check_list(h0, "states (B, C_i, H, W)", "h0"))
            ]
        directions = self._directions()

        def run_layer(i: int, d: int, inp: torch.Tensor):
            p = directions[d][i]
            hs = convgru_layer(inp, p.weight_x, p.bias_x, p.weight_h, p.bias_h, init[i * D + d], backend=self.backend)
            return hs, hs[-1], hs

        out, h_n, states = self._run_stack(x, run_layer)
        output = self._sequence_output(out)
        if return_states:
            return output, h_n, [self._sequence_output(s) for s in states]
        return output, h_n

    def extra_repr(self) -> str:
        return f"{self._stack_repr()}, backend={self.backend!r}"
