"""``backend="auto"`` on CUDA: pick between the compiled backends per shape, by measuring them.

Like ``torch.backends.cudnn.benchmark``: the first call with a new :class:`Key` (device, dtype, sizes,
options, whether gradients are needed and, without them, ``all_states``, float32 precision flags) times every
candidate on that call's own inputs and caches the fastest; every later call with the key goes straight to it.
Only calls with more than one candidate come here (CUDA tensors that both the native and the Triton backend
support). The ConvLSTM and ConvGRU layers do the same through :func:`cell_layer_auto` (key :class:`CellKey`;
their layers are timed whole, with the call's keywords: forward, plus backward through autograd when the call
needs gradients).

What is timed is what the call will run. With gradients: each candidate's forward op and its backward op
(output gradients all ones), called directly on detached inputs under ``torch.no_grad``. Without: the
candidate's layer itself under ``torch.no_grad``, with the call's ``all_states``, so the native backend is timed
on its inference op (no r, and only the final state when ``all_states=False``) as the call will run it. The RNG
state is saved and restored; one warm-up run, then the median of :data:`REPS` runs timed with CUDA events
(:func:`time_ms`, replaceable, e.g. by tests). A candidate that fails is dropped with a warning, unless the
failure is a CUDA error, which propagates (see :func:`_time_candidate`).

No measurement under ``torch.compile`` tracing, CUDA graph capture, a tensor subclass or dispatch mode
(FakeTensor, meta, proxy tracing) or with autotuning disabled: then the cached choice if there is one, else
the static preference (the first candidate, native). Disabled means the static preference always.
``DEEPRNN_AUTOTUNE=0`` in the environment disables it at import.
"""
from __future__ import annotations

import contextlib
import os
import re
import statistics
import warnings
from typing import Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode

from ._checks import ACT_R_CODES, ACT_T_CODES, MERGE_CODES

#: timed runs per candidate (after one warm-up); the median counts
REPS = 5


class Candidate(NamedTuple):
    """A compiled backend as autotuning sees it."""

    name: str
    #: the layer, with the signature of :func:`deeprnn_cuda.reference.cbm_layer_ref`; timed itself for calls
    #: without gradients
    layer: Callable
    #: its forward op ``(x, weight_r, bias_r, weight_t, bias_t, c0, td_mask, act_r, act_t, merge) -> (o, c, r)``,
    #: timed with the backward op for calls with gradients
    forward: Callable
    #: its backward op ``(grad_o, grad_c, x, weight_r, weight_t, c0, r, c, td_mask, act_r, act_t, merge)``
    backward: Callable


class Key(NamedTuple):
    """What a cached choice depends on."""

    device: int
    dtype: torch.dtype
    shape: Tuple[int, int, int, int, int, int]  # (T, B, C_in, C, H, W)
    k_r: int
    k_t: int
    act_r: str
    act_t: str
    merge: str
    bias: Tuple[bool, bool]  # (bias_r given, bias_t given)
    td_mask_dim: int  # 0: no td_mask, 1: (T,), 2: (T, B)
    grad: bool  # whether the call needs gradients
    # without gradients, the call's all_states (it decides which states the inference op keeps); None with
    # gradients, where the forward op keeps every state whatever the call asks for
    all_states: Optional[bool]
    tf32: Optional[bool]  # cudnn.allow_tf32 for float32 (every backend's TF32 switch), else None


class CellKey(NamedTuple):
    """What a cached choice for a ConvLSTM or ConvGRU layer depends on."""

    cell: str
    device: int
    dtype: torch.dtype
    shapes: Tuple[Optional[Tuple[int, ...]], ...]  # every argument's shape, None where absent (a bias)
    grad: bool
    # without gradients, ConvLSTM's all_states (as in Key); None with gradients or for ConvGRU, which has none
    all_states: Optional[bool]
    tf32: Optional[bool]


class Entry(NamedTuple):
    """A cached choice: the winner and the measured milliseconds of each candidate that ran."""

    backend: str
    times_ms: Dict[str, float]


_OFF_VALUES = ("0", "false", "off", "no")
_enabled = os.environ.get("DEEPRNN_AUTOTUNE", "1").strip().lower() not in _OFF_VALUES
_cache: Dict[Union[Key, CellKey], Entry] = {}


def enabled() -> bool:
    """Whether ``backend="auto"`` measures the candidates (default True; ``DEEPRNN_AUTOTUNE=0`` turns it off)."""
    return _enabled


def set_enabled(value: bool) -> None:
    """Turn per-shape measurement on or off; off, ``auto`` takes the static preference (native first)."""
    global _enabled
    if not isinstance(value, bool):
        raise ValueError(f"set_enabled expects True or False, got {value!r}")
    _enabled = value


def cache() -> Dict[Union[Key, CellKey], Entry]:
    """A copy of the cached choices: ``{Key or CellKey: Entry(backend, times_ms)}``."""
    return {key: Entry(e.backend, dict(e.times_ms)) for key, e in _cache.items()}


def clear_cache() -> None:
    """Forget every choice; the next call with each key measures again."""
    _cache.clear()


def time_ms(fn: Callable[[], object]) -> float:
    """Median milliseconds of ``fn()`` over :data:`REPS` runs after one warm-up, timed with CUDA events on the
    current stream."""
    fn()
    times: List[float] = []
    for _ in range(REPS):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _tf32_flags(x: torch.Tensor) -> Optional[bool]:
    """The flag float32 precision follows on every backend (cuDNN's convolutions, the Triton kernels'
    ``dot_precision``): ``torch.backends.cudnn.allow_tf32``; None for other dtypes."""
    if x.dtype != torch.float32:
        return None
    return torch.backends.cudnn.allow_tf32


def make_key(x, weight_r, bias_r, weight_t, bias_t, td_mask, act_r, act_t, merge, grad: bool,
             all_states: bool) -> Key:
    """The cache key of one call (arguments already validated)."""
    T, B, C_in, H, W = x.shape
    tf32 = _tf32_flags(x)
    return Key(
        device=x.device.index if x.device.index is not None else -1,
        dtype=x.dtype,
        shape=(T, B, C_in, weight_r.shape[0], H, W),
        k_r=weight_r.shape[-1],
        k_t=weight_t.shape[-1],
        act_r=act_r,
        act_t=act_t,
        merge=merge,
        bias=(bias_r is not None, bias_t is not None),
        td_mask_dim=0 if td_mask is None else td_mask.dim(),
        grad=grad,
        all_states=None if grad else all_states,
        tf32=tf32,
    )


def _can_measure(x: torch.Tensor) -> bool:
    """Real, eager tensors only: not while compiling, capturing a CUDA graph, or under a tensor subclass or
    dispatch mode (FakeTensor, meta, proxy tracing)."""
    return (
        not torch.compiler.is_compiling()
        and type(x) is torch.Tensor
        and x.device.type != "meta"
        and _get_current_dispatch_mode() is None
        and not (x.is_cuda and torch.cuda.is_current_stream_capturing())
    )


# How a CUDA error reads where it is not a torch.AcceleratorError: raised by Triton's driver, by cuDNN or cuBLAS,
# or rethrown by a C++ extension as a plain RuntimeError.
_CUDA_ERROR = re.compile(r"CUDA error|Triton Error \[CUDA\]|device-side assert|illegal memory access|"
                         r"STATUS_EXECUTION_FAILED")


def _time_candidate(name: str, step: Callable[[], object]) -> Optional[float]:
    """Milliseconds of ``step`` (:func:`time_ms`), or None when the candidate cannot run this call.

    The rule for a candidate that raises: a CUDA error (a ``torch.AcceleratorError``, or an exception whose
    message says "CUDA error", "Triton Error [CUDA]", "device-side assert", "illegal memory access" or cuDNN's
    and cuBLAS's ``STATUS_EXECUTION_FAILED``) propagates. An illegal address or a device-side assert is sticky:
    the CUDA context is unusable and every later CUDA call fails with the same error, so skipping the candidate
    would only move the error to the next call, under a warning that blames one backend for one shape. The
    exception cannot tell a sticky error from a benign one, and a CUDA error is a fault of the candidate, not a
    shape it declines, so every CUDA error propagates. Any other exception drops the candidate with a warning
    (a candidate that does not support the shape, ``ValueError`` or ``NotImplementedError``; Triton's
    out-of-resources at compile time; ``torch.OutOfMemoryError``, which the allocator recovers from): it must
    not make ``auto`` fail while another candidate runs.
    """
    try:
        return float(time_ms(step))
    except Exception as e:
        if isinstance(e, torch.AcceleratorError) or _CUDA_ERROR.search(str(e)):
            raise
        warnings.warn(f"deeprnn_cuda autotune: backend {name!r} failed on this shape and is skipped "
                      f"({type(e).__name__}: {e})", stacklevel=3)
        return None


def _measure(candidates: Sequence[Candidate], args: Tuple, act: Tuple[str, str, str], grad: bool,
             all_states: bool) -> Dict[str, float]:
    """Milliseconds per candidate on detached ``args``: forward and backward op when ``grad``, else the layer
    with ``all_states``; a candidate that fails is left out, with a warning (rule: :func:`_time_candidate`)."""
    x, weight_r, bias_r, weight_t, bias_t, c0, td_mask = (None if t is None else t.detach() for t in args)
    act_r, act_t, merge = act
    codes = (ACT_R_CODES[act_r], ACT_T_CODES[act_t], MERGE_CODES[merge])
    times: Dict[str, float] = {}
    device = x.device if x.is_cuda else None
    with torch.no_grad(), torch.random.fork_rng(devices=[device.index] if device else []), \
            (torch.cuda.device(device) if device else contextlib.nullcontext()):
        ones = x.new_ones(x.shape[:2] + (weight_r.shape[0],) + x.shape[3:]) if grad else None
        for cand in candidates:
            def step(cand: Candidate = cand) -> None:
                if grad:
                    o, c, r = cand.forward(x, weight_r, bias_r, weight_t, bias_t, c0, td_mask, *codes)
                    cand.backward(ones, ones, x, weight_r, weight_t, c0, r, c, td_mask, *codes)
                else:
                    cand.layer(x, weight_r, bias_r, weight_t, bias_t, c0, td_mask=td_mask, act_r=act_r,
                               act_t=act_t, merge=merge, all_states=all_states)

            ms = _time_candidate(cand.name, step)
            if ms is not None:
                times[cand.name] = ms
    return times


def _pick(key: Union[Key, CellKey], names: Sequence[str], x: torch.Tensor,
          measure: Callable[[], Dict[str, float]]) -> str:
    """The candidate name for a call with ``key``: cached, else the fastest ``measure()`` finds when measuring is
    allowed on ``x`` (and cached), else the first of ``names`` (also when every candidate failed: the call itself
    then raises the first one's error)."""
    entry = _cache.get(key)
    if entry is not None and entry.backend in names:
        return entry.backend
    if not _can_measure(x):
        return names[0]
    times = measure()
    if not times:
        return names[0]
    best = min(times, key=times.__getitem__)
    _cache[key] = Entry(best, times)
    return best


def choose(
    candidates: Sequence[Candidate],
    x: torch.Tensor,
    weight_r: torch.Tensor,
    bias_r: Optional[torch.Tensor],
    weight_t: torch.Tensor,
    bias_t: Optional[torch.Tensor],
    c0: torch.Tensor,
    td_mask: Optional[torch.Tensor],
    act_r: str,
    act_t: str,
    merge: str,
    all_states: bool = True,
) -> Candidate:
    """The candidate for this call: cached, else measured when allowed (and cached), else the first one."""
    if len(candidates) < 2 or not _enabled:
        return candidates[0]
    tensors = (x, weight_r, bias_r, weight_t, bias_t, c0)
    grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    key = make_key(x, weight_r, bias_r, weight_t, bias_t, td_mask, act_r, act_t, merge, grad, all_states)
    by_name = {c.name: c for c in candidates}
    return by_name[_pick(key, list(by_name), x, lambda: _measure(
        candidates, (*tensors, td_mask), (act_r, act_t, merge), grad, all_states))]


def cbm_layer_auto(
    candidates: Sequence[Candidate],
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
    """The CBM layer on the candidate :func:`choose` picks, through its normal (autograd) path."""
    cand = choose(candidates, x, weight_r, bias_r, weight_t, bias_t, c0, td_mask, act_r, act_t, merge, all_states)
    return cand.layer(x, weight_r, bias_r, weight_t, bias_t, c0, td_mask=td_mask, act_r=act_r, act_t=act_t,
                      merge=merge, all_states=all_states)


def make_cell_key(cell: str, args: Sequence[Optional[torch.Tensor]], grad: bool,
                  options: Mapping[str, bool]) -> CellKey:
    """The cache key of one ConvLSTM / ConvGRU call; ``args`` are the layer's tensors, ``x`` first, ``options``
    its keywords."""
    x = args[0]
    return CellKey(
        cell=cell,
        device=x.device.index if x.device.index is not None else -1,
        dtype=x.dtype,
        shapes=tuple(None if t is None else tuple(t.shape) for t in args),
        grad=grad,
        all_states=None if grad else options.get("all_states"),
        tf32=_tf32_flags(x),
    )


def _measure_layers(candidates: Sequence[Tuple[str, Callable]], args: Sequence[Optional[torch.Tensor]],
                    options: Mapping[str, bool], grad: bool) -> Dict[str, float]:
    """Milliseconds per candidate layer called with ``options`` on detached copies of ``args`` (forward, plus
    backward with all-ones output gradients when ``grad``); a candidate that fails is left out, with a warning
    (rule: :func:`_time_candidate`)."""
    x = args[0]
    device = x.device if x.is_cuda else None
    times: Dict[str, float] = {}
    with torch.random.fork_rng(devices=[device.index] if device else []), \
            (torch.cuda.device(device) if device else contextlib.nullcontext()):
        # Leaves of their own: the caller's tensors and graph are never touched.
        leaves = tuple(None if t is None else t.detach().requires_grad_(grad and t.requires_grad) for t in args)
        for name, layer in candidates:
            def step(layer: Callable = layer) -> None:
                with torch.set_grad_enabled(grad):
                    outs = layer(*leaves, **options)
                    if grad:
                        outs = (outs,) if isinstance(outs, torch.Tensor) else tuple(outs)
                        torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])

            ms = _time_candidate(name, step)
            if ms is not None:
                times[name] = ms
    return times


def choose_layer(cell: str, candidates: Sequence[Tuple[str, Callable]],
                 args: Sequence[Optional[torch.Tensor]], options: Mapping[str, bool]) -> Callable:
    """The ``cell`` layer for this call (tensors ``args``, keywords ``options``) among ``(name, layer)``
    candidates: cached, else measured when allowed (and cached), else the first one."""
    if len(candidates) < 2 or not _enabled:
        return candidates[0][1]
    grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in args)
    by_name = dict(candidates)
    return by_name[_pick(make_cell_key(cell, args, grad, options), list(by_name), args[0],
                         lambda: _measure_layers(candidates, args, options, grad))]


def cell_layer_auto(cell: str, candidates: Sequence[Tuple[str, Callable]],
                    *args: Optional[torch.Tensor], **options: bool):
    """The ``cell`` layer (positional arguments of its ``*_layer_ref``, states materialized; ``options``: its
    keywords, ConvLSTM's ``all_states``) on the candidate :func:`choose_layer` picks, through its normal
    (autograd) path."""
    return choose_layer(cell, candidates, args, options)(*args, **options)
