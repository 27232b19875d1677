"""The CUDA path on CPU tensors: the CUDA step tables (csrc/step_tables.h) with the CUDA kernels' bodies
(csrc/cuda/epilogue_bodies.h) run by the host executor (csrc/cpu/cuda_emulation.cpp).

Two levels. Each step epilogue on tensors made here, in every dtype the kernels store (float16 and bfloat16 as
16-bit words, computed in float32), every CBM activation and merge, and the layouts that steer the kernels: B = 1,
an odd inner size, channel slices of a wider buffer, an offset that is not 16-byte aligned, broadcast gradients;
the independent side is docs/design.md's equations, in float64 on the same (rounded) inputs. Then whole ops
in the CUDA tables' configuration (one projection chunk, the whole-sequence hooks) against the reference layer,
where the driver's CUDA-only decisions live (the inference's final-state contract). The op-contract fuzz, the
final-state tests and the layout tests run the same configuration too (``helpers.cuda_emulation``).
NEVER RUN ON A GPU: what this cannot check (the launch itself, races, the real half intrinsics) is
tests/test_cuda.py's and tests/test_cuda_cells.py's, on a GPU.
"""
from __future__ import annotations

import itertools
from typing import Callable, Dict, List, Sequence

import pytest
import torch

from cell_helpers import make_cell_inputs
from deeprnn_cuda import _native, cbm_layer, convgru_layer, convlstm_layer
from helpers import TOLERANCES, assert_close_rel, cuda_emulation, make_inputs

pytestmark = pytest.mark.skipif(not _native.is_available(), reason="native extension not built")

DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
ACT_R = {"identity": (0, lambda z: z, lambda r: torch.ones_like(r)), "relu": (1, torch.relu, lambda r: (r > 0).to(r)),
         "tanh": (2, torch.tanh, lambda r: 1 - r * r)}
ACT_T = {"sigmoid": (0, torch.sigmoid, lambda c: c * (1 - c)), "relu": (1, torch.relu, lambda c: (c > 0).to(c))}
MERGES = {"mul": 0, "add": 1}
#: name -> (B, C, H, W, how operands are laid out); see _operand. 2*4*4 and 4*4*4 inner sizes are whole packs for
#: every dtype (VEC = 2, 4 or 8 elements), 3*5*7 is a whole pack for none.
LAYOUTS = {"contiguous": (2, 4, 4, 4, "plain"), "batch-of-one": (1, 4, 4, 4, "plain"),
           "odd-inner": (2, 3, 5, 7, "plain"), "channel-slices": (3, 2, 4, 4, "slice"),
           "unaligned": (2, 4, 4, 4, "offset")}
VECTOR_LAYOUTS = {"contiguous", "batch-of-one", "channel-slices"}


def _counts() -> Dict[str, int]:
    names = ("vector", "scalar", "cell", "forward_sequences", "backward_sequences")
    return dict(zip(names, torch.ops.deeprnn._cuda_emulation_counts()))


def _operand(shape, dtype, how: str, g: torch.Generator, positive: bool = False) -> torch.Tensor:
    """A (B, C, H, W) operand with fresh values: contiguous, a channel slice of a (B, 3C, H, W) buffer (batch stride
    3 * inner), or a contiguous view one element into its storage (every pointer off 16-byte alignment)."""
    B, C, H, W = shape
    values = torch.randn(B, 3 * C if how == "slice" else C, H, W, generator=g, dtype=torch.float64)
    values = values.abs() + 0.05 if positive else values
    if how == "slice":
        return values.to(dtype)[:, C:2 * C]
    if how == "offset":
        flat = torch.empty(values.numel() + 1, dtype=dtype)
        flat[1:] = values.flatten().to(dtype)
        return flat[1:].view(B, C, H, W)
    return values.to(dtype)


def _outputs(shape, dtype, how: str, n: int) -> List[torch.Tensor]:
    """n outputs laid out like the inputs, filled with NaN so an element the kernel skips cannot pass."""
    g = torch.Generator().manual_seed(99)
    return [_operand(shape, dtype, how, g).fill_(float("nan")) for _ in range(n)]


def _check(got: Sequence[torch.Tensor], want: Sequence[torch.Tensor], dtype, what: str) -> None:
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        assert_close_rel(a.double(), b, dtype, f"{what}: output {i}")


def _f64(ts: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """The operands as the kernel reads them (rounded to their dtype), in float64."""
    return [t.double() for t in ts]


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cbm_epilogues(dtype, layout):
    """CBM forward and backward epilogues (docs/design.md section 1) for every activation pair and merge; the
    layouts that allow 16-byte packs take the vector path, the others the scalar one."""
    B, C, H, W, how = LAYOUTS[layout]
    shape = (B, C, H, W)
    g = torch.Generator().manual_seed(hash(layout) % 1000)
    for (ar, (ar_code, ar_fn, ar_grad)), (at, (at_code, at_fn, at_grad)), (merge, m_code) in itertools.product(
            ACT_R.items(), ACT_T.items(), MERGES.items()):
        what = f"{ar}/{at}/{merge}"
        p_r, p_x, rec = (_operand(shape, dtype, how, g) for _ in range(3))
        outs = _outputs(shape, dtype, how, 3)
        _counts()
        torch.ops.deeprnn._cuda_emulation_step("cbm_forward", outs, [p_r, p_x, rec], [ar_code, at_code, m_code])
        assert _counts()["vector" if layout in VECTOR_LAYOUTS else "scalar"] == 1, what
        pr, px, rc = _f64([p_r, p_x, rec])
        r, c = ar_fn(pr), at_fn(px + rc)
        _check(outs, [r, c, r * c if merge == "mul" else r + c], dtype, f"forward {what}")

        grad_o, grad_c, rec, r_in = (_operand(shape, dtype, how, g) for _ in range(4))
        c_in = _operand(shape, dtype, how, g, positive=True)
        for with_rec in (True, False):  # no rec at the last step
            outs = _outputs(shape, dtype, how, 2)
            torch.ops.deeprnn._cuda_emulation_step("cbm_backward", outs,
                                                   [grad_o, grad_c, rec if with_rec else None, r_in, c_in],
                                                   [ar_code, at_code, m_code])
            go, gc, rc, rv, cv = _f64([grad_o, grad_c, rec, r_in, c_in])
            dc = gc + (go * rv if merge == "mul" else go) + (rc if with_rec else 0)
            dP_r = (go * cv if merge == "mul" else go) * ar_grad(rv)
            _check(outs, [dc * at_grad(cv), dP_r], dtype, f"backward {what} rec={with_rec}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cbm_epilogues_with_mixed_layouts(dtype):
    """Each operand with its own batch stride (as in the driver, where r may be written over a projection slice while
    c and o are whole tensors): every pointer and stride is read from its own operand."""
    g = torch.Generator().manual_seed(5)
    shape = (3, 2, 4, 4)
    p_r, p_x, rec = (_operand(shape, dtype, how, g) for how in ("slice", "plain", "slice"))
    outs = [_outputs(shape, dtype, how, 1)[0] for how in ("plain", "plain", "slice")]  # r, c, o
    _counts()
    torch.ops.deeprnn._cuda_emulation_step("cbm_forward", outs, [p_r, p_x, rec], [2, 0, 0])
    assert _counts()["vector"] == 1
    pr, px, rc = _f64([p_r, p_x, rec])
    r, c = torch.tanh(pr), torch.sigmoid(px + rc)
    _check(outs, [r, c, r * c], dtype, "forward")
    grad_o, grad_c, r_in = (_operand(shape, dtype, how, g) for how in ("slice", "plain", "slice"))
    c_in = _operand(shape, dtype, "plain", g, positive=True)
    outs = [_outputs(shape, dtype, how, 1)[0] for how in ("plain", "slice")]
    torch.ops.deeprnn._cuda_emulation_step("cbm_backward", outs, [grad_o, grad_c, rec, r_in, c_in], [2, 0, 0])
    go, gc, rv, cv = _f64([grad_o, grad_c, r_in, c_in])
    dc = gc + go * rv + rc
    _check(outs, [dc * cv * (1 - cv), go * cv * (1 - rv * rv)], dtype, "backward")


@pytest.mark.parametrize("misaligned", range(13), ids=lambda k: f"operand{k}")
def test_vector_path_needs_every_pointer_aligned(misaligned):
    """One operand 4 bytes off 16-byte alignment, the others aligned: the kernel must take the scalar path (a 16-byte
    load from that pointer faults on a GPU; on the host it would go unnoticed, so the decision is what is checked)."""
    g = torch.Generator().manual_seed(misaligned)
    shape = (2, 4, 4, 4)
    step, k = ("cbm_forward", misaligned) if misaligned < 6 else ("cbm_backward", misaligned - 6)
    n_out = 3 if step == "cbm_forward" else 2
    layouts = ["offset" if i == k else "plain" for i in range(n_out + (3 if step == "cbm_forward" else 5))]
    outs = [_outputs(shape, torch.float32, how, 1)[0] for how in layouts[:n_out]]
    ins = [_operand(shape, torch.float32, how, g, positive=True) for how in layouts[n_out:]]
    _counts()
    torch.ops.deeprnn._cuda_emulation_step(step, outs, ins, [1, 0, 0])
    counts = _counts()
    assert (counts["scalar"], counts["vector"]) == (1, 0), f"{step}: operand {k} misaligned"
    assert all(torch.isfinite(o).all() for o in outs), "an element was not written"


def test_cbm_backward_reads_broadcast_gradients():
    """A broadcast zero gradient (what autograd hands over for an unused output) is copied, not indexed with a
    zero batch stride as if it were whole."""
    g = torch.Generator().manual_seed(1)
    shape = (2, 4, 4, 4)
    grad_o = _operand(shape, torch.float32, "plain", g)
    grad_c = torch.zeros((), dtype=torch.float32).expand(shape)
    r_in, c_in = _operand(shape, torch.float32, "plain", g), _operand(shape, torch.float32, "plain", g, True)
    outs = _outputs(shape, torch.float32, "plain", 2)
    torch.ops.deeprnn._cuda_emulation_step("cbm_backward", outs, [grad_o, grad_c, None, r_in, c_in], [1, 0, 0])
    go, rv, cv = _f64([grad_o, r_in, c_in])
    _check(outs, [go * rv * cv * (1 - cv), go * cv * (rv > 0).double()], torch.float32, "broadcast grad_c")


def _sig(z):
    return torch.sigmoid(z)


def _lstm_forward(p, rec, c_prev):
    a = p + rec
    C = c_prev.shape[1]
    i, f, o, gg = _sig(a[:, :C]), _sig(a[:, C:2 * C]), _sig(a[:, 2 * C:3 * C]), torch.tanh(a[:, 3 * C:])
    c = f * c_prev + i * gg
    return torch.cat([i, f, o, gg], 1), c, o * torch.tanh(c)


def _lstm_backward(grad_h, grad_c, dh_next, dc_next, gates, c, c_prev):
    C = c.shape[1]
    i, f, o, gg = (gates[:, k * C:(k + 1) * C] for k in range(4))
    tc = torch.tanh(c)
    dh = grad_h + dh_next
    dc = grad_c + dc_next + dh * o * (1 - tc * tc)
    dA = torch.cat([dc * gg * i * (1 - i), dc * c_prev * f * (1 - f), dh * tc * o * (1 - o), dc * i * (1 - gg * gg)], 1)
    return dA, dc * f


def _gate_operand(shape, k, dtype, how, g, positive=False):
    """A (B, kC, H, W) operand (gates, projections), laid out as _operand does for (B, C, H, W)."""
    B, C, H, W = shape
    return _operand((B, k * C, H, W), dtype, how, g, positive)


CELL_STEPS: Dict[str, Callable] = {}


def _cell_step(name):
    def register(fn):
        CELL_STEPS[name] = fn
        return fn
    return register


@_cell_step("lstm_forward")
def _lstm_forward_case(shape, dtype, how, g):
    p, rec = _gate_operand(shape, 4, dtype, how, g), _gate_operand(shape, 4, dtype, how, g)
    c_prev = _operand(shape, dtype, how, g)
    B, C, H, W = shape
    outs = [_outputs((B, 4 * C, H, W), dtype, how, 1)[0]] + _outputs(shape, dtype, how, 2)
    return outs, [p, rec, c_prev], _lstm_forward(*_f64([p, rec, c_prev]))


@_cell_step("lstm_forward_inference")
def _lstm_inference_case(shape, dtype, how, g):
    outs, ins, (_, c, h) = _lstm_forward_case(shape, dtype, how, g)
    return outs[1:], ins, (c, h)


@_cell_step("lstm_backward")
def _lstm_backward_case(shape, dtype, how, g):
    grad_h, grad_c, dh_next, c, c_prev = (_operand(shape, dtype, how, g) for _ in range(5))
    gates = _gate_operand(shape, 4, dtype, how, g, positive=True).clamp(max=0.95)
    B, C, H, W = shape
    dc = _operand(shape, dtype, how, g)  # dc_next in, dc_prev out
    want = _lstm_backward(*_f64([grad_h, grad_c, dh_next, dc, gates, c, c_prev]))
    outs = [_outputs((B, 4 * C, H, W), dtype, how, 1)[0], dc]
    return outs, [grad_h, grad_c, dh_next, gates, c, c_prev], want


@_cell_step("gru_forward")
def _gru_forward_case(shape, dtype, how, g):
    """forward_zr then forward_n on the same gates buffer, as the driver runs them (v made up: the convolution
    between them is the driver's)."""
    p, u = _gate_operand(shape, 3, dtype, how, g), _gate_operand(shape, 2, dtype, how, g)
    h_prev, v = _operand(shape, dtype, how, g), _operand(shape, dtype, how, g)
    B, C, H, W = shape
    gates = _outputs((B, 3 * C, H, W), dtype, how, 1)[0]
    rh, h = _outputs(shape, dtype, how, 2)
    torch.ops.deeprnn._cuda_emulation_step("gru_forward_zr", [gates, rh], [p, u, h_prev], [])
    pp, uu, hp, vv = _f64([p, u, h_prev, v])
    z, r = _sig(pp[:, :C] + uu[:, :C]), _sig(pp[:, C:2 * C] + uu[:, C:])
    # forward_n reads z as stored (rounded), like the kernel
    n = torch.tanh(pp[:, 2 * C:] + vv)
    zs = gates[:, :C].double()
    return [gates, h], [p, v, h_prev], (torch.cat([z, r, n], 1), n + zs * (hp - n)), ("gru_forward_zr", rh, r * hp)


@_cell_step("gru_backward")
def _gru_backward_case(shape, dtype, how, g):
    """backward_zn then backward_r on the same dA and dh_acc, as the driver runs them."""
    grad_h, rec_next, h_prev, d_rh = (_operand(shape, dtype, how, g) for _ in range(4))
    gates = _gate_operand(shape, 3, dtype, how, g, positive=True).clamp(max=0.95)
    dh_acc = _operand(shape, dtype, how, g)  # dh_next in
    B, C, H, W = shape
    dA = _outputs((B, 3 * C, H, W), dtype, how, 1)[0]
    gh, rn, hp, drh, gt, dh_next = _f64([grad_h, rec_next, h_prev, d_rh, gates, dh_acc])
    z, r, n = gt[:, :C], gt[:, C:2 * C], gt[:, 2 * C:]
    dh = gh + dh_next + rn
    torch.ops.deeprnn._cuda_emulation_step("gru_backward_zn", [dA, dh_acc], [grad_h, rec_next, gates, h_prev], [])
    acc = dh_acc.double()  # dh * z, as stored
    want = (torch.cat([dh * (hp - n) * z * (1 - z), drh * hp * r * (1 - r), dh * (1 - z) * (1 - n * n)], 1),
            acc + drh * r)
    return [dA, dh_acc], [d_rh, gates, h_prev], want, ("gru_backward_zn", dh_acc.clone(), dh * z)


STEP_OPS = {"lstm_forward": "lstm_forward", "lstm_forward_inference": "lstm_forward", "lstm_backward": "lstm_backward",
            "gru_forward": "gru_forward_n", "gru_backward": "gru_backward_r"}


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("step", list(CELL_STEPS))
def test_cell_epilogues(step, dtype, layout):
    """Every ConvLSTM and ConvGRU epilogue (docs/design.md section 7) through the CUDA table's gate slicing and the
    kernel body, against the equations in float64."""
    B, C, H, W, how = LAYOUTS[layout]
    g = torch.Generator().manual_seed(7)
    case = CELL_STEPS[step]((B, C, H, W), dtype, how, g)
    outs, ins, want = case[:3]
    if len(case) == 4:  # the first of two epilogues ran inside the case: check its own output too
        first, got, expected = case[3]
        assert_close_rel(got.double(), expected, dtype, f"{first}: its own output")
    ins_before = [t.clone() for t in ins]
    torch.ops.deeprnn._cuda_emulation_step(STEP_OPS[step], outs, ins, [])
    _check(outs, want, dtype, step)
    for i, (a, b) in enumerate(zip(ins, ins_before)):
        assert torch.equal(a, b), f"{step}: input {i} was written"


def test_lstm_inference_stores_no_gates():
    """The inference forward (no gates kept) writes only c and h: the projection it reads stays as it was (the CUDA
    table once wrote the four gates over it)."""
    g = torch.Generator().manual_seed(3)
    shape = (2, 4, 4, 4)
    outs, ins, _ = _lstm_inference_case(shape, torch.float32, "plain", g)
    p_before = ins[0].clone()
    torch.ops.deeprnn._cuda_emulation_step("lstm_forward", outs, ins, [])
    assert torch.equal(ins[0], p_before)


# ---------------------------------------------------------------------------------------------------------------
# Whole ops in the CUDA configuration.

@pytest.mark.parametrize("T", [1, 4])
def test_cbm_inference_without_all_states_keeps_the_final_state(T):
    """The CUDA table has a whole-sequence hook and one chunk for all T steps; an inference that returns the final
    state alone must not take that hook (it writes every state): c is (1, B, C, H, W), two states are allocated,
    and the values are the reference's. With all states, or with gradients, the hook runs."""
    a = make_inputs(T, 2, 3, 4, 5, 6, seed=T)
    with torch.no_grad():
        o_ref, c_ref = cbm_layer(**a, backend="reference")
        with cuda_emulation():
            _counts()
            o, c = cbm_layer(**a, backend="native", all_states=False)
            counts = _counts()
            _, c_all = cbm_layer(**a, backend="native", all_states=True)
            counts_all = _counts()
    assert c.shape == (1,) + tuple(c_ref.shape[1:])
    assert c.untyped_storage().nbytes() <= 2 * c[0].numel() * c.element_size(), "more than two states allocated"
    assert counts["forward_sequences"] == 0 and counts["vector"] + counts["scalar"] == T
    assert counts_all["forward_sequences"] == 1 and c_all.shape == c_ref.shape
    assert_close_rel(o, o_ref, torch.float64, "output")
    assert_close_rel(c, c_ref[-1:], torch.float64, "final state")
    with cuda_emulation():
        o, c = cbm_layer(**a, backend="native")
        torch.autograd.grad((o * o).sum() + c.sum(), [a["x"]])
        counts = _counts()
    assert counts["forward_sequences"] == 1 and counts["backward_sequences"] == 1


#: The forward ops called directly (they carry autograd), so float16 CPU tensors reach the emulated CUDA tables; the
#: public layers keep CPU tensors to the CPU dtypes. Each returns the differentiable outputs.
#: Temporal Dropout masks for CBM (T = 3, B = 2): one coin per node, one per sample.
TD_MASKS = {"td-node": torch.tensor([True, False, True]),
            "td-sample": torch.tensor([[True, False], [False, False], [False, True]])}
FORWARD_OPS = {
    "cbm": lambda a, td: torch.ops.deeprnn.cbm_forward(a["x"], a["weight_r"], a["bias_r"], a["weight_t"],
                                                       a["bias_t"], a["c0"], td, 2, 0, 0)[:2],
    "convlstm": lambda a, td: torch.ops.deeprnn.convlstm_forward(a["x"], a["weight"], a["bias"], a["h0"],
                                                                 a["c0"])[:2],
    "convgru": lambda a, td: torch.ops.deeprnn.convgru_forward(a["x"], a["weight_x"], a["bias_x"], a["weight_h"],
                                                               a["bias_h"], a["h0"])[:1],
}
REFERENCE_LAYERS = {
    "cbm": lambda a, td: list(cbm_layer(**a, td_mask=td, act_r="tanh", backend="reference")),
    "convlstm": lambda a, td: list(convlstm_layer(**a, backend="reference")),
    "convgru": lambda a, td: [convgru_layer(**a, backend="reference")],
}
CASES = [("cbm", "td-node"), ("cbm", "td-sample"), ("convlstm", None), ("convgru", None)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cell,td", CASES, ids=[c if t is None else f"{c}-{t}" for c, t in CASES])
def test_layers_in_the_cuda_configuration(cell, td, dtype):
    """Forward and backward of every cell (CBM with Temporal Dropout per node and per sample) with the CUDA tables on
    the host, against the float64 reference at the dtype's tolerance."""
    mask = TD_MASKS.get(td)
    T, B, C_in, C, H, W = 3, 2, 3, 4, 5, 6
    base = make_inputs(T, B, C_in, C, H, W, seed=4) if cell == "cbm" else make_cell_inputs(cell, T, B, C_in, C, H, W,
                                                                                            seed=4)

    def with_grads(outs, inputs):
        g = torch.Generator().manual_seed(8)
        loss = sum((o.double() * torch.randn(o.shape, generator=g, dtype=torch.float64)).sum() for o in outs)
        return list(outs) + list(torch.autograd.grad(loss, [v for v in inputs.values() if v is not None]))

    want = with_grads(REFERENCE_LAYERS[cell](base, mask), base)
    low = {k: (v.detach().to(dtype).requires_grad_() if v is not None else None) for k, v in base.items()}
    with cuda_emulation():
        _counts()
        got = with_grads(FORWARD_OPS[cell](low, mask), low)
        counts = _counts()
    assert counts["vector"] + counts["scalar"] + counts["cell"] > 0, "the host executor did not run"
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        assert_close_rel(a.double(), b, dtype, f"{cell} result {i}")


def test_tolerances_cover_every_dtype():
    assert set(DTYPES) <= set(TOLERANCES)
