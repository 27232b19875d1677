"""Argument validation for the CBM op: the one source of truth for shapes, dtypes and option names.

Every backend receives arguments that passed :func:`check_cbm_args`, so kernels never re-validate.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import torch

# Integer codes shared with csrc/cbm.h (the native ops take ints, not strings).
ACT_R_CODES = {"identity": 0, "relu": 1, "tanh": 2}
ACT_T_CODES = {"sigmoid": 0, "relu": 1}
MERGE_CODES = {"mul": 0, "add": 1}
BACKENDS = ("auto", "reference", "native", "triton")
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass(frozen=True)
class CBMShapes:
    """Sizes of one CBM layer call: ``x`` is ``(T, B, C_in, H, W)``, the state is ``(B, C, H, W)``."""

    T: int
    B: int
    C_in: int
    C: int
    H: int
    W: int
    k_r: int
    k_t: int


def _shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def check_choice(name: str, value: object, choices) -> str:
    """Raise ``ValueError`` unless ``value`` is one of ``choices``; return it."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {sorted(choices)}, got {value!r}")
    return value


def _check_tensor(name: str, t: object, rank: int, expected: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {expected}, got {type(t).__name__}")
    if t.dim() != rank:
        raise ValueError(f"{name} must have shape {expected} ({rank} dims), got {_shape(t)}")
    return t


def _check_kernel(name: str, w: torch.Tensor) -> int:
    kh, kw = w.shape[-2:]
    if kh != kw or kh % 2 == 0:
        raise ValueError(f"{name} must have a square odd kernel (k, k) with k in 1, 3, 5, ...; got {kh}x{kw}")
    return int(kh)


def check_cbm_args(
    x: torch.Tensor,
    weight_r: torch.Tensor,
    bias_r: Optional[torch.Tensor],
    weight_t: torch.Tensor,
    bias_t: Optional[torch.Tensor],
    c0: Optional[torch.Tensor],
    td_mask: Optional[torch.Tensor],
    act_r: str,
    act_t: str,
    merge: str,
) -> CBMShapes:
    """Validate the arguments of :func:`deeprnn_cuda.cbm_layer`; return their sizes.

    Raises ``TypeError`` for non-tensors and ``ValueError`` naming the argument, the expected shape
    and what was given for every other mistake (rank, channels, kernel, dtype, device, td_mask).
    """
    check_choice("act_r", act_r, ACT_R_CODES)
    check_choice("act_t", act_t, ACT_T_CODES)
    check_choice("merge", merge, MERGE_CODES)

    _check_tensor("x", x, 5, "(T, B, C_in, H, W)")
    T, B, C_in, H, W = x.shape
    if x.dtype not in FLOAT_DTYPES:
        raise ValueError(f"x must be a floating point tensor (float16, bfloat16, float32, float64), got {x.dtype}")

    # Zero channels have no convolution to run (the reference fails on them too); every other size may be 0.
    if C_in == 0:
        raise ValueError(f"x must have shape (T, B, C_in, H, W) with C_in >= 1 channels, got {_shape(x)}")

    _check_tensor("weight_r", weight_r, 4, "(C, C_in, k_r, k_r)")
    C = weight_r.shape[0]
    if weight_r.shape[1] != C_in:
        raise ValueError(
            f"weight_r must have shape (C, C_in={C_in}, k_r, k_r) to match x's {C_in} channels, got {_shape(weight_r)}"
        )
    if C == 0:
        raise ValueError(f"weight_r must have shape (C, C_in={C_in}, k_r, k_r) with C >= 1, got {_shape(weight_r)}")
    k_r = _check_kernel("weight_r", weight_r)

    _check_tensor("weight_t", weight_t, 4, f"(C={C}, C_in + C={C_in + C}, k_t, k_t)")
    if weight_t.shape[0] != C or weight_t.shape[1] != C_in + C:
        raise ValueError(
            f"weight_t must have shape (C={C}, C_in + C={C_in + C}, k_t, k_t) (it convolves cat([x_t, c_{{t-1}}])), "
            f"got {_shape(weight_t)}"
        )
    k_t = _check_kernel("weight_t", weight_t)

    named = [("weight_r", weight_r), ("weight_t", weight_t)]
    for name, b in (("bias_r", bias_r), ("bias_t", bias_t)):
        if b is not None:
            _check_tensor(name, b, 1, f"(C={C},)")
            if b.shape[0] != C:
                raise ValueError(f"{name} must have shape (C={C},), got {_shape(b)}")
            named.append((name, b))
    if c0 is not None:
        _check_tensor("c0", c0, 4, f"(B={B}, C={C}, H={H}, W={W})")
        if tuple(c0.shape) != (B, C, H, W):
            raise ValueError(f"c0 must have shape (B={B}, C={C}, H={H}, W={W}), got {_shape(c0)}")
        named.append(("c0", c0))
    for name, t in named:
        if t.dtype != x.dtype:
            raise ValueError(f"{name} must have x's dtype {x.dtype}, got {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"{name} must be on x's device {x.device}, got {t.device}")

    if td_mask is not None:
        if not isinstance(td_mask, torch.Tensor):
            raise TypeError(f"td_mask must be a bool tensor of shape (T,) or (T, B), got {type(td_mask).__name__}")
        if td_mask.dtype != torch.bool:
            raise ValueError(f"td_mask must have dtype torch.bool, got {td_mask.dtype}")
        if tuple(td_mask.shape) not in ((T,), (T, B)):
            raise ValueError(
                f"td_mask must have shape (T={T},) (one coin per step) or (T={T}, B={B}) (one per sample), "
                f"got {_shape(td_mask)}"
            )
        if td_mask.device != x.device:
            raise ValueError(f"td_mask must be on x's device {x.device}, got {td_mask.device}")
    return CBMShapes(T=T, B=B, C_in=C_in, C=C, H=H, W=W, k_r=k_r, k_t=k_t)


def td_keep_mask(td_mask: Optional[torch.Tensor], T: int, B: int, dtype: torch.dtype) -> Optional[torch.Tensor]:
    """The ``(T, B)`` multiplier for the gradient T sends back into x: 0 where Temporal Dropout drops."""
    if td_mask is None:
        return None
    keep = (~td_mask).to(dtype)
    return keep.view(T, 1).expand(T, B) if keep.dim() == 1 else keep


def _option_name(name: str, code: object, codes: Dict[str, int]) -> str:
    """The option whose integer code (as the compiled ops take it) is ``code``."""
    if isinstance(code, int) and not isinstance(code, bool):
        for option, value in codes.items():
            if code == value:
                return option
    raise ValueError(f"{name} must be one of the codes {sorted(codes.values())} ({codes}), got {code!r}")


def _check_op_states(named) -> None:
    """The compiled ops take no default state: every (name, state) in ``named`` must be given."""
    for name, state in named:
        if state is None:
            raise ValueError(f"{name} must be a tensor of shape (B, C, H, W): the compiled ops take no default state")


def _check_sequences(x: torch.Tensor, s, named) -> None:
    """Every (name, tensor, channels) in ``named`` is ``(T, B, channels, H, W)`` (sizes from ``s``, a CBMShapes or
    CellShapes) with x's dtype and device: the saved and incoming tensors of a backward op, which its kernels
    index with x's sizes."""
    for name, t, channels in named:
        shape = (s.T, s.B, channels, s.H, s.W)
        _check_tensor(name, t, 5, str(shape))
        if tuple(t.shape) != shape or t.dtype != x.dtype or t.device != x.device:
            raise ValueError(f"{name} must have shape {shape}, dtype {x.dtype} and device {x.device}, "
                             f"got {_shape(t)}, {t.dtype} on {t.device}")


def check_op_args(
    x: torch.Tensor,
    weight_r: torch.Tensor,
    bias_r: Optional[torch.Tensor],
    weight_t: torch.Tensor,
    bias_t: Optional[torch.Tensor],
    c0: torch.Tensor,
    td_mask: Optional[torch.Tensor],
    act_r: int,
    act_t: int,
    merge: int,
) -> CBMShapes:
    """:func:`check_cbm_args` for a compiled forward op called directly: option codes, ``c0`` required."""
    names = (_option_name("act_r", act_r, ACT_R_CODES), _option_name("act_t", act_t, ACT_T_CODES),
             _option_name("merge", merge, MERGE_CODES))
    _check_op_states((("c0", c0),))
    return check_cbm_args(x, weight_r, bias_r, weight_t, bias_t, c0, td_mask, *names)


def check_op_backward_args(
    grad_o: torch.Tensor,
    grad_c: torch.Tensor,
    x: torch.Tensor,
    weight_r: torch.Tensor,
    weight_t: torch.Tensor,
    c0: torch.Tensor,
    r: torch.Tensor,
    c: torch.Tensor,
    td_mask: Optional[torch.Tensor],
    act_r: int,
    act_t: int,
    merge: int,
) -> CBMShapes:
    """:func:`check_op_args` for a compiled backward op, plus the saved and incoming ``(T, B, C, H, W)`` tensors."""
    s = check_op_args(x, weight_r, None, weight_t, None, c0, td_mask, act_r, act_t, merge)
    _check_sequences(x, s, ((name, t, s.C) for name, t in (("grad_o", grad_o), ("grad_c", grad_c), ("r", r),
                                                            ("c", c))))
    return s


@dataclass(frozen=True)
class CellShapes:
    """Sizes of one ConvLSTM / ConvGRU layer call: ``x`` is ``(T, B, C_in, H, W)``, states ``(B, C, H, W)``."""

    T: int
    B: int
    C_in: int
    C: int
    H: int
    W: int


def _check_x(x: object) -> torch.Tensor:
    _check_tensor("x", x, 5, "(T, B, C_in, H, W)")
    if x.dtype not in FLOAT_DTYPES:
        raise ValueError(f"x must be a floating point tensor (float16, bfloat16, float32, float64), got {x.dtype}")
    if x.shape[2] == 0:  # the input projection would have no input channels to convolve
        raise ValueError(f"x must have shape (T, B, C_in, H, W) with C_in >= 1 channels, got {_shape(x)}")
    return x


def _check_bias(name: str, b: object, n: int, what: str) -> None:
    _check_tensor(name, b, 1, f"({what}={n},)")
    if b.shape[0] != n:
        raise ValueError(f"{name} must have shape ({what}={n},), got {_shape(b)}")


def _check_initial_state(name: str, s: object, B: int, C: int, H: int, W: int) -> None:
    expected = f"(B={B}, C={C}, H={H}, W={W})"
    _check_tensor(name, s, 4, expected)
    if tuple(s.shape) != (B, C, H, W):
        raise ValueError(f"{name} must have shape {expected}, got {_shape(s)}")


def _check_like_x(x: torch.Tensor, named) -> None:
    """Every given tensor in ``named`` ((name, tensor or None) pairs) has ``x``'s dtype and device."""
    for name, t in named:
        if t is None:
            continue
        if t.dtype != x.dtype:
            raise ValueError(f"{name} must have x's dtype {x.dtype}, got {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"{name} must be on x's device {x.device}, got {t.device}")


def check_convlstm_args(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    h0: Optional[torch.Tensor],
    c0: Optional[torch.Tensor],
) -> CellShapes:
    """Validate the arguments of :func:`deeprnn_cuda.convlstm_layer`; return their sizes.

    ``weight`` is ``(4C, C_in + C, k, k)`` (gates i, f, o, g from ``cat([x_t, h_{t-1}])``), ``bias`` ``(4C,)``,
    ``h0`` and ``c0`` ``(B, C, H, W)``. ``TypeError`` for non-tensors, ``ValueError`` naming the argument and
    the expected shape otherwise.
    """
    T, B, C_in, H, W = _check_x(x).shape
    _check_tensor("weight", weight, 4, "(4C, C_in + C, k, k)")
    C = weight.shape[0] // 4
    if weight.shape[0] % 4 != 0 or weight.shape[0] == 0 or weight.shape[1] != C_in + C:
        raise ValueError(
            f"weight must have shape (4C, C_in + C, k, k) with C_in={C_in} (gates i, f, o, g convolving "
            f"cat([x_t, h_{{t-1}}])), got {_shape(weight)}"
        )
    _check_kernel("weight", weight)
    if bias is not None:
        _check_bias("bias", bias, 4 * C, "4C")
    for name, s in (("h0", h0), ("c0", c0)):
        if s is not None:
            _check_initial_state(name, s, B, C, H, W)
    _check_like_x(x, (("weight", weight), ("bias", bias), ("h0", h0), ("c0", c0)))
    return CellShapes(T=T, B=B, C_in=C_in, C=C, H=H, W=W)


def check_convgru_args(
    x: torch.Tensor,
    weight_x: torch.Tensor,
    bias_x: Optional[torch.Tensor],
    weight_h: torch.Tensor,
    bias_h: Optional[torch.Tensor],
    h0: Optional[torch.Tensor],
) -> CellShapes:
    """Validate the arguments of :func:`deeprnn_cuda.convgru_layer`; return their sizes.

    ``weight_x`` is ``(3C, C_in, k_x, k_x)``, ``weight_h`` ``(3C, C, k_h, k_h)`` (gates z, r, n in that
    order), the biases ``(3C,)``, ``h0`` ``(B, C, H, W)``.
    """
    T, B, C_in, H, W = _check_x(x).shape
    _check_tensor("weight_h", weight_h, 4, "(3C, C, k_h, k_h)")
    C = weight_h.shape[1]
    if weight_h.shape[0] != 3 * C or C == 0:
        raise ValueError(f"weight_h must have shape (3C, C, k_h, k_h) (gates z, r, n), got {_shape(weight_h)}")
    _check_tensor("weight_x", weight_x, 4, f"(3C={3 * C}, C_in={C_in}, k_x, k_x)")
    if tuple(weight_x.shape[:2]) != (3 * C, C_in):
        raise ValueError(
            f"weight_x must have shape (3C={3 * C}, C_in={C_in}, k_x, k_x) to match weight_h and x, "
            f"got {_shape(weight_x)}"
        )
    _check_kernel("weight_x", weight_x)
    _check_kernel("weight_h", weight_h)
    for name, b in (("bias_x", bias_x), ("bias_h", bias_h)):
        if b is not None:
            _check_bias(name, b, 3 * C, "3C")
    if h0 is not None:
        _check_initial_state("h0", h0, B, C, H, W)
    _check_like_x(x, (("weight_x", weight_x), ("bias_x", bias_x), ("weight_h", weight_h), ("bias_h", bias_h),
                      ("h0", h0)))
    return CellShapes(T=T, B=B, C_in=C_in, C=C, H=H, W=W)


def check_convlstm_op_args(x, weight, bias, h0, c0) -> CellShapes:
    """:func:`check_convlstm_args` for a compiled ConvLSTM forward op called directly: ``h0`` and ``c0`` required."""
    _check_op_states((("h0", h0), ("c0", c0)))
    return check_convlstm_args(x, weight, bias, h0, c0)


def check_convlstm_op_backward_args(grad_h, grad_c, x, weight, h0, c0, h, c, gates) -> CellShapes:
    """:func:`check_convlstm_op_args` for the backward op, plus the saved and incoming sequences."""
    s = check_convlstm_op_args(x, weight, None, h0, c0)
    _check_sequences(x, s, (("grad_h", grad_h, s.C), ("grad_c", grad_c, s.C), ("h", h, s.C), ("c", c, s.C),
                            ("gates", gates, 4 * s.C)))
    return s


def check_convgru_op_args(x, weight_x, bias_x, weight_h, bias_h, h0) -> CellShapes:
    """:func:`check_convgru_args` for a compiled ConvGRU forward op called directly: ``h0`` required."""
    _check_op_states((("h0", h0),))
    return check_convgru_args(x, weight_x, bias_x, weight_h, bias_h, h0)


def check_convgru_op_backward_args(grad_h, x, weight_x, weight_h, h0, h, gates, gate_channels: int = 3) -> CellShapes:
    """:func:`check_convgru_op_args` for the backward op, plus the saved and incoming sequences; ``gates`` holds
    ``gate_channels`` times C channels (the native ops save z, r, n; the Triton ops also r * h)."""
    s = check_convgru_op_args(x, weight_x, None, weight_h, None, h0)
    _check_sequences(x, s, (("grad_h", grad_h, s.C), ("h", h, s.C), ("gates", gates, gate_channels * s.C)))
    return s
