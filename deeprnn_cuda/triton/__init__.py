"""Triton backend: fused CBM recurrence kernels (forward and backward) registered as custom ops.

Triton is optional: when it cannot be imported, :func:`is_available` is False,
:func:`unavailable_reason` names the missing package, ``backend="triton"`` raises with that reason and
``backend="auto"`` never picks this backend.

Where it runs: CUDA tensors when a GPU is present; CPU tensors only under the Triton interpreter
(``TRITON_INTERPRET=1`` set before this module was imported, as ``tests/conftest.py`` does), which is how
CI tests the kernels. Layout of the package: :mod:`.kernels` (the ``@triton.jit`` kernels and their
launchers), :mod:`.ops` (the ``deeprnn_triton::`` custom ops, fake kernels and autograd); the same pair
for the ConvLSTM and ConvGRU cells in :mod:`.cell_kernels` and :mod:`.cell_ops`.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .._checks import ACT_R_CODES, ACT_T_CODES, MERGE_CODES

try:
    import triton as _triton_pkg

    _IMPORT_ERROR: Optional[BaseException] = None
    _PACKAGE_MISSING = False
except ImportError as e:  # triton is not installed (or cannot be imported)
    _triton_pkg = None
    _IMPORT_ERROR = e
    _PACKAGE_MISSING = True

if _IMPORT_ERROR is None:
    try:
        from . import kernels as _kernels
        from . import ops as _ops  # noqa: F401  (importing registers the deeprnn_triton:: ops)
        from . import cell_ops as _cell_ops  # noqa: F401
    except Exception as e:  # e.g. a Triton too old for these kernels
        _IMPORT_ERROR = e
    else:
        from .. import _decompositions

        _decompositions.register("deeprnn_triton", _decompositions.TRITON)  # for torch.onnx.export

#: dtypes the kernels handle: float32 (tf32 optional) and bf16/fp16 with float32 accumulation.
CUDA_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
#: the interpreter has no bfloat16 math
INTERPRETER_DTYPES = (torch.float32, torch.float16)
#: the ConvLSTM/ConvGRU kernels also do float64 (float64 state math) under the interpreter; on a GPU they
#: take the CBM kernels' dtypes (float64 ``tl.dot`` there is untested)
CELL_INTERPRETER_DTYPES = INTERPRETER_DTYPES + (torch.float64,)


def is_available() -> bool:
    """True when Triton imported and the kernels compiled into Python objects."""
    return _IMPORT_ERROR is None


def unavailable_reason() -> str:
    """Why the Triton backend is missing (empty when it is available)."""
    if _IMPORT_ERROR is None:
        return ""
    if _PACKAGE_MISSING or (isinstance(_IMPORT_ERROR, ImportError) and getattr(_IMPORT_ERROR, "name", "") == "triton"):
        return (f"the optional package 'triton' is not installed ({_IMPORT_ERROR}); "
                "install it with `pip install triton` (it ships with CUDA builds of torch on Linux)")
    return f"the Triton kernels failed to load ({type(_IMPORT_ERROR).__name__}: {_IMPORT_ERROR})"


def triton_version() -> str:
    return getattr(_triton_pkg, "__version__", "") if _triton_pkg is not None else ""


def _require() -> None:
    if not is_available():
        raise RuntimeError(f"backend='triton' is not available: {unavailable_reason()}")


def interpreter_active() -> bool:
    """True when the kernels were defined under ``TRITON_INTERPRET=1`` (they then run on CPU tensors)."""
    return is_available() and _kernels.INTERPRET


def supports(x: torch.Tensor) -> bool:
    """Whether the Triton kernels handle ``x``'s device and dtype here."""
    if not is_available():
        return False
    if _kernels.INTERPRET:
        return x.device.type == "cpu" and x.dtype in INTERPRETER_DTYPES
    return x.device.type == "cuda" and torch.cuda.is_available() and x.dtype in CUDA_DTYPES


def cell_supports(x: torch.Tensor) -> bool:
    """Whether the ConvLSTM/ConvGRU kernels handle ``x``'s device and dtype here."""
    if is_available() and _kernels.INTERPRET:
        return x.device.type == "cpu" and x.dtype in CELL_INTERPRETER_DTYPES
    return supports(x)


def set_mode(mode: str) -> str:
    """Force the launch strategy of every cell's kernels: ``"auto"`` (by shape), ``"single"`` (a launch per
    step) or ``"multi"`` (one launch for all steps); returns the previous mode."""
    _require()
    return _kernels.set_mode(mode)


def cbm_layer_triton(
    x: torch.Tensor,
    weight_r: torch.Tensor,
    bias_r: Optional[torch.Tensor],
    weight_t: torch.Tensor,
    bias_t: Optional[torch.Tensor],
    c0: torch.Tensor,
    *,
    td_mask: Optional[torch.Tensor] = None,
    act_r: str = "relu",
    act_t: str = "sigmoid",
    merge: str = "mul",
    all_states: bool = True,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The CBM layer on the Triton ops; same contract as :func:`deeprnn_cuda.reference.cbm_layer_ref`."""
    _require()
    o, c, _ = torch.ops.deeprnn_triton.cbm_forward(
        x, weight_r, bias_r, weight_t, bias_t, c0, td_mask,
        ACT_R_CODES[act_r], ACT_T_CODES[act_t], MERGE_CODES[merge],
    )
    return o, c if all_states else c[-1:]


def convlstm_layer_triton(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    h0: torch.Tensor,
    c0: torch.Tensor,
    all_states: bool = True,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The ConvLSTM layer on the Triton ops: ``(h, c)``, each ``(T, B, C, H, W)`` (``all_states=False``: c is
    ``c[-1:]``).

    Same contract as the reference ``convlstm_layer_ref``: validated arguments, ``h0``/``c0`` materialized.
    """
    _require()
    h, c, _ = torch.ops.deeprnn_triton.convlstm_forward(x, weight, bias, h0, c0)
    return h, c if all_states else c[-1:]


def convgru_layer_triton(
    x: torch.Tensor,
    weight_x: torch.Tensor,
    bias_x: Optional[torch.Tensor],
    weight_h: torch.Tensor,
    bias_h: Optional[torch.Tensor],
    h0: torch.Tensor,
) -> torch.Tensor:
    """The ConvGRU layer on the Triton ops: ``h`` of shape ``(T, B, C, H, W)``.

    Same contract as the reference ``convgru_layer_ref``: validated arguments, ``h0`` materialized.
    """
    _require()
    h, _ = torch.ops.deeprnn_triton.convgru_forward(x, weight_x, bias_x, weight_h, bias_h, h0)
    return h
