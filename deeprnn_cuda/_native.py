"""The compiled backend: Python side of the ``deeprnn::`` custom ops defined in ``csrc/``.

The C++ extension registers the op schemas and the CPU (and, when compiled in, CUDA) kernels.
Here we add what PyTorch needs around them: fake kernels for ``torch.compile`` and the autograd
formula, which calls the backward op.
"""
from __future__ import annotations

import json
from typing import Dict, Optional, Tuple

import torch

from ._checks import ACT_R_CODES, ACT_T_CODES, MERGE_CODES
from ._op_autograd import cbm_backward_fake, cbm_forward_fake, register_cbm_autograd

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
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The CBM layer on the compiled ops; same contract as :func:`deeprnn_cuda.reference.cbm_layer_ref`."""
    o, c, _ = torch.ops.deeprnn.cbm_forward(
        x, weight_r, bias_r, weight_t, bias_t, c0, td_mask,
        ACT_R_CODES[act_r], ACT_T_CODES[act_t], MERGE_CODES[merge],
    )
    return o, c


if is_available():
    torch.library.register_fake("deeprnn::cbm_forward", cbm_forward_fake)
    torch.library.register_fake("deeprnn::cbm_backward", cbm_backward_fake)
    register_cbm_autograd("deeprnn::cbm_forward", torch.ops.deeprnn.cbm_backward)
