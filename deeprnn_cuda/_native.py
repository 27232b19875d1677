"""The compiled backend: Python side of the ``deeprnn::`` custom ops defined in ``csrc/``.

The C++ extension registers the op schemas and the CPU (and, when compiled in, CUDA) kernels.
Here we add what PyTorch needs around them: fake kernels for ``torch.compile``, the autograd
formula, which calls the backward op, and the decompositions ``torch.onnx.export`` uses.
"""
from __future__ import annotations

import json
from typing import Dict, Optional, Tuple

import torch

from . import _cell_autograd as cells
from . import _decompositions
from ._checks import ACT_R_CODES, ACT_T_CODES, MERGE_CODES
from ._op_autograd import cbm_backward_fake, cbm_forward_fake, cbm_inference_fake, register_cbm_autograd

BUILD_HINT = (
    "build the extension with `pip install --no-build-isolation -e .` from the repository root "
    "(it compiles the CUDA kernels when it finds a CUDA toolkit matching torch's; CUDA_HOME=... names one)"
)

try:
    from . import _C  # noqa: F401  (importing registers the deeprnn:: ops)

    _IMPORT_ERROR: Optional[BaseException] = None
except ImportError as e:  # the extension was not built
    _IMPORT_ERROR = e

# Asked once, at import: the op returns a plain bool and has no fake kernel, so calling it while dynamo traces a
# caller (backend dispatch inside a compiled model) would break the graph, a hard error under fullgraph=True.
_CUDA_COMPILED = _IMPORT_ERROR is None and bool(torch.ops.deeprnn.cuda_compiled())

CPU_DTYPES = (torch.float32, torch.float64, torch.bfloat16)
CUDA_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def is_available() -> bool:
    """True when the compiled extension imported."""
    return _IMPORT_ERROR is None


def unavailable_reason() -> str:
    """Why the native backend is missing (empty when it is available)."""
    if _IMPORT_ERROR is None:
        return ""
    return f"the compiled extension deeprnn_cuda._C is missing ({_IMPORT_ERROR}); {BUILD_HINT}"


def cuda_compiled() -> bool:
    """True when the extension was built with its CUDA kernels (a constant: safe to call while tracing)."""
    return _CUDA_COMPILED


def build_info() -> Dict[str, object]:
    """What setup.py decided when it built the extension: ``cuda_compiled``, and one line each for ``cuda``
    (which toolkit, or why none) and ``cpu`` (the SIMD flags and why). Empty when the extension is missing,
    predates the record, or was built without setup.py (CMake)."""
    if not is_available() or not hasattr(torch.ops.deeprnn, "build_info"):
        return {}
    return json.loads(torch.ops.deeprnn.build_info())


def supports(x: torch.Tensor) -> bool:
    """Whether the native kernels handle ``x``'s device and dtype."""
    if x.device.type == "cpu":
        return x.dtype in CPU_DTYPES
    if x.device.type == "cuda":
        return cuda_compiled() and x.dtype in CUDA_DTYPES
    return False


def cbm_layer_native(
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
    """The CBM layer on the compiled ops; same contract as :func:`deeprnn_cuda.reference.cbm_layer_ref`.
    Without autograd (``torch.no_grad()``, ``inference_mode``, or no input requiring grad) it runs the inference
    op, which never materialises r (nor, with ``all_states=False``, any state but the last two)."""
    codes = ACT_R_CODES[act_r], ACT_T_CODES[act_t], MERGE_CODES[merge]
    if not needs_grad(x, weight_r, bias_r, weight_t, bias_t, c0):
        return torch.ops.deeprnn.cbm_inference(x, weight_r, bias_r, weight_t, bias_t, c0, *codes, all_states)
    o, c, _ = torch.ops.deeprnn.cbm_forward(x, weight_r, bias_r, weight_t, bias_t, c0, td_mask, *codes)
    return o, c if all_states else c[-1:]


def needs_grad(*tensors: Optional[torch.Tensor]) -> bool:
    """Whether autograd will want a backward through these inputs: only then does a forward keep what only
    backward needs (CBM's r, the gates of ConvLSTM and ConvGRU)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def convlstm_layer_native(
    x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], h0: torch.Tensor, c0: torch.Tensor,
    all_states: bool = True,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The ConvLSTM layer on the compiled ops; contract of :func:`deeprnn_cuda.convlstm.convlstm_layer_ref`."""
    if not needs_grad(x, weight, bias, h0, c0):
        return torch.ops.deeprnn.convlstm_inference(x, weight, bias, h0, c0, all_states)
    h, c, _ = torch.ops.deeprnn.convlstm_forward(x, weight, bias, h0, c0)
    return h, c if all_states else c[-1:]


def convgru_layer_native(
    x: torch.Tensor,
    weight_x: torch.Tensor,
    bias_x: Optional[torch.Tensor],
    weight_h: torch.Tensor,
    bias_h: Optional[torch.Tensor],
    h0: torch.Tensor,
) -> torch.Tensor:
    """The ConvGRU layer on the compiled ops; contract of :func:`deeprnn_cuda.convgru.convgru_layer_ref`."""
    if not needs_grad(x, weight_x, bias_x, weight_h, bias_h, h0):
        return torch.ops.deeprnn.convgru_inference(x, weight_x, bias_x, weight_h, bias_h, h0)
    return torch.ops.deeprnn.convgru_forward(x, weight_x, bias_x, weight_h, bias_h, h0)[0]


if is_available():
    torch.library.register_fake("deeprnn::cbm_forward", cbm_forward_fake)
    torch.library.register_fake("deeprnn::cbm_backward", cbm_backward_fake)
    register_cbm_autograd("deeprnn::cbm_forward", torch.ops.deeprnn.cbm_backward)
    torch.library.register_fake("deeprnn::cbm_inference", cbm_inference_fake)
    for _name in ("convlstm_forward", "convlstm_inference", "convlstm_backward", "convgru_forward",
                  "convgru_inference", "convgru_backward"):
        torch.library.register_fake(f"deeprnn::{_name}", getattr(cells, f"{_name}_fake"))
    cells.register_convlstm_autograd("deeprnn::convlstm_forward", torch.ops.deeprnn.convlstm_backward)
    cells.register_convgru_autograd("deeprnn::convgru_forward", torch.ops.deeprnn.convgru_backward)
    _decompositions.register("deeprnn", _decompositions.NATIVE)  # so that torch.onnx.export translates them
