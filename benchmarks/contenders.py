"""What a user would run instead of this library, and the convolutions no implementation can avoid (issue 27).

The plain functional loops (:data:`LOOPS`) are the per-step loops a user writes with ``F.conv2d`` when no module
fits: for CBM two convolutions per step (R on ``x_t``; T on ``cat[x_t, c_{t-1}]``), for ConvLSTM one over
``cat[x_t, h]`` (gates i, f, o, g), for ConvGRU one over ``cat[x_t, h]`` for z and r and one over
``cat[x_t, r * h]`` for n. ``torch.compile`` of the same functions is the strongest contender short of writing
kernels. ``benchmarks/test_contenders.py`` checks each loop against the library's reference layer (outputs and
every gradient), so a wrong contender cannot flatter the native op; :func:`compiled_first_call` checks the
compiled loop against the eager one at the measured shape before it is timed.

The floor (:func:`floor_parts`) is the time of the convolutions a layer cannot avoid, each timed alone with
``F.conv2d`` / ``aten.convolution_backward``: forward, the input projection of all ``T*B`` images in one call and
the ``T-1`` per-step recurrent convolutions (step 0's state is zero, so its recurrent convolution is skippable);
for training also the projection's input and weight gradients in one call, the ``T-1`` per-step input gradients of
the recurrent convolutions (sequential, like the forward) and their weight gradients in one call over all steps.
"""
from __future__ import annotations

import time
from typing import Callable, Dict, Sequence, Tuple

import torch
import torch.nn.functional as F

from benchmarks.cases import Shape, cell_contenders, loop_module, native_twin

FUNCTIONAL = "plain functional loop"
COMPILED = "torch.compile(loop)"
FLOOR = "floor: "  # prefix of the floor's parts in a contender table
FLOOR_PARTS = ("projection", "recurrent", "projection grads", "recurrent input grads", "recurrent weight grads")


def cbm_loop(x: torch.Tensor, weight_r: torch.Tensor, bias_r: torch.Tensor, weight_t: torch.Tensor,
             bias_t: torch.Tensor) -> torch.Tensor:
    """The benchmarked CBM layer (R = tanh, T = sigmoid, merge mul: the authors' choices) from ``c_0 = 0``:
    ``x (T, B, C_in, H, W)`` -> ``o (T, B, C, H, W)``."""
    p = weight_r.shape[-1] // 2
    c = x.new_zeros(x.shape[1], weight_r.shape[0], *x.shape[3:])
    outputs = []
    for t in range(x.shape[0]):
        r = torch.tanh(F.conv2d(x[t], weight_r, bias_r, padding=p))
        c = torch.sigmoid(F.conv2d(torch.cat([x[t], c], 1), weight_t, bias_t, padding=p))
        outputs.append(r * c)
    return torch.stack(outputs)


def convlstm_loop(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """ConvLSTM from zero states: ``x (T, B, C_in, H, W)`` -> ``h (T, B, C, H, W)``."""
    C = weight.shape[0] // 4
    h = c = x.new_zeros(x.shape[1], C, *x.shape[3:])
    hs = []
    for t in range(x.shape[0]):
        i, f, o, g = torch.split(F.conv2d(torch.cat([x[t], h], 1), weight, bias, padding=weight.shape[-1] // 2), C, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        hs.append(h)
    return torch.stack(hs)


def convgru_loop(x: torch.Tensor, weight_zr: torch.Tensor, bias_zr: torch.Tensor, weight_n: torch.Tensor,
                 bias_n: torch.Tensor) -> torch.Tensor:
    """ConvGRU from a zero state: ``x (T, B, C_in, H, W)`` -> ``h (T, B, C, H, W)``; ``weight_zr (2C, C_in + C)``
    and ``weight_n (C, C_in + C)`` convolve the concatenations (the library's ``weight_x`` and ``weight_h`` side by
    side, their biases summed)."""
    C, p = weight_n.shape[0], weight_n.shape[-1] // 2
    h = x.new_zeros(x.shape[1], C, *x.shape[3:])
    hs = []
    for t in range(x.shape[0]):
        z, r = torch.split(torch.sigmoid(F.conv2d(torch.cat([x[t], h], 1), weight_zr, bias_zr, padding=p)), C, 1)
        n = torch.tanh(F.conv2d(torch.cat([x[t], r * h], 1), weight_n, bias_n, padding=p))
        h = (1 - z) * n + z * h
        hs.append(h)
    return torch.stack(hs)


LOOPS: Dict[str, Callable[..., torch.Tensor]] = {"cbm": cbm_loop, "convlstm": convlstm_loop, "convgru": convgru_loop}


def loop_layout(cell: str, layer: torch.nn.Module) -> Tuple[torch.Tensor, ...]:
    """The loop's arguments after ``x`` computed from a library ``layer``'s parameters (differentiably: gradients
    of the loop reach the layer's parameters)."""
    if cell == "cbm":
        return layer.weight_r, layer.bias_r, layer.weight_t, layer.bias_t
    if cell == "convlstm":
        return layer.weight, layer.bias
    C = layer.weight_h.shape[1]
    return (torch.cat([layer.weight_x[:2 * C], layer.weight_h[:2 * C]], 1), layer.bias_x[:2 * C] + layer.bias_h[:2 * C],
            torch.cat([layer.weight_x[2 * C:], layer.weight_h[2 * C:]], 1), layer.bias_x[2 * C:] + layer.bias_h[2 * C:])


def loop_params(cell: str, module: torch.nn.Module) -> Tuple[torch.Tensor, ...]:
    """The loop's arguments after ``x`` for the one-layer ``module``: leaf tensors with gradients, as a user of the
    loop would own them (so the layout change is paid once here, not per call)."""
    return tuple(p.detach().clone().requires_grad_(True) for p in loop_layout(cell, module.layers[0]))


def loop_runner(fn: Callable[..., torch.Tensor], x: torch.Tensor, params: Sequence[torch.Tensor]
                ) -> Callable[[bool], torch.Tensor]:
    """``(train) -> output``: one forward of ``fn`` (under no_grad unless ``train``), and ``out.sum().backward()``
    when ``train``, as the other contenders of the tables run."""
    def run(train: bool) -> torch.Tensor:
        x.requires_grad_(train)
        with torch.set_grad_enabled(train):
            out = fn(x, *params)
            if train:
                out.sum().backward()
        return out

    return run


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got - want).norm() / want.norm()).item()


def compiled_first_call(compiled: Callable[[bool], torch.Tensor], eager: Callable[[bool], torch.Tensor],
                        x: torch.Tensor, params: Sequence[torch.Tensor], train: bool, tolerance: float = 1e-4) -> float:
    """Run ``compiled``'s first call for ``train`` (which compiles it) and return its seconds; raise
    ``AssertionError`` unless its output, and in training the gradients of ``x`` and ``params``, match the
    ``eager`` loop's within ``tolerance`` (relative, in norm: float32 over a whole sequence). Both runners must
    read ``x`` and ``params``; their ``.grad`` restart from None."""
    tensors = [x, *params] if train else []

    def call(fn: Callable[[bool], torch.Tensor]) -> Tuple[float, torch.Tensor, list]:
        for t in tensors:
            t.grad = None
        start = time.perf_counter()
        out = fn(train)
        return time.perf_counter() - start, out, [t.grad for t in tensors]

    seconds, got, got_grads = call(compiled)
    _, want, want_grads = call(eager)
    errors = {"output": _relative_error(got, want)}
    errors.update({f"grad of argument {i}": _relative_error(a, b)
                   for i, (a, b) in enumerate(zip(got_grads, want_grads))})
    bad = {k: e for k, e in errors.items() if not e <= tolerance}
    assert not bad, f"torch.compile(loop) differs from the eager loop (relative errors {bad})"
    return seconds


def row_contenders(cell: str, shape: Shape, train: bool, dtype: torch.dtype = torch.float32
                   ) -> Tuple[Dict[str, Callable[[bool], object]], float]:
    """One table row's contenders, all from the same weights: the per-step ``nn.Conv2d`` loop and the native
    module (:func:`benchmarks.cases.cell_contenders`), :data:`FUNCTIONAL`, :data:`COMPILED` (static shapes, a fresh
    compile per row) and the floor's parts; and the seconds of the compiled loop's first call (its compile plus one
    run), made and checked here so that the timed calls exclude it."""
    fns = dict(cell_contenders(cell, shape, dtype))
    torch.manual_seed(0)  # cell_contenders' seed: the same loop weights, hence the same layer
    library = native_twin(cell, loop_module(cell, shape).to(dtype=dtype), shape, backend="reference")
    params = loop_params(cell, library)
    x = torch.randn(shape.T, shape.B, shape.C_in, shape.H, shape.W, dtype=dtype)
    fns[FUNCTIONAL] = loop_runner(LOOPS[cell], x, params)
    fns[COMPILED] = loop_runner(torch.compile(LOOPS[cell], dynamic=False), x, params)
    compile_seconds = compiled_first_call(fns[COMPILED], fns[FUNCTIONAL], x, params, train)
    fns.update(floor_parts(cell, shape, train, dtype))
    return fns, compile_seconds


def floor_parts(cell: str, shape: Shape, train: bool, dtype: torch.dtype = torch.float32
                ) -> Dict[str, Callable[[bool], None]]:
    """Name (prefixed :data:`FLOOR`) -> callable timing one group of the layer's unavoidable convolutions (see the
    module docstring); the floor of a row is the sum of the groups' medians. Inference has only the forward
    groups. Operands are random: the convolutions' time does not depend on their values."""
    T, B, C_in, C, H, W, k = shape.T, shape.B, shape.C_in, shape.C, shape.H, shape.W, shape.k
    p = k // 2
    projected = {"cbm": 2 * C, "convlstm": 4 * C, "convgru": 3 * C}[cell]  # channels of the input projection
    recurrent = {"cbm": [C], "convlstm": [4 * C], "convgru": [2 * C, C]}[cell]  # per-step convolutions of the state
    steps = T - 1  # step 0's state is zero
    g = torch.Generator().manual_seed(0)

    def rand(*size: int) -> torch.Tensor:
        return torch.randn(*size, generator=g, dtype=dtype)

    x, w_in, b_in = rand(T * B, C_in, H, W), rand(projected, C_in, k, k), rand(projected)
    h = rand(B, C, H, W)
    w_rec = [rand(c_out, C, k, k) for c_out in recurrent]

    def backward(grad: torch.Tensor, inp: torch.Tensor, weight: torch.Tensor, mask) -> None:
        torch.ops.aten.convolution_backward(grad, inp, weight, None, [1, 1], [p, p], [1, 1], False, [0, 0], 1, mask)

    def projection(train: bool) -> None:
        F.conv2d(x, w_in, b_in, padding=p)

    def recurrent_convs(train: bool) -> None:
        for _ in range(steps):
            for w in w_rec:
                F.conv2d(h, w, padding=p)

    parts = {FLOOR + FLOOR_PARTS[0]: projection, FLOOR + FLOOR_PARTS[1]: recurrent_convs}
    if not train:
        return parts
    grad_in = rand(T * B, projected, H, W)
    grad_rec = [rand(B, c_out, H, W) for c_out in recurrent]
    h_all, grad_rec_all = rand(steps * B, C, H, W), [rand(steps * B, c_out, H, W) for c_out in recurrent]

    def projection_grads(train: bool) -> None:
        backward(grad_in, x, w_in, [True, True, False])

    def recurrent_input_grads(train: bool) -> None:
        for _ in range(steps):
            for grad, w in zip(grad_rec, w_rec):
                backward(grad, h, w, [True, False, False])

    def recurrent_weight_grads(train: bool) -> None:
        for grad, w in zip(grad_rec_all, w_rec):
            backward(grad, h_all, w, [False, True, False])

    parts.update(zip([FLOOR + name for name in FLOOR_PARTS[2:]],
                     [projection_grads, recurrent_input_grads, recurrent_weight_grads]))
    return parts
