"""Backend registry of every cell: which implementations exist here, and which one ``backend="auto"`` picks.

A backend of a cell is a callable with the signature of the cell's reference (validated arguments, initial
states materialized), those of :mod:`deeprnn_cuda.reference`. Optional backends are imported lazily so that a
missing extension or a missing Triton never breaks ``import deeprnn_cuda``.
"""
from __future__ import annotations

import functools
import warnings
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from . import autotune
from ._checks import BACKENDS, check_choice
from .reference import cbm_layer_ref, convgru_layer_ref, convlstm_layer_ref

#: the cell families; each has ``<cell>_layer_ref`` in :mod:`deeprnn_cuda.reference`, ``<cell>_layer_native`` in
#: :mod:`deeprnn_cuda._native` and, once its kernels exist, ``<cell>_layer_triton`` in the Triton backend.
CELLS = ("cbm", "convlstm", "convgru")

_REFERENCES = {"cbm": cbm_layer_ref, "convlstm": convlstm_layer_ref, "convgru": convgru_layer_ref}

_warned_fallback = False
_warned_cells = set()


def _native():
    from . import _native

    return _native


def _triton():
    from . import triton as triton_backend

    return triton_backend


def reference_of(cell: str) -> Callable:
    """The pure-PyTorch reference layer of ``cell``."""
    check_choice("cell", cell, CELLS)
    return _REFERENCES[cell]


def empty_result(x: torch.Tensor, shapes: Sequence[Tuple[int, ...]],
                 inputs: Sequence[Optional[torch.Tensor]]) -> Tuple[torch.Tensor, ...]:
    """Empty outputs of ``shapes`` that still belong to the autograd graph of ``inputs``, so that backward gives
    every input a zero gradient (what the reference gives for an empty batch) instead of failing."""
    outs = tuple(x.new_empty(shape) for shape in shapes)
    if not torch.is_grad_enabled():
        return outs
    zeros = [t.sum() * 0 for t in inputs if t is not None and t.requires_grad]
    if not zeros:
        return outs
    zero = torch.stack(zeros).sum()
    return tuple(o + zero for o in outs)


def autocast_args(x: object, *tensors: Optional[torch.Tensor]) -> Tuple[object, ...]:
    """Cast to the autocast dtype as ``conv2d`` would: floating tensors other than float64. Every cell's layer
    is convolution work, so under ``torch.autocast`` it runs in the autocast dtype."""
    if not isinstance(x, torch.Tensor) or x.device.type not in ("cpu", "cuda"):
        return (x, *tensors)
    device_type = x.device.type
    if not torch.is_autocast_enabled(device_type):
        return (x, *tensors)
    dtype = torch.get_autocast_dtype(device_type)

    def cast(t: object) -> object:
        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != torch.float64:
            return t.to(dtype)
        return t

    return tuple(cast(t) for t in (x, *tensors))


def backend_status() -> Dict[str, str]:
    """One line per backend saying whether it is usable here and why not (for ``deeprnn info``)."""
    native = _native()
    triton_backend = _triton()
    status = {"reference": "available (pure PyTorch, CPU and CUDA)"}
    if native.is_available():
        if native.cuda_compiled():
            status["native"] = "available (CPU and CUDA)"
        else:
            why = native.build_info().get("cuda", "CUDA kernels not compiled in")
            status["native"] = f"available (CPU only; {why})"
    else:
        status["native"] = f"not available: {native.unavailable_reason()}"
    if triton_backend.is_available():
        where = ("CPU tensors under the interpreter, TRITON_INTERPRET=1" if triton_backend.interpreter_active()
                 else "CUDA tensors" + ("" if torch.cuda.is_available() else "; no GPU visible here"))
        status["triton"] = f"available (Triton {triton_backend.triton_version()}, {where})"
    else:
        status["triton"] = f"not available: {triton_backend.unavailable_reason()}"
    return status


def _native_supports(x: torch.Tensor) -> bool:
    native = _native()
    return native.is_available() and native.supports(x)


def _triton_supports(x: torch.Tensor) -> bool:
    triton_backend = _triton()
    return triton_backend.is_available() and triton_backend.supports(x)


def auto_candidates(x: torch.Tensor) -> List[autotune.Candidate]:
    """The compiled backends that run ``x``, in static preference order: native, then Triton (CUDA only:
    on the CPU it runs under its interpreter, a testing aid far too slow to use)."""
    found = []
    if _native_supports(x):
        ops = torch.ops.deeprnn
        found.append(autotune.Candidate("native", _native().cbm_layer_native, ops.cbm_forward, ops.cbm_backward))
    if x.is_cuda and _triton_supports(x):
        ops = torch.ops.deeprnn_triton
        found.append(autotune.Candidate("triton", _triton().cbm_layer_triton, ops.cbm_forward, ops.cbm_backward))
    return found


def available_backends(x: torch.Tensor) -> List[str]:
    """The backends that can run on ``x``'s device and dtype, the reference first."""
    return ["reference"] + [c.name for c in auto_candidates(x)]


def resolve_backend(backend: str, x: torch.Tensor) -> Callable:
    """Return the implementation for ``backend`` on ``x``'s device and dtype.

    ``"auto"``: with several compiled candidates (CUDA), the one :mod:`deeprnn_cuda.autotune` measures
    fastest for each call's shape; with one, that one; with none, the reference (warning once).
    An explicitly named backend that cannot run here raises ``RuntimeError`` saying why.
    """
    global _warned_fallback
    check_choice("backend", backend, BACKENDS)
    if backend == "reference":
        return cbm_layer_ref
    if backend == "native":
        native = _native()
        if not native.is_available():
            raise RuntimeError(f"backend='native' is not available: {native.unavailable_reason()}")
        if not native.supports(x):
            raise RuntimeError(f"backend='native' does not support {x.dtype} tensors on {x.device.type}")
        return native.cbm_layer_native
    if backend == "triton":
        triton_backend = _triton()
        if not triton_backend.is_available():
            raise RuntimeError(f"backend='triton' is not available: {triton_backend.unavailable_reason()}")
        if not triton_backend.supports(x):
            hint = " (Triton runs CUDA tensors; on the CPU only under TRITON_INTERPRET=1)" if not x.is_cuda else ""
            raise RuntimeError(f"backend='triton' does not support {x.dtype} tensors on {x.device.type}{hint}")
        return triton_backend.cbm_layer_triton
    candidates = auto_candidates(x)
    if len(candidates) > 1:
        return functools.partial(autotune.cbm_layer_auto, candidates)
    if candidates:
        return candidates[0].layer
    if not _warned_fallback:
        _warned_fallback = True
        warnings.warn(
            f"deeprnn_cuda: no compiled backend for {x.dtype} on {x.device.type}; using the slow reference "
            f"implementation. {_native().unavailable_reason() or ''}".strip(),
            stacklevel=3,
        )
    return cbm_layer_ref


def cell_auto_candidates(cell: str, x: torch.Tensor) -> List[Tuple[str, Callable]]:
    """``(name, layer)`` of the compiled backends that run ``cell`` on ``x``, in static preference order:
    native, then Triton (CUDA only, as :func:`auto_candidates`)."""
    found = []
    native = _native()
    if native.is_available() and native.supports(x):
        found.append(("native", getattr(native, f"{cell}_layer_native")))
    triton_backend = _triton()
    if x.is_cuda and triton_backend.is_available() and triton_backend.cell_supports(x):
        found.append(("triton", getattr(triton_backend, f"{cell}_layer_triton")))
    return found


def resolve_cell_backend(cell: str, backend: str, x: torch.Tensor) -> Callable:
    """Return the implementation of ``cell`` (``"convlstm"`` or ``"convgru"``) for ``backend`` on ``x``.

    ``"auto"``: with several compiled candidates (CUDA: native and Triton), the one :mod:`deeprnn_cuda.autotune`
    measures fastest for each call's shape; with one, that one; with none, the reference (warning once per
    cell). ``"triton"``: the Triton backend's ``<cell>_layer_triton``. An explicitly named backend that cannot
    run here raises ``RuntimeError`` saying why. (CBM: :func:`resolve_backend`.)
    """
    check_choice("cell", cell, CELLS[1:])
    check_choice("backend", backend, BACKENDS)
    reference = reference_of(cell)
    if backend == "reference":
        return reference
    native = _native()
    if backend == "native":
        if not native.is_available():
            raise RuntimeError(f"backend='native' is not available: {native.unavailable_reason()}")
        if not native.supports(x):
            raise RuntimeError(f"backend='native' does not support {x.dtype} tensors on {x.device.type}")
        return getattr(native, f"{cell}_layer_native")
    triton_backend = _triton()
    if backend == "triton":
        if not triton_backend.is_available():
            raise RuntimeError(f"backend='triton' is not available: {triton_backend.unavailable_reason()}")
        if not triton_backend.cell_supports(x):
            hint = " (Triton runs CUDA tensors; on the CPU only under TRITON_INTERPRET=1)" if not x.is_cuda else ""
            raise RuntimeError(f"backend='triton' does not support {x.dtype} tensors on {x.device.type}{hint}")
        return getattr(triton_backend, f"{cell}_layer_triton")
    candidates = cell_auto_candidates(cell, x)
    if len(candidates) > 1:
        return functools.partial(autotune.cell_layer_auto, cell, candidates)
    if candidates:
        return candidates[0][1]
    if cell not in _warned_cells:
        _warned_cells.add(cell)
        warnings.warn(
            f"deeprnn_cuda: no compiled {cell} backend for {x.dtype} on {x.device.type}; using the slow reference "
            f"implementation. {native.unavailable_reason() or ''}".strip(),
            stacklevel=3,
        )
    return reference
