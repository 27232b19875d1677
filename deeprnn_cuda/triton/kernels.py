"""Triton kernels for the CBM recurrence (docs/design.md section 1), forward and backward.

Layout: every activation tensor is NCHW-contiguous, one "image" per (t, b), ``C * H * W`` elements.
A tile is ``BLOCK_M`` rows ((image, pixel) pairs, pixel = ``h * W + w``) by ``BLOCK_N`` channels.

The recurrent ``C -> C`` convolution is an implicit GEMM inside the kernel that also runs the epilogue:
for every tap ``(kh, kw)`` and every ``BLOCK_K`` chunk of input channels, the shifted, zero-padded
(masked) state tile ``A[m, k]`` is multiplied by the tap's weight slice ``Wp[kh, kw, k, n]`` with
``tl.dot`` into a float32 accumulator. The epilogue then adds the precomputed input projection, applies
the activations and the merge, and writes only the results: no intermediate goes to memory.

* forward, ``SIGN = +1``, ``Wp[kh, kw, ci, co] = W_tc[co, ci, kh, kw]``::

      G = P_x[t] + conv(c_{t-1}, W_tc);  c_t = act_t(G);  r_t = act_r(P_r[t]);  o_t = merge(r_t, c_t)

* backward, ``SIGN = -1`` (the transposed convolution is a correlation with the flipped kernel),
  ``Wp[kh, kw, co, ci] = W_tc[co, ci, kh, kw]``::

      dc = dO_t * dmerge/dc + dC_t + convT(dG_{t+1}, W_tc)
      dG_t = dc * act_t'(.)  (from c_t)      dP_r[t] = dO_t * dmerge/dr * act_r'(.)  (from r_t)

  and one last pass ``dc_0 = convT(dG_0, W_tc)``.

Two launch strategies share the tile code:

* single-step (``*_step_kernel``): one launch per time step, grid ``(row tiles, channel tiles)``: the GEMM's
  rows are the ``B * H * W`` (image, pixel) pairs of the step, so small images still fill the tiles.
* multi-step (``*_seq_kernel``): one launch for the whole sequence, grid ``(B,)``: each program owns one
  batch element's whole state image (all channels, all pixels) and loops over ``t`` itself, walking the
  image's tiles and closing every step with a CTA barrier (``tl.debug_barrier``) so the state it just
  wrote is visible to the whole program before the next step reads shifted neighbours. Used for small
  images, where a step is too little work to amortize a kernel launch (see :func:`use_multistep`).
"""
from __future__ import annotations

import os
from typing import Callable, Optional

import torch
import triton
import triton.language as tl

try:  # triton >= 3.3
    INTERPRET = bool(triton.knobs.runtime.interpret)
except AttributeError:  # pragma: no cover - older triton
    INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


# ----------------------------------------------------------------------------------------------
# device helpers
# ----------------------------------------------------------------------------------------------


@triton.jit
def _tanh(x):
    # no libdevice under the interpreter
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def _gates_conv(acc0, acc1, acc2, acc3, src, row_off, pix_m, m_ok, w, offs_n, K, N, LD, H, W,
                NG: tl.constexpr, KS: tl.constexpr, SIGN: tl.constexpr, BLOCK_K: tl.constexpr,
                PREC: tl.constexpr, CACHE: tl.constexpr):
    """Implicit GEMM for ``NG`` gates at once: ``acc_g[m, n] += sum_{tap, k} src[row_off[m] + k*H*W +
    shift(pix_m[m], tap)] * w[tap, k, g*N + n]`` (``w`` is ``[KS, KS, K, LD]``), the state tile loaded once
    and shared by the gates; ``shift`` moves by ``SIGN * (tap - KS // 2)``, out-of-image taps read zero."""
    HW = H * W
    oh = pix_m // W
    ow = pix_m - oh * W
    n_ok = offs_n < N
    offs_k = tl.arange(0, BLOCK_K)
    for kh in tl.static_range(KS):
        ih = oh + SIGN * (kh - KS // 2)
        h_ok = m_ok & (ih >= 0) & (ih < H)
        for kw in tl.static_range(KS):
            iw = ow + SIGN * (kw - KS // 2)
            ok = h_ok & (iw >= 0) & (iw < W)
            a_rows = src + row_off + (ih * W + iw)
            w_tap = w + ((kh * KS + kw) * K).to(tl.int64) * LD
            for k0 in range(0, K, BLOCK_K):
                kk = k0 + offs_k
                k_ok = kk < K
                # int64: a 4C-channel image passes 2**31 elements once C*H*W > 2**29 (a weight: once 4C*C > 2**31)
                kk64 = kk.to(tl.int64)
                a = tl.load(a_rows[:, None] + kk64[None, :] * HW, mask=ok[:, None] & k_ok[None, :], other=0.0,
                            cache_modifier=CACHE)
                w_k = w_tap + kk64[:, None] * LD + offs_n[None, :]
                w_ok = k_ok[:, None] & n_ok[None, :]
                b = tl.load(w_k, mask=w_ok, other=0.0)
                a = a.to(b.dtype)
                acc0 = tl.dot(a, b, acc0, input_precision=PREC)
                if NG > 1:
                    acc1 = tl.dot(a, tl.load(w_k + N, mask=w_ok, other=0.0), acc1, input_precision=PREC)
                if NG > 2:
                    acc2 = tl.dot(a, tl.load(w_k + 2 * N, mask=w_ok, other=0.0), acc2, input_precision=PREC)
                if NG > 3:
                    acc3 = tl.dot(a, tl.load(w_k + 3 * N, mask=w_ok, other=0.0), acc3, input_precision=PREC)
    return acc0, acc1, acc2, acc3


@triton.jit
def _conv_tile(acc, src, row_off, pix_m, m_ok, w, offs_n, C, H, W,
               KS: tl.constexpr, SIGN: tl.constexpr, BLOCK_K: tl.constexpr,
               PREC: tl.constexpr, CACHE: tl.constexpr):
    """Implicit GEMM: ``acc[m, n] += sum_{tap, k} src[row_off[m] + k * H * W + shift(pix_m[m], tap)] * w[tap, k, n]``
    for a C -> C kernel (``_gates_conv`` with one gate)."""
    acc, _, _, _ = _gates_conv(acc, acc, acc, acc, src, row_off, pix_m, m_ok, w, offs_n, C, C, C, H, W,
                               1, KS, SIGN, BLOCK_K, PREC, CACHE)
    return acc


@triton.jit
def _rows(pid_m, b0, NB, H, W, BLOCK_M: tl.constexpr):
    """Tile rows: BLOCK_M (image, pixel) pairs taken from the NB images b0 .. b0 + NB - 1 of one step
    (single-step: all B images flattened, so small images fill the tile; multi-step: one image)."""
    HW = H * W
    offs = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = offs < NB * HW
    b_row = offs // HW
    pix = offs - b_row * HW
    return b0 + b_row, pix, m_ok


@triton.jit
def _offsets(C, H, W, offs_n, pix):
    """``(CHW, loc)``: the elements of a C-channel image and the offsets of the tile's (pixel, channel)
    elements in it, both int64: the channel offsets of a 3C- or 4C-channel image pass 2**31 before ``C*H*W``
    does (per-image bases are int64 too)."""
    HW = H * W
    return C.to(tl.int64) * HW, offs_n.to(tl.int64)[None, :] * HW + pix[:, None]


@triton.jit
def _fwd_tile(t, b0, NB, pid_m, pid_n, B, C, H, W,
              c0, pr, px, stride_pr, stride_px, wf, c_out, o_out, r_out,
              KS: tl.constexpr, ACT_R: tl.constexpr, ACT_T: tl.constexpr, MERGE: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
              PREC: tl.constexpr, CACHE: tl.constexpr):
    b_row, pix, m_ok = _rows(pid_m, b0, NB, H, W, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    CHW, loc = _offsets(C, H, W, offs_n, pix)
    img = (t * B + b_row).to(tl.int64)  # (t, b) image index of every row
    if t == 0:
        src = c0
        row_off = b_row.to(tl.int64) * CHW
    else:
        src = c_out
        row_off = (img - B) * CHW
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc = _conv_tile(acc, src, row_off, pix, m_ok, wf, offs_n, C, H, W, KS, 1, BLOCK_K, PREC, CACHE)

    mask = m_ok[:, None] & (offs_n < C)[None, :]
    g = acc + tl.load(px + (img * stride_px)[:, None] + loc, mask=mask, other=0.0).to(tl.float32)
    p = tl.load(pr + (img * stride_pr)[:, None] + loc, mask=mask, other=0.0).to(tl.float32)
    if ACT_T == 0:
        c = tl.sigmoid(g)
    else:
        c = tl.maximum(g, 0.0)
    if ACT_R == 0:
        r = p
    elif ACT_R == 1:
        r = tl.maximum(p, 0.0)
    else:
        r = _tanh(p)
    if MERGE == 0:
        o = r * c
    else:
        o = r + c
    out = (img * CHW)[:, None] + loc
    tl.store(c_out + out, c.to(c_out.dtype.element_ty), mask=mask)
    tl.store(o_out + out, o.to(o_out.dtype.element_ty), mask=mask)
    tl.store(r_out + out, r.to(r_out.dtype.element_ty), mask=mask)


@triton.jit
def _bwd_tile(t, b0, NB, pid_m, pid_n, T, B, C, H, W,
              go, gc, c_ptr, r_ptr, wb, dg, dpr, dc0,
              KS: tl.constexpr, ACT_R: tl.constexpr, ACT_T: tl.constexpr, MERGE: tl.constexpr,
              FINAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
              PREC: tl.constexpr, CACHE: tl.constexpr):
    b_row, pix, m_ok = _rows(pid_m, b0, NB, H, W, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    CHW, loc = _offsets(C, H, W, offs_n, pix)
    mask = m_ok[:, None] & (offs_n < C)[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if FINAL:
        # dc_0 = convT(dG_0, W_tc)
        row_off = b_row.to(tl.int64) * CHW
        acc = _conv_tile(acc, dg, row_off, pix, m_ok, wb, offs_n, C, H, W, KS, -1, BLOCK_K, PREC, CACHE)
        tl.store(dc0 + row_off[:, None] + loc, acc.to(dc0.dtype.element_ty), mask=mask)
    else:
        img = (t * B + b_row).to(tl.int64)
        if t < T - 1:
            acc = _conv_tile(acc, dg, (img + B) * CHW, pix, m_ok, wb, offs_n, C, H, W, KS, -1, BLOCK_K, PREC,
                             CACHE)
        at = (img * CHW)[:, None] + loc
        d_o = tl.load(go + at, mask=mask, other=0.0).to(tl.float32)
        d_c = tl.load(gc + at, mask=mask, other=0.0).to(tl.float32)
        c = tl.load(c_ptr + at, mask=mask, other=0.0).to(tl.float32)
        r = tl.load(r_ptr + at, mask=mask, other=0.0).to(tl.float32)
        if MERGE == 0:
            dc = d_o * r + d_c + acc
            dr = d_o * c
        else:
            dc = d_o + d_c + acc
            dr = d_o
        if ACT_T == 0:
            dgv = dc * c * (1.0 - c)
        else:
            dgv = tl.where(c > 0.0, dc, 0.0)
        if ACT_R == 1:
            dr = tl.where(r > 0.0, dr, 0.0)
        elif ACT_R == 2:
            dr = dr * (1.0 - r * r)
        tl.store(dg + at, dgv.to(dg.dtype.element_ty), mask=mask)
        tl.store(dpr + at, dr.to(dpr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------------------
# kernels
# ----------------------------------------------------------------------------------------------


@triton.jit(do_not_specialize=["t"])  # one binary for every step index
def _fwd_step_kernel(t, B, C, H, W, c0, pr, px, stride_pr, stride_px, wf, c_out, o_out, r_out,
                     KS: tl.constexpr, ACT_R: tl.constexpr, ACT_T: tl.constexpr, MERGE: tl.constexpr,
                     PREC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # grid (cdiv(B * H * W, BLOCK_M), cdiv(C, BLOCK_N)): rows run over the B images of step t
    _fwd_tile(t, 0, B, tl.program_id(0), tl.program_id(1), B, C, H, W,
              c0, pr, px, stride_pr, stride_px, wf, c_out, o_out, r_out,
              KS, ACT_R, ACT_T, MERGE, BLOCK_M, BLOCK_N, BLOCK_K, PREC, "")


@triton.jit
def _fwd_seq_kernel(T, B, C, H, W, c0, pr, px, stride_pr, stride_px, wf, c_out, o_out, r_out,
                    KS: tl.constexpr, ACT_R: tl.constexpr, ACT_T: tl.constexpr, MERGE: tl.constexpr,
                    PREC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # grid (B,): program b owns image b for every step
    b = tl.program_id(0)
    num_m = tl.cdiv(H * W, BLOCK_M)
    num_n = tl.cdiv(C, BLOCK_N)
    for t in range(T):
        for pid_m in range(num_m):
            for pid_n in range(num_n):
                _fwd_tile(t, b, 1, pid_m, pid_n, B, C, H, W,
                          c0, pr, px, stride_pr, stride_px, wf, c_out, o_out, r_out,
                          KS, ACT_R, ACT_T, MERGE, BLOCK_M, BLOCK_N, BLOCK_K, PREC, ".cg")
        # c_t of this image is complete: make it visible to every thread of the program
        tl.debug_barrier()


@triton.jit(do_not_specialize=["t"])
def _bwd_step_kernel(t, T, B, C, H, W, go, gc, c_ptr, r_ptr, wb, dg, dpr, dc0,
                     KS: tl.constexpr, ACT_R: tl.constexpr, ACT_T: tl.constexpr, MERGE: tl.constexpr,
                     FINAL: tl.constexpr, PREC: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    _bwd_tile(t, 0, B, tl.program_id(0), tl.program_id(1), T, B, C, H, W,
              go, gc, c_ptr, r_ptr, wb, dg, dpr, dc0,
              KS, ACT_R, ACT_T, MERGE, FINAL, BLOCK_M, BLOCK_N, BLOCK_K, PREC, "")


@triton.jit
def _bwd_seq_kernel(T, B, C, H, W, go, gc, c_ptr, r_ptr, wb, dg, dpr, dc0,
                    KS: tl.constexpr, ACT_R: tl.constexpr, ACT_T: tl.constexpr, MERGE: tl.constexpr,
                    PREC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    b = tl.program_id(0)
    num_m = tl.cdiv(H * W, BLOCK_M)
    num_n = tl.cdiv(C, BLOCK_N)
    for i in range(T):
        t = T - 1 - i
        for pid_m in range(num_m):
            for pid_n in range(num_n):
                _bwd_tile(t, b, 1, pid_m, pid_n, T, B, C, H, W, go, gc, c_ptr, r_ptr, wb, dg, dpr, dc0,
                          KS, ACT_R, ACT_T, MERGE, False, BLOCK_M, BLOCK_N, BLOCK_K, PREC, ".cg")
        tl.debug_barrier()
    for pid_m in range(num_m):
        for pid_n in range(num_n):
            _bwd_tile(0, b, 1, pid_m, pid_n, T, B, C, H, W, go, gc, c_ptr, r_ptr, wb, dg, dpr, dc0,
                      KS, ACT_R, ACT_T, MERGE, True, BLOCK_M, BLOCK_N, BLOCK_K, PREC, ".cg")


# ----------------------------------------------------------------------------------------------
# autotuning (GPU only; the interpreter runs one fixed configuration)
# ----------------------------------------------------------------------------------------------

# Interpreter: tl.dot needs every block dim >= 16; small C is handled by masked loads.
_INTERP_BLOCKS = dict(BLOCK_M=32, BLOCK_N=16, BLOCK_K=16)


def _np2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


def _step_configs():
    """Hopper-oriented tiles for the single-step implicit GEMM (M = pixels, N = C_out, K = C_in * k * k).

    Mid-size tiles first: a capped autotune (:func:`max_configs`) keeps the head of this list, and the
    128 x 128 tiles cost several times more to compile (over 40 CPU-seconds each in float32 IEEE)."""
    cfgs = []
    for bm, bn, bk, warps, stages in (
        (64, 64, 32, 4, 4),
        (128, 64, 32, 4, 4),
        (64, 128, 32, 4, 4),
        (128, 128, 32, 8, 3),
        (128, 128, 64, 8, 3),
        (64, 64, 64, 4, 3),
        (64, 32, 32, 4, 3),
        (32, 64, 32, 4, 3),
        (32, 32, 16, 2, 3),
    ):
        cfgs.append(triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=warps, num_stages=stages))
    return cfgs


def max_configs() -> int:
    """``DEEPRNN_TRITON_MAX_CONFIGS``: how many of each kernel's autotune configurations (after pruning by shape,
    in the listed order) to compile and time per shape; unset or 0 means all. Each configuration costs a cold
    compile (seconds) per shape and dtype, so a short GPU session caps it."""
    value = os.environ.get("DEEPRNN_TRITON_MAX_CONFIGS", "").strip()
    try:
        n = int(value) if value else 0
    except ValueError:
        raise ValueError(f"DEEPRNN_TRITON_MAX_CONFIGS must be an integer, got {value!r}") from None
    if n < 0:
        raise ValueError(f"DEEPRNN_TRITON_MAX_CONFIGS must be >= 0, got {n}")
    return n


def _capped(configs):
    n = max_configs()
    return configs[:n] if n else configs


def _prune_step(configs, named_args, **kwargs):
    C = named_args["C"]
    rows = named_args["B"] * named_args["H"] * named_args["W"]  # the M dimension of one step's GEMM
    cap_n, cap_k, cap_m = max(16, _np2(C)), max(16, _np2(C)), max(16, _np2(rows))
    kept = [c for c in configs
            if c.kwargs["BLOCK_N"] <= cap_n and c.kwargs["BLOCK_K"] <= cap_k and c.kwargs["BLOCK_M"] <= cap_m]
    if not kept:
        kept = [min(configs, key=lambda c: c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] * c.kwargs["BLOCK_K"])]
    return _capped(kept)


def _seq_configs():
    """Multi-step: the tile covers (most of) one image; tune the K chunk, warps and pipelining."""
    return [
        triton.Config({"BLOCK_K": bk}, num_warps=warps, num_stages=stages)
        for bk in (16, 32, 64) for warps in (4, 8) for stages in (2, 3)
    ]


def _prune_seq(configs, named_args, **kwargs):
    cap_k = max(16, _np2(named_args["C"]))
    kept = [c for c in configs if c.kwargs["BLOCK_K"] <= cap_k]
    return _capped(kept or configs[:1])


#: the most shared memory one block may use (the opt-in maximum) by compute capability: A100 (sm_80) 163 KB,
#: H100/H200 (sm_90) 227 KB
SHARED_MEMORY_BYTES = {80: 166912, 90: 232448}

_KEY = ["C", "H", "W", "B", "KS", "PREC"]  # autotune cache key (Triton adds the pointer dtypes)


class Launchers:
    """The four kernels as launched: autotuned (GPU) or plain with one fixed tile (interpreter).

    ``do_bench`` replaces Triton's GPU timer (tests drive the autotuned path under the interpreter).
    """

    def __init__(self, autotune: bool, do_bench=None):
        self.autotune = autotune
        if not autotune:
            self.fwd_step, self.bwd_step = _fwd_step_kernel, _bwd_step_kernel
            self.fwd_seq, self.bwd_seq = _fwd_seq_kernel, _bwd_seq_kernel
            return

        def tuned(configs, key, prune, fn):
            return triton.autotune(configs, key=key, prune_configs_by={"early_config_prune": prune},
                                   do_bench=do_bench)(fn)

        self.fwd_step = tuned(_step_configs(), _KEY, _prune_step, _fwd_step_kernel)
        self.bwd_step = tuned(_step_configs(), _KEY + ["FINAL"], _prune_step, _bwd_step_kernel)
        self.fwd_seq = tuned(_seq_configs(), _KEY, _prune_seq, _fwd_seq_kernel)
        self.bwd_seq = tuned(_seq_configs(), _KEY, _prune_seq, _bwd_seq_kernel)


#: what :func:`forward_recurrence` / :func:`backward_recurrence` launch
LAUNCHERS = Launchers(autotune=not INTERPRET)


# ----------------------------------------------------------------------------------------------
# dispatch
# ----------------------------------------------------------------------------------------------

#: "auto" (by shape), "single" or "multi"; tests and benchmarks force a path with :func:`set_mode`.
_MODE = "auto"

#: multi-step when one program's state image, padded to powers of two, has at most this many elements.
MULTISTEP_MAX_TILE = 8192


def set_mode(mode: str) -> str:
    """Force the launch strategy (``"auto"``, ``"single"``, ``"multi"``); returns the previous one."""
    global _MODE
    if mode not in ("auto", "single", "multi"):
        raise ValueError(f"mode must be 'auto', 'single' or 'multi', got {mode!r}")
    old, _MODE = _MODE, mode
    return old


def get_mode() -> str:
    return _MODE


def use_multistep(B: int, C: int, H: int, W: int, k: int) -> bool:
    """Shape rule: run all steps in one launch when a batch element's whole (C, H*W) state fits one
    program's tile (at most :data:`MULTISTEP_MAX_TILE` elements padded), i.e. small images and few channels,
    where a step is too little work to amortize a launch. The GPU canonical shapes (C * H * W >= 25088)
    take the single-step path, whose grid fills the GPU."""
    if _MODE != "auto":
        return _MODE == "multi"
    return max(16, _np2(H * W)) * max(16, _np2(C)) <= MULTISTEP_MAX_TILE


def dot_precision(x: torch.Tensor) -> str:
    """``tl.dot``'s input precision for the recurrent convolutions on ``x``, the one decision every Triton launch
    takes: ``"tf32"`` exactly when ``x`` is float32 and ``torch.backends.cudnn.allow_tf32`` is True, as cuDNN
    decides for the native backend's convolutions (the recurrent ones included), so a float32 result does not
    depend on which backend ``auto`` picks; ``"ieee"`` otherwise. ``torch.backends.cuda.matmul.allow_tf32`` plays
    no part: these are convolutions. No device test: the compiled kernels run on CUDA only, and the interpreter
    computes every ``tl.dot`` in full precision whatever it is told."""
    return "tf32" if x.dtype == torch.float32 and torch.backends.cudnn.allow_tf32 else "ieee"


def check_rows(B: int, H: int, W: int) -> None:
    """Refuse a step of ``B * H * W >= 2**31`` pixels: :func:`_rows` numbers them in int32 (channel offsets
    and per-image bases are int64), and a 64-bit row index would cost every tile a 64-bit division."""
    if B * H * W >= 2**31:
        raise ValueError(f"x: the Triton kernels take at most 2**31 - 1 pixels per step (B*H*W), got "
                         f"B={B}, H={H}, W={W}: {B * H * W}; use backend='native'")


def _launch_plan(L: Launchers, C: int, H: int, W: int, B: int):
    """(step grid, step block kwargs, seq block kwargs) for the launchers in use."""
    check_rows(B, H, W)
    HW = H * W
    if not L.autotune:
        bm, bn = _INTERP_BLOCKS["BLOCK_M"], _INTERP_BLOCKS["BLOCK_N"]
        return (triton.cdiv(B * HW, bm), triton.cdiv(C, bn)), dict(_INTERP_BLOCKS), dict(_INTERP_BLOCKS)

    def grid(meta):
        return triton.cdiv(B * HW, meta["BLOCK_M"]), triton.cdiv(C, meta["BLOCK_N"])

    # multi-step: the tile spans the image (up to 128 pixels x 64 channels; larger images loop over tiles)
    seq = dict(BLOCK_M=min(max(16, _np2(HW)), 128), BLOCK_N=min(max(16, _np2(C)), 64))
    return grid, {}, seq


def forward_recurrence(pr, px, stride_pr, stride_px, w_tc, c0, c_out, o_out, r_out, act_r, act_t, merge):
    """Run the forward recurrence; ``pr``/``px`` hold T*B images of C channels at the given image strides."""
    T, B, C, H, W = c_out.shape
    ks = w_tc.shape[-1]
    wf = w_tc.permute(2, 3, 1, 0).contiguous()  # [kh, kw, ci, co]
    L = LAUNCHERS
    grid, step_blocks, seq_blocks = _launch_plan(L, C, H, W, B)
    common = dict(KS=ks, ACT_R=act_r, ACT_T=act_t, MERGE=merge, PREC=dot_precision(c0))
    if use_multistep(B, C, H, W, ks):
        L.fwd_seq[(B,)](T, B, C, H, W, c0, pr, px, stride_pr, stride_px, wf, c_out, o_out, r_out,
                        **common, **seq_blocks)
        return
    for t in range(T):
        L.fwd_step[grid](t, B, C, H, W, c0, pr, px, stride_pr, stride_px, wf, c_out, o_out, r_out,
                         **common, **step_blocks)


def backward_recurrence(grad_o, grad_c, c, r, w_tc, dg, dpr, dc0, act_r, act_t, merge):
    """Fill ``dg`` (dG_t, float32), ``dpr`` (dP_r) and ``dc0`` (gradient of the initial state)."""
    T, B, C, H, W = c.shape
    ks = w_tc.shape[-1]
    wb = w_tc.permute(2, 3, 0, 1).contiguous()  # [kh, kw, co, ci]
    L = LAUNCHERS
    grid, step_blocks, seq_blocks = _launch_plan(L, C, H, W, B)
    common = dict(KS=ks, ACT_R=act_r, ACT_T=act_t, MERGE=merge, PREC=dot_precision(c))
    if use_multistep(B, C, H, W, ks):
        L.bwd_seq[(B,)](T, B, C, H, W, grad_o, grad_c, c, r, wb, dg, dpr, dc0, **common, **seq_blocks)
        return
    for t in range(T - 1, -1, -1):
        L.bwd_step[grid](t, T, B, C, H, W, grad_o, grad_c, c, r, wb, dg, dpr, dc0, FINAL=False,
                         **common, **step_blocks)
    L.bwd_step[grid](0, T, B, C, H, W, grad_o, grad_c, c, r, wb, dg, dpr, dc0, FINAL=True,
                     **common, **step_blocks)


# ----------------------------------------------------------------------------------------------
# ahead-of-time compile check (no GPU needed)
# ----------------------------------------------------------------------------------------------


_KERNELS_BY_NAME = {"fwd_step": _fwd_step_kernel, "fwd_seq": _fwd_seq_kernel,
                    "bwd_step": _bwd_step_kernel, "bwd_seq": _bwd_seq_kernel}


def compile_jit(fn, consts: dict, pointer_type: Callable[[str], Optional[str]], num_warps: int = 4,
                num_stages: int = 3, capability: int = 90):
    """Compile the ``@triton.jit`` kernel ``fn`` to a cubin for ``sm_<capability>`` without a GPU (Triton and its
    bundled ptxas): ``consts`` are constexprs (those that are ``fn``'s arguments are used), ``pointer_type(arg)``
    the Triton pointer type of each other argument (``"*fp32"``...; None: an ``i32`` scalar). Returns the
    compiled kernel. Shared by this module's :func:`compile_for` and the cells' ``compile_check``."""
    if INTERPRET:
        raise RuntimeError("compiling needs TRITON_INTERPRET unset (the interpreter has no compiler)")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    consts = {name: value for name, value in consts.items() if name in fn.arg_names}
    signature = {arg: "constexpr" if arg in consts else (pointer_type(arg) or "i32") for arg in fn.arg_names}
    compiled = triton.compile(ASTSource(fn, signature, constexprs=consts), target=GPUTarget("cuda", capability, 32),
                              options={"num_warps": num_warps, "num_stages": num_stages})
    assert "cubin" in compiled.asm
    return compiled


_CBM_POINTERS = {"c0", "pr", "px", "wf", "c_out", "o_out", "r_out", "go", "gc", "c_ptr", "r_ptr", "wb", "dg", "dpr",
                 "dc0"}


def compile_for(name: str, dt: str, prec: str, config=None, capability: int = 90):
    """Compile kernel ``name`` (``fwd_step``, ``fwd_seq``, ``bwd_step``, ``bwd_seq``) for pointers of Triton type
    ``dt`` (``fp32``, ``bf16``, ``fp16``) and dot precision ``prec`` with the tile sizes, warps and stages of
    ``config`` (a ``triton.Config``; default: 64 x 64 x 32, 4 warps, 3 stages) to a cubin for
    ``sm_<capability>``, without a GPU (:func:`compile_jit`). Returns the compiled kernel."""
    blocks = dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32)
    blocks.update(config.kwargs if config is not None else {})
    consts = dict(KS=3, ACT_R=2, ACT_T=0, MERGE=0, PREC=prec, FINAL=False, **blocks)

    def pointer_type(arg: str) -> Optional[str]:
        if arg not in _CBM_POINTERS:
            return None
        return "*fp32" if arg == "dg" else "*" + dt  # dG is float32 whatever the activations' dtype

    return compile_jit(_KERNELS_BY_NAME[name], consts, pointer_type,
                       num_warps=config.num_warps if config is not None else 4,
                       num_stages=config.num_stages if config is not None else 3, capability=capability)


def compile_check(capability: int = 90, cases=None):
    """Compile the kernels to a cubin for ``sm_<capability>`` without a GPU (see :func:`compile_for`).

    The interpreter never runs Triton's compiler, so CI uses this (in a process without
    ``TRITON_INTERPRET``) to catch compile-mode errors. ``cases``: ``(kernel name, pointer dtype, PREC)``
    tuples; returns ``{label: shared memory bytes}``.
    """
    if cases is None:
        cases = [("fwd_step", "fp32", "tf32"), ("bwd_step", "fp32", "ieee"),
                 ("fwd_seq", "bf16", "ieee"), ("bwd_seq", "fp16", "ieee")]
    return {f"{name}/{dt}/{prec}": compile_for(name, dt, prec, capability=capability).metadata.shared
            for name, dt, prec in cases}
