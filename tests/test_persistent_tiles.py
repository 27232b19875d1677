"""The persistent CUDA recurrence kernels' tile code, emulated on the host (no GPU needed).

``csrc/cuda/persistent_tile.h`` holds all the block-level work of the persistent kernels (tile decomposition,
halo and zero padding, shared-memory layouts, thread-to-output maps, epilogues); the kernels in
``csrc/cuda/cbm_persistent_*.cu`` only add the grid-wide barrier and the WMMA instructions.
``tests/csrc/persistent_emulation.cpp`` runs that same code block by block with every thread index of a phase
in turn, and a plain 16 x 16 product in place of the tensor cores that enforces the WMMA pointer and
leading-dimension rules. Compared here with a float64 PyTorch recurrence (docs/design.md section 1) at the
tolerances of its section 5. What this cannot check (parallel timing, the real tensor-core instructions) is in tests/test_cuda.py.
"""
from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from helpers import assert_close_rel

ROOT = Path(__file__).resolve().parents[1]
DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.bfloat16: 3}  # cuda_kernels::DType
ERRORS = {1: "grid is not a multiple of the channel slices", 2: "a WMMA rule was broken",
          3: "shared memory overflow", 4: "unsupported dtype / product"}
KBN = 32  # persistent_tile.h kBN: output channels per block


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler to build the host emulation")
    lib = tmp_path_factory.mktemp("persistent") / "persistent_emulation.so"
    subprocess.run([cxx, "-O2", "-std=c++17", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC",
                    f"-I{ROOT / 'csrc' / 'cuda'}", str(ROOT / "tests" / "csrc" / "persistent_emulation.cpp"),
                    "-o", str(lib)], check=True, capture_output=True, text=True)
    so = ctypes.CDLL(str(lib))
    so.deeprnn_emulate_forward.argtypes = [ctypes.c_int] * 4 + [ctypes.c_void_p] * 3 + [ctypes.c_int64] + \
        [ctypes.c_void_p] * 5
    so.deeprnn_emulate_backward.argtypes = [ctypes.c_int] * 4 + [ctypes.c_void_p] * 9 + [ctypes.c_int64, ctypes.c_void_p]
    so.deeprnn_strided_layout.argtypes = [ctypes.c_void_p] * 3
    so.deeprnn_persistent_smem_bytes.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
    so.deeprnn_persistent_smem_bytes.restype = ctypes.c_int64
    return so


ACT_R = {"identity": 0, "relu": 1, "tanh": 2}
ACT_T = {"sigmoid": 0, "relu": 1}
MERGE = {"mul": 0, "add": 1}


def _dims(T, B, C, H, W, KS, act_r, act_t, merge):
    return (ctypes.c_int * 9)(T, B, C, H, W, KS, ACT_R[act_r], ACT_T[act_t], MERGE[merge])


def _ptr(t: torch.Tensor) -> int:
    return t.data_ptr()


def _reference(P_r, P_x, w_tc, c0, act_r, act_t, merge):
    """The recurrence in float64: (o, c, r), each (T, B, C, H, W)."""
    acts_r = {"identity": lambda z: z, "relu": torch.relu, "tanh": torch.tanh}
    acts_t = {"sigmoid": torch.sigmoid, "relu": torch.relu}
    c, os_, cs, rs = c0, [], [], []
    for t in range(P_r.shape[0]):
        c = acts_t[act_t](P_x[t] + F.conv2d(c, w_tc, padding=w_tc.shape[-1] // 2))
        r = acts_r[act_r](P_r[t])
        os_.append(r * c if merge == "mul" else r + c)
        cs.append(c)
        rs.append(r)
    return torch.stack(os_), torch.stack(cs), torch.stack(rs)


def _problem(T, B, C, H, W, KS, seed=0):
    g = torch.Generator().manual_seed(seed)
    P = torch.randn(T, B, 2 * C, H, W, generator=g, dtype=torch.float64)  # [P_r | P_x] per image, like the op
    w_tc = torch.randn(C, C, KS, KS, generator=g, dtype=torch.float64) * (C * KS * KS) ** -0.5 * 1.5
    c0 = torch.randn(B, C, H, W, generator=g, dtype=torch.float64) * 0.5
    return P, w_tc, c0


def _forward(emu, dtype, mma, grid_per_slice, T, B, C, H, W, KS, act_r, act_t, merge, reverse=False, seed=0):
    P64, w64, c064 = _problem(T, B, C, H, W, KS, seed)
    P, w_tc, c0 = P64.to(dtype), w64.to(dtype), c064.to(dtype)
    wp = w_tc.permute(2, 3, 1, 0).contiguous()  # [tap][C_in][C_out], as csrc/cuda/cbm_persistent_cuda.cpp packs
    r, c, o = (torch.full((T, B, C, H, W), float("nan"), dtype=dtype) for _ in range(3))
    grid = grid_per_slice * -(-C // KBN)
    rc = emu.deeprnn_emulate_forward(DTYPE_CODES[dtype], int(mma), grid, int(reverse),
                                     _dims(T, B, C, H, W, KS, act_r, act_t, merge), _ptr(P), _ptr(P[:, :, C:]),
                                     2 * C * H * W, _ptr(wp), _ptr(c0), _ptr(r), _ptr(c), _ptr(o))
    assert rc == 0, ERRORS.get(rc, rc)
    ref = _reference(P.double()[:, :, :C], P.double()[:, :, C:], w_tc.double(), c0.double(), act_r, act_t, merge)
    return (o, c, r), ref, (P, w_tc, c0)


COMBOS = [("relu", "sigmoid", "mul"), ("tanh", "relu", "add"), ("identity", "sigmoid", "add"),
          ("tanh", "sigmoid", "mul")]


@pytest.mark.parametrize("dtype,mma", [(torch.float64, False), (torch.float32, False), (torch.float32, True),
                                       (torch.bfloat16, False), (torch.bfloat16, True)])
@pytest.mark.parametrize("combo", COMBOS, ids="-".join)
def test_forward_matches_reference(emu, dtype, mma, combo):
    # C = 48: two channel slices (the second half empty), a ragged second chunk; 70 rows: two row tiles, the
    # second ragged; 5 x 7: halo on every side.
    (o, c, r), (o_ref, c_ref, r_ref), _ = _forward(emu, dtype, mma, 1, 3, 2, 48, 5, 7, 3, *combo)
    for got, ref, name in ((o, o_ref, "o"), (c, c_ref, "c"), (r, r_ref, "r")):
        assert_close_rel(got, ref, dtype, name)


@pytest.mark.parametrize("C,KS,grid_per_slice", [(8, 3, 1), (40, 1, 2), (64, 5, 3), (33, 3, 5), (96, 3, 1)])
def test_forward_shapes_and_grids(emu, C, KS, grid_per_slice):
    """Ragged channel counts, 1x1 to 5x5 kernels, blocks walking several tiles or idle (more blocks than tiles)."""
    (o, c, _), (o_ref, c_ref, _), _ = _forward(emu, torch.float64, False, grid_per_slice, 2, 3, C, 6, 4, KS,
                                               "relu", "sigmoid", "mul")
    assert_close_rel(o, o_ref, torch.float64, "o")
    assert_close_rel(c, c_ref, torch.float64, "c")


def test_block_order_does_not_matter(emu):
    """Blocks read only the previous step's state: running them in reverse gives the same bits."""
    fwd = _forward(emu, torch.float32, True, 2, 3, 2, 64, 9, 9, 3, "tanh", "sigmoid", "mul")[0]
    rev = _forward(emu, torch.float32, True, 2, 3, 2, 64, 9, 9, 3, "tanh", "sigmoid", "mul", reverse=True)[0]
    for a, b in zip(fwd, rev):
        assert torch.equal(a, b)


def test_mma_needs_whole_k_steps(emu):
    """C = 40 is not a multiple of 16: the WMMA rules fail, which is why the kernels take the FMA path there."""
    with pytest.raises(AssertionError, match="WMMA"):
        _forward(emu, torch.bfloat16, True, 1, 2, 1, 40, 4, 4, 3, "relu", "sigmoid", "mul")


def test_bad_grid_is_refused(emu):
    P, w, c0 = _problem(2, 1, 40, 4, 4, 3)
    out = torch.empty(2, 1, 40, 4, 4, dtype=torch.float64)
    rc = emu.deeprnn_emulate_forward(1, 0, 3, 0, _dims(2, 1, 40, 4, 4, 3, "relu", "sigmoid", "mul"), _ptr(P),
                                     _ptr(P[:, :, 40:]), 80 * 16, _ptr(w), _ptr(c0), _ptr(out), _ptr(out), _ptr(out))
    assert ERRORS[rc] == "grid is not a multiple of the channel slices"


def _backward(emu, dtype, mma, grid_per_slice, T, B, C, H, W, KS, act_r, act_t, merge, grad_kind="dense"):
    (o, c, r), _, (P, w_tc, c0) = _forward(emu, dtype, mma, 1, T, B, C, H, W, KS, act_r, act_t, merge)
    g = torch.Generator().manual_seed(7)
    grad_o = torch.randn(T, B, C, H, W, generator=g, dtype=torch.float64).to(dtype)
    grad_c = torch.randn(T, B, C, H, W, generator=g, dtype=torch.float64).to(dtype) * 0.3
    if grad_kind == "broadcast":  # what autograd hands over for an unused output: an expanded scalar
        grad_c = torch.zeros((), dtype=dtype).expand(T, B, C, H, W)
    if grad_kind == "strided":  # (B, T) storage seen as (T, B): non-contiguous steps, contiguous images
        grad_o = grad_o.transpose(0, 1).contiguous().transpose(0, 1)

    def strides(t):
        if all(s == 0 for s in t.stride()):
            return [0, 0, 0]
        assert t.stride()[2:] == (H * W, W, 1)
        return [t.stride(0), t.stride(1), 1]

    wp = w_tc.permute(2, 3, 0, 1).contiguous()  # [tap][C_out][C_in]: the transposed convolution
    dP = torch.full((T, B, 2 * C, H, W), float("nan"), dtype=dtype)  # [dP_r | dG] per image, like the op
    dc0 = torch.full((B, C, H, W), float("nan"), dtype=dtype)
    rc = emu.deeprnn_emulate_backward(DTYPE_CODES[dtype], int(mma), grid_per_slice * -(-C // KBN), 0,
                                      _dims(T, B, C, H, W, KS, act_r, act_t, merge), _ptr(grad_o), _ptr(grad_c),
                                      ctypes.cast((ctypes.c_int64 * 6)(*strides(grad_o), *strides(grad_c)),
                                                  ctypes.c_void_p),
                                      _ptr(r), _ptr(c), _ptr(wp), _ptr(dP[:, :, C:]), _ptr(dP), 2 * C * H * W,
                                      _ptr(dc0))
    assert rc == 0, ERRORS.get(rc, rc)

    # Reference: autograd through the float64 recurrence; dG_t is the gradient of P_x[t] (G_t = P_x[t] + ...).
    P64 = P.double().requires_grad_()
    c064 = c0.double().requires_grad_()
    o_ref, c_ref, _ = _reference(P64[:, :, :C], P64[:, :, C:], w_tc.double(), c064, act_r, act_t, merge)
    ((o_ref * grad_o.double()).sum() + (c_ref * grad_c.double()).sum()).backward()
    return dP, dc0, P64.grad, c064.grad


@pytest.mark.parametrize("dtype,mma", [(torch.float64, False), (torch.float32, False), (torch.float32, True),
                                       (torch.bfloat16, True)])
@pytest.mark.parametrize("combo", COMBOS, ids="-".join)
def test_backward_matches_autograd(emu, dtype, mma, combo):
    dP, dc0, dP_ref, dc0_ref = _backward(emu, dtype, mma, 2, 3, 2, 32, 5, 6, 3, *combo)
    C = 32
    assert_close_rel(dP[:, :, C:], dP_ref[:, :, C:], dtype, "dG")
    assert_close_rel(dP[:, :, :C], dP_ref[:, :, :C], dtype, "dP_r")
    assert_close_rel(dc0, dc0_ref, dtype, "dc0")


@pytest.mark.parametrize("grad_kind", ["broadcast", "strided"])
@pytest.mark.parametrize("C,KS", [(40, 3), (16, 5), (8, 1)])
def test_backward_shapes_and_gradient_layouts(emu, C, KS, grad_kind):
    dP, dc0, dP_ref, dc0_ref = _backward(emu, torch.float64, False, 1, 4, 2, C, 4, 5, KS, "relu", "sigmoid", "mul",
                                         grad_kind)
    assert_close_rel(dP, dP_ref, torch.float64, "dP")
    assert_close_rel(dc0, dc0_ref, torch.float64, "dc0")


def test_single_step_backward(emu):
    """T = 1: no recurrent gradient enters the only step; the final pass still gives dc0."""
    dP, dc0, dP_ref, dc0_ref = _backward(emu, torch.float64, False, 1, 1, 3, 24, 3, 3, 3, "tanh", "relu", "add")
    assert_close_rel(dP, dP_ref, torch.float64, "dP")
    assert_close_rel(dc0, dc0_ref, torch.float64, "dc0")


def test_shared_memory_budget(emu):
    """The layouts the GPU must hold (H100: 227 KiB per block): C = 128 at 3x3 fits in every dtype."""
    dims = _dims(16, 16, 128, 28, 28, 3, "relu", "sigmoid", "mul")
    budget = 227 * 1024
    assert emu.deeprnn_persistent_smem_bytes(4, 1, dims) <= budget  # float32 / TF32
    assert emu.deeprnn_persistent_smem_bytes(2, 1, dims) <= budget  # bf16 / fp16
    assert emu.deeprnn_persistent_smem_bytes(8, 0, _dims(16, 16, 64, 28, 28, 3, "relu", "sigmoid", "mul")) <= budget
    assert emu.deeprnn_persistent_smem_bytes(4, 0, _dims(16, 16, 512, 7, 7, 3, "relu", "sigmoid", "mul")) > budget


def _layout(emu, t: torch.Tensor):
    """persistent_tile.h strided_layout of t: (s_t, s_b, s_e), or None when the kernels need a copy."""
    sizes, strides, out = (ctypes.c_int64 * 5)(*t.shape), (ctypes.c_int64 * 5)(*t.stride()), (ctypes.c_int64 * 3)()
    ok = emu.deeprnn_strided_layout(ctypes.cast(sizes, ctypes.c_void_p), ctypes.cast(strides, ctypes.c_void_p),
                                    ctypes.cast(out, ctypes.c_void_p))
    return tuple(out) if ok else None


def _odd_size1_strides(shape, seed):
    """A contiguous tensor of `shape` whose size-1 dims carry arbitrary strides (torch still calls it contiguous)."""
    base = torch.arange(float(torch.Size(shape).numel()), dtype=torch.float64)
    strides = list(torch.empty(shape).stride())
    g = torch.Generator().manual_seed(seed)
    for d, n in enumerate(shape):
        if n == 1:
            strides[d] = int(torch.randint(2, 1000, (1,), generator=g))
    t = base.as_strided(shape, strides)
    assert t.is_contiguous()
    return t


@pytest.mark.parametrize("shape", [(3, 1, 4, 5, 6), (1, 2, 4, 1, 6), (2, 3, 1, 4, 1), (1, 1, 1, 1, 1), (2, 2, 3, 1, 1)])
def test_strided_layout_reads_every_contiguous_gradient(emu, shape):
    """The layout the backward kernels read a gradient with addresses exactly that gradient's elements, also when
    torch calls it contiguous although a size-1 dim has an odd stride (before, such a gradient was refused, then
    refused again after .contiguous(), which returns it unchanged: an empty optional was dereferenced)."""
    for g in (_odd_size1_strides(shape, 0), torch.randn(shape).transpose(0, 1).contiguous().transpose(0, 1)):
        layout = _layout(emu, g)
        assert layout is not None, (g.shape, g.stride())
        s_t, s_b, s_e = layout
        assert s_e == 1
        T, B = g.shape[:2]
        n = g[0, 0].numel()
        flat = g.as_strided((g.untyped_storage().nbytes() // g.element_size(),), (1,), 0)
        for t in range(T):
            for b in range(B):
                start = g.storage_offset() + t * s_t + b * s_b
                assert torch.equal(flat[start:start + n], g[t, b].flatten()), (t, b)


def test_strided_layout_refuses_or_broadcasts(emu):
    """Images that are not contiguous (C, H, W) blocks need a copy; an expanded scalar is read as one value."""
    assert _layout(emu, torch.randn(2, 3, 4, 5, 6).transpose(3, 4)) is None
    assert _layout(emu, torch.randn(2, 3, 4, 5, 6)[:, :, ::2]) is None
    assert _layout(emu, torch.randn(2, 3, 4, 1, 6).expand(2, 3, 4, 5, 6)) is None
    assert _layout(emu, torch.zeros(()).expand(2, 3, 4, 5, 6)) == (0, 0, 0)
    assert _layout(emu, torch.randn(1, 1, 4, 5, 6).expand(2, 3, 4, 5, 6)) == (0, 0, 1)
