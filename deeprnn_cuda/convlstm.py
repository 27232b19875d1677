"""The convolutional LSTM family: the op :func:`convlstm_layer`, its reference :func:`convlstm_layer_ref` (defined in
:mod:`deeprnn_cuda.reference`) and the ``ConvLSTM`` stack module (the paper's baseline, shaped like ``nn.LSTM``).

Gate layout of ndrplz/ConvLSTM_pytorch, so its checkpoints load (:meth:`ConvLSTM.from_ndrplz_state_dict`): one
convolution over ``cat([x_t, h_{t-1}])`` with ``4C`` output channels, split into i, f, o, g;
``c_t = σ(f) * c_{t-1} + σ(i) * tanh(g)``, ``h_t = σ(o) * tanh(c_t)`` (docs/design.md section 7).
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from ._checks import check_convlstm_args
from ._stack import IntOrList, _check_state, _ConvRNNStack
from .backends import autocast_args, empty_result, resolve_cell_backend
from .reference import convlstm_layer_ref  # noqa: F401  (public here too, beside its op)

LSTMState = Tuple[torch.Tensor, torch.Tensor]


def convlstm_layer(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    h0: Optional[torch.Tensor] = None,
    c0: Optional[torch.Tensor] = None,
    *,
    backend: str = "auto",
    all_states: bool = True,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Run one ConvLSTM layer over a whole sequence.

    Args:
        x: input sequence ``(T, B, C_in, H, W)``.
        weight: ``(4C, C_in + C, k, k)``, convolving ``cat([x_t, h_{t-1}], dim=1)`` into the gates i, f, o, g
            (in that order on the output channels); ``bias``: ``(4C,)`` or None.
        h0, c0: initial hidden and cell states ``(B, C, H, W)``; None means zeros.
        backend: ``"auto"`` (the compiled kernels when built, else the reference with one warning),
            ``"reference"``, ``"native"`` or ``"triton"``.
        all_states: False returns only the final cell state, ``c[-1:]`` of what True returns,
            ``(1, B, C, H, W)``; without autograd the compiled ``native`` backend then never stores the others.

    Returns:
        ``(h, c)``: the hidden and cell states after every step, both ``(T, B, C, H, W)``; ``h[-1]``, ``c[-1]``
        are the final states. Odd square kernel, stride 1, zero "same" padding. Under ``torch.autocast`` the
        layer runs in the autocast dtype, like the convolutions it is made of; under ``torch.no_grad()`` the
        compiled kernels keep no gates for backward.
    """
    x, weight, bias, h0, c0 = autocast_args(x, weight, bias, h0, c0)
    s = check_convlstm_args(x, weight, bias, h0, c0)
    impl = resolve_cell_backend("convlstm", backend, x)
    if s.T * s.B * s.H * s.W == 0:  # empty outputs, zero gradients (as cbm_layer)
        h, c = empty_result(x, [(s.T, s.B, s.C, s.H, s.W)] * 2, (x, weight, bias, h0, c0))
        return h, c if all_states else c[-1:]
    h0 = x.new_zeros(s.B, s.C, s.H, s.W) if h0 is None else h0
    c0 = x.new_zeros(s.B, s.C, s.H, s.W) if c0 is None else c0
    return impl(x, weight, bias, h0, c0, all_states=all_states)


def ndrplz_to_state_dict(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """ndrplz/ConvLSTM_pytorch's ``cell_list.{i}.conv.weight/bias`` as our ``layers.{i}.weight/bias``: same
    gate order and input layout, so the tensors carry over unchanged. Unknown keys raise ``ValueError``."""
    out = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        if len(parts) != 4 or parts[0] != "cell_list" or parts[2] != "conv" or parts[3] not in ("weight", "bias"):
            raise ValueError(f"not a ConvLSTM_pytorch key (cell_list.{{i}}.conv.weight/bias): {key!r}")
        out[f"layers.{parts[1]}.{parts[3]}"] = value
    return out


def infer_ndrplz_config(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """``in_channels``, ``hidden_channels``, ``kernel_size``, ``num_layers`` and ``bias`` of a
    ConvLSTM_pytorch state dict."""
    num_layers = 0
    while f"cell_list.{num_layers}.conv.weight" in state_dict:
        num_layers += 1
    if num_layers == 0:
        raise ValueError("state_dict has no 'cell_list.0.conv.weight': not a ConvLSTM_pytorch ConvLSTM")
    weights = [state_dict[f"cell_list.{i}.conv.weight"] for i in range(num_layers)]
    hidden = [w.shape[0] // 4 for w in weights]
    kernels = []
    for i, w in enumerate(weights):
        if w.shape[-1] != w.shape[-2] or w.shape[-1] % 2 == 0:
            raise ValueError(f"cell_list.{i}.conv.weight has a {tuple(w.shape[-2:])} kernel; only square odd ones load")
        kernels.append(int(w.shape[-1]))
    return {
        "in_channels": int(weights[0].shape[1] - hidden[0]),
        "hidden_channels": hidden,
        "kernel_size": kernels,
        "num_layers": num_layers,
        "bias": "cell_list.0.conv.bias" in state_dict,
    }


def strip_lightning_prefix(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """``state_dict`` without the ``model.`` prefix of OpenSTL's Lightning checkpoints (when every key has it)."""
    if state_dict and all(k.startswith("model.") for k in state_dict):
        return {k[len("model."):]: v for k, v in state_dict.items()}
    return dict(state_dict)


def _openstl_layers(state_dict: Mapping[str, torch.Tensor]) -> int:
    """How many ``cell_list.{i}`` cells an OpenSTL ConvLSTM state dict has; refuses ``layer_norm=1`` ones."""
    if "cell_list.0.conv_x.1.weight" in state_dict:
        raise ValueError("OpenSTL ConvLSTM checkpoint trained with layer_norm=1: its LayerNorm after each "
                         "convolution cannot be folded into the fused cell's weights; only layer_norm=0 loads")
    num_layers = 0
    while f"cell_list.{num_layers}.conv_x.0.weight" in state_dict:
        num_layers += 1
    if num_layers == 0:
        raise ValueError("state_dict has no 'cell_list.0.conv_x.0.weight': not an OpenSTL ConvLSTM")
    return num_layers


def openstl_to_state_dict(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """OpenSTL's ``cell_list.{i}.conv_x.0.weight`` and ``conv_h.0.weight`` (bias-free) as our ``layers.{i}.weight``
    (``cat([conv_x, conv_h], dim=1)``, gate rows reordered i, f, g, o -> i, f, o, g) and a zero ``layers.{i}.bias``.
    Their unused ``conv_o`` and per-cell ``conv_last`` are dropped; any other key raises ``ValueError``."""
    state_dict = strip_lightning_prefix(state_dict)
    num_layers = _openstl_layers(state_dict)
    known = {f"cell_list.{i}.{name}.0.weight" for i in range(num_layers) for name in ("conv_x", "conv_h", "conv_o")}
    known |= {f"cell_list.{i}.conv_last.weight" for i in range(num_layers)}
    out = {}
    for i in range(num_layers):
        weight = torch.cat([state_dict[f"cell_list.{i}.conv_x.0.weight"], state_dict[f"cell_list.{i}.conv_h.0.weight"]], 1)
        i_, f_, g_, o_ = weight.chunk(4)
        out[f"layers.{i}.weight"] = torch.cat([i_, f_, o_, g_])
        out[f"layers.{i}.bias"] = weight.new_zeros(weight.shape[0])
    unknown = sorted(k for k in state_dict if k not in known and k.startswith("cell_list."))
    if unknown:
        raise ValueError(f"not an OpenSTL ConvLSTM key: {unknown[0]!r}")
    return out


def infer_openstl_config(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """``in_channels``, ``hidden_channels``, ``kernel_size`` and ``num_layers`` of an OpenSTL ConvLSTM state dict
    (with or without the ``model.`` prefix)."""
    state_dict = strip_lightning_prefix(state_dict)
    num_layers = _openstl_layers(state_dict)
    weights = [state_dict[f"cell_list.{i}.conv_x.0.weight"] for i in range(num_layers)]
    kernels = []
    for i, w in enumerate(weights):
        if w.shape[-1] != w.shape[-2] or w.shape[-1] % 2 == 0:
            raise ValueError(f"cell_list.{i}.conv_x.0.weight has a {tuple(w.shape[-2:])} kernel; only square odd ones load")
        kernels.append(int(w.shape[-1]))
    return {"in_channels": int(weights[0].shape[1]), "hidden_channels": [w.shape[0] // 4 for w in weights],
            "kernel_size": kernels, "num_layers": num_layers}


class ConvLSTM(_ConvRNNStack):
    """A stack of convolutional LSTMs, the paper's baseline, shaped like ``nn.LSTM``; every layer is one
    :func:`convlstm_layer` call (fused kernels with ``backend="native"``/``"auto"``).

    Same constructor and forward shape as :class:`~deeprnn_cuda.CBM` (without the CBM-specific options). Layer
    ``i`` is an ``nn.Conv2d`` ``layers[i]`` (``layers_reverse[i]`` for the reverse direction when
    ``bidirectional``) with weight ``(4 C_i, C_in_i + C_i, k_i, k_i)`` computing the gates i, f, o, g from
    ``cat([x_t, h_{t-1}])``; ``c_t = f * c_{t-1} + i * g``, ``h_t = o * tanh(c_t)``.

    ``forward(x, c0=None, return_states=False) -> (output, c_n)`` or ``(output, c_n, states)``: ``c_n`` is
    the list of per-layer (and direction) final ``(h, c)`` tuples, ``c0`` None (zeros) or such a list of
    initial ``(h, c)`` tuples, ``states`` the list of every layer's hidden outputs ``(T, B, C_i, H, W)`` in
    ``x``'s layout.
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

    def _make_layer(self, i: int) -> nn.Conv2d:
        C, k = self.hidden_channels[i], self.kernel_size[i]
        return nn.Conv2d(self.layer_in_channels(i) + C, 4 * C, k, padding=k // 2, bias=self.bias)

    def _reset_layer(self, conv: nn.Module) -> None:
        nn.init.xavier_normal_(conv.weight, gain=self.init_gain)
        if conv.bias is not None:
            nn.init.zeros_(conv.bias)

    def forward(
        self, x: torch.Tensor, c0: Optional[Sequence[LSTMState]] = None, return_states: bool = False
    ) -> Union[Tuple[torch.Tensor, List[LSTMState]], Tuple[torch.Tensor, List[LSTMState], List[torch.Tensor]]]:
        """Run the stack over ``x``; see the class docstring for shapes."""
        x = self._sequence_input(x)
        T, B, _, H, W = x.shape
        D = self.num_directions
        init: List[Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]] = [(None, None)] * (self.num_layers * D)
        if c0 is not None:
            init = []
            for j, hc in enumerate(self._check_list(c0, "(h, c) tuples")):
                if not isinstance(hc, (list, tuple)) or len(hc) != 2:
                    raise ValueError(f"c0[{j}] must be an (h, c) tuple, got {type(hc).__name__}")
                C = self._state_channels(j)
                init.append((
                    _check_state(f"c0[{j}][0] (h)", hc[0], B, C, H, W, x),
                    _check_state(f"c0[{j}][1] (c)", hc[1], B, C, H, W, x),
                ))
        directions = self._directions()

        def run_layer(i: int, d: int, inp: torch.Tensor):
            conv = directions[d][i]
            hs, cs = convlstm_layer(inp, conv.weight, conv.bias, *init[i * D + d], backend=self.backend,
                                    all_states=False)  # the per-step states returned are the h
            return hs, (hs[-1], cs[-1]), hs

        out, c_n, states = self._run_stack(x, run_layer)
        output = self._sequence_output(out)
        if return_states:
            return output, c_n, [self._sequence_output(s) for s in states]
        return output, c_n

    def load_ndrplz_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Load a state dict of ndrplz/ConvLSTM_pytorch's ``ConvLSTM`` (keys ``cell_list.{i}.conv.weight/bias``)
        into this stack, which must have the same layers and no shortcuts (theirs has none) and be
        unidirectional; mismatches raise ``ValueError``."""
        if self.shortcut_every != 0 or self.bidirectional:
            raise ValueError("load_ndrplz_state_dict needs a unidirectional ConvLSTM with shortcut_every=0, "
                             "like ConvLSTM_pytorch's")
        try:
            self.load_state_dict(ndrplz_to_state_dict(state_dict))
        except RuntimeError as e:  # missing / unexpected keys or shape mismatches
            raise ValueError(f"ConvLSTM_pytorch state dict does not match this ConvLSTM: {e}") from e

    @classmethod
    def from_ndrplz_state_dict(cls, state_dict: Mapping[str, torch.Tensor], **kwargs) -> "ConvLSTM":
        """Build a ConvLSTM from a ConvLSTM_pytorch state dict and load it. Sizes are inferred from the dict;
        ``kwargs`` (e.g. ``batch_first``, ``backend``) go to the constructor. The parameters take the dict's
        dtype and device."""
        model = cls(**{**infer_ndrplz_config(state_dict), **kwargs})
        ref = state_dict["cell_list.0.conv.weight"]
        model.to(device=ref.device, dtype=ref.dtype)
        model.load_ndrplz_state_dict(state_dict)
        return model

    def load_openstl_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Load the cells of an OpenSTL ``ConvLSTM_Model`` state dict (keys ``cell_list.{i}.conv_x.0.weight`` ...,
        with or without the ``model.`` prefix; its ``conv_last`` and anything outside ``cell_list`` are ignored)
        into this stack, which must have the same layers, a bias (set to zero: theirs have none), no shortcuts
        and one direction. A ``layer_norm=1`` checkpoint and mismatches raise ``ValueError``."""
        if self.shortcut_every != 0 or self.bidirectional or not self.bias:
            raise ValueError("load_openstl_state_dict needs a unidirectional ConvLSTM with bias and shortcut_every=0")
        try:
            self.load_state_dict(openstl_to_state_dict(state_dict))
        except RuntimeError as e:  # missing / unexpected keys or shape mismatches
            raise ValueError(f"OpenSTL state dict does not match this ConvLSTM: {e}") from e

    @classmethod
    def from_openstl_state_dict(cls, state_dict: Mapping[str, torch.Tensor], **kwargs) -> "ConvLSTM":
        """Build a ConvLSTM from an OpenSTL ConvLSTM state dict and load it; sizes are inferred from the dict,
        ``kwargs`` (e.g. ``batch_first``, ``backend``) go to the constructor."""
        model = cls(**{**infer_openstl_config(state_dict), **kwargs})
        ref = next(iter(openstl_to_state_dict(state_dict).values()))
        model.to(device=ref.device, dtype=ref.dtype)
        model.load_openstl_state_dict(state_dict)
        return model

    def extra_repr(self) -> str:
        return f"{self._stack_repr()}, backend={self.backend!r}"
