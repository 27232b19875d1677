"""Triton kernels for the ConvLSTM and ConvGRU recurrences (docs/design.md section 7), forward and backward.

Same machinery as the CBM kernels of :mod:`.kernels` (whose row tiling, launch-strategy switch, precision
rule and autotune configurations are reused): every activation tensor is NCHW-contiguous, one image per
``(t, b)``; a tile is ``BLOCK_M`` (image, pixel) rows by ``BLOCK_N`` state channels; the recurrent
convolution is an implicit GEMM inside the kernel that also runs the cell's epilogue. A tile computes
every gate of its ``BLOCK_N`` channels (one accumulator per gate, the state tile loaded once per tap and
``K`` chunk), so the epilogue sees i, f, o, g (or z, r) of the same channel together. ``P`` is the input
projection (biases included) precomputed for all steps by :mod:`.cell_ops`.

ConvLSTM (``P``: 4C channels i, f, o, g; ``gates`` saves their activations for backward)::

    forward   A = P[t] + conv(h_{t-1}, W_h);  i, f, o, g = σ, σ, σ, tanh(A);  c_t = f c_{t-1} + i g;
              h_t = o tanh(c_t)
    backward  dh = dH_t + convT(dA_{t+1}, W_h);  dc = dC_t + dc_carry + dh o (1 - tanh² c_t)
              dA = (dc g, dc c_{t-1}, dh tanh c_t, dc i) * (σ', σ', σ', tanh');  dc_carry = dc f
              then dh_0 = convT(dA_0, W_h), dc_0 = dc_carry

ConvGRU (``P``: 3C channels z, r, n, with ``bias_h`` folded in; ``saved``: z, r, n, q = r h_{t-1})
needs the whole ``q`` image before its second convolution, so each step has two phases, separated by a
kernel launch (single-step) or a CTA barrier (multi-step)::

    forward   phase 0: z, r = σ(P_zr[t] + conv(h_{t-1}, W_hzr));  q = r h_{t-1}
              phase 1: n = tanh(P_n[t] + conv(q, W_hn));  h_t = (1 - z) n + z h_{t-1}
    backward  phase 0: dh = dH_t + carry + convT(dP_zr[t+1], W_hzr);  dP_n = dh (1 - z) tanh';
                       dP_z = dh (h_{t-1} - n) σ';  dhz = dh z
              phase 1: dq = convT(dP_n[t], W_hn);  dP_r = dq h_{t-1} σ';  carry = dhz + dq r
              phase 2: dh_0 = carry + convT(dP_zr[0], W_hzr)

State math and the backward buffers (``dA``/``dP``, the carries) are float32, float64 for float64
inputs; bf16/fp16 operands feed ``tl.dot`` with float32 accumulation like the CBM kernels. Read/write
buffers are never the same in one phase (the LSTM's cell-gradient carry ping-pongs between two buffers by
step parity), so no tile reads what another thread of the same phase writes.

The GPU paths (compiled kernels, autotuning, bf16) have not been run on a GPU here: only the interpreter
(``TRITON_INTERPRET=1``) and the sm_80 / sm_90 ahead-of-time compiles (:func:`compile_check`,
:mod:`.config_sweep`) have been exercised.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from . import kernels as _cbm
from .kernels import INTERPRET, _gates_conv, _offsets, _rows, _tanh  # noqa: F401  (called from the jit code)


# ----------------------------------------------------------------------------------------------
# device helpers
# ----------------------------------------------------------------------------------------------


@triton.jit
def _zeros(BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, F64: tl.constexpr):
    """The accumulator: float32, or float64 for float64 inputs."""
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if F64:
        acc = acc.to(tl.float64)
    return acc


@triton.jit
def _conv1(zero, src, row_off, pix, m_ok, w, offs_n, K, N, H, W, KS: tl.constexpr, SIGN: tl.constexpr,
           BLOCK_K: tl.constexpr, PREC: tl.constexpr, CACHE: tl.constexpr):
    """One output group (``w`` is ``[KS, KS, K, N]``)."""
    acc, _, _, _ = _gates_conv(zero, zero, zero, zero, src, row_off, pix, m_ok, w, offs_n, K, N, N, H, W,
                               1, KS, SIGN, BLOCK_K, PREC, CACHE)
    return acc


@triton.jit
def _ld(ptr, mask, like):
    return tl.load(ptr, mask=mask, other=0.0).to(like.dtype)


@triton.jit
def _st(ptr, val, mask):
    tl.store(ptr, val.to(ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------------------
# ConvLSTM tiles
# ----------------------------------------------------------------------------------------------


@triton.jit
def _lstm_fwd_tile(t, b0, NB, pid_m, pid_n, B, C, H, W, h0, c0, p, wf, h_out, c_out, gates,
                   KS: tl.constexpr, F64: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_K: tl.constexpr, PREC: tl.constexpr, CACHE: tl.constexpr):
    b_row, pix, m_ok = _rows(pid_m, b0, NB, H, W, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    CHW, loc = _offsets(C, H, W, offs_n, pix)
    img = (t * B + b_row).to(tl.int64)
    if t == 0:
        src_h = h0
        src_c = c0
        prev = b_row.to(tl.int64) * CHW
    else:
        src_h = h_out
        src_c = c_out
        prev = (img - B) * CHW
    zero = _zeros(BLOCK_M, BLOCK_N, F64)
    a_i, a_f, a_o, a_g = _gates_conv(zero, zero, zero, zero, src_h, prev, pix, m_ok, wf, offs_n, C, C, 4 * C,
                                     H, W, 4, KS, 1, BLOCK_K, PREC, CACHE)
    mask = m_ok[:, None] & (offs_n < C)[None, :]
    four = (img * 4 * CHW)[:, None] + loc  # channel n of gate 0 in a 4C-channel image
    i = tl.sigmoid(a_i + _ld(p + four, mask, zero))
    f = tl.sigmoid(a_f + _ld(p + four + CHW, mask, zero))
    o = tl.sigmoid(a_o + _ld(p + four + 2 * CHW, mask, zero))
    g = _tanh(a_g + _ld(p + four + 3 * CHW, mask, zero))
    c = f * _ld(src_c + prev[:, None] + loc, mask, zero) + i * g
    h = o * _tanh(c)
    out = (img * CHW)[:, None] + loc
    _st(c_out + out, c, mask)
    _st(h_out + out, h, mask)
    _st(gates + four, i, mask)
    _st(gates + four + CHW, f, mask)
    _st(gates + four + 2 * CHW, o, mask)
    _st(gates + four + 3 * CHW, g, mask)


@triton.jit
def _lstm_bwd_tile(t, b0, NB, pid_m, pid_n, T, B, C, H, W, gh, gc, c_ptr, c0, gates, wb, da,
                   dc_even, dc_odd, dh0,
                   KS: tl.constexpr, F64: tl.constexpr, FINAL: tl.constexpr, BLOCK_M: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PREC: tl.constexpr, CACHE: tl.constexpr):
    b_row, pix, m_ok = _rows(pid_m, b0, NB, H, W, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    CHW, loc = _offsets(C, H, W, offs_n, pix)
    mask = m_ok[:, None] & (offs_n < C)[None, :]
    state = b_row.to(tl.int64) * CHW  # image b of a (B, C, H, W) buffer
    zero = _zeros(BLOCK_M, BLOCK_N, F64)
    if FINAL:
        # dh_0 = convT(dA_0, W_h)
        acc = _conv1(zero, da, b_row.to(tl.int64) * 4 * CHW, pix, m_ok, wb, offs_n, 4 * C, C, H, W, KS, -1,
                     BLOCK_K, PREC, CACHE)
        _st(dh0 + state[:, None] + loc, acc, mask)
    else:
        img = (t * B + b_row).to(tl.int64)
        # the cell-gradient carry: step t reads what t + 1 wrote and writes the other buffer (t = 0: dc_even)
        if t % 2 == 0:
            dc_rd = dc_odd
            dc_wr = dc_even
        else:
            dc_rd = dc_even
            dc_wr = dc_odd
        dh = zero
        dc = zero
        if t < T - 1:
            dh = _conv1(zero, da, (img + B) * 4 * CHW, pix, m_ok, wb, offs_n, 4 * C, C, H, W, KS, -1,
                        BLOCK_K, PREC, CACHE)
            dc = _ld(dc_rd + state[:, None] + loc, mask, zero)
        if t == 0:
            c_prev_ptr = c0 + state[:, None] + loc
        else:
            c_prev_ptr = c_ptr + ((img - B) * CHW)[:, None] + loc
        at = (img * CHW)[:, None] + loc
        four = (img * 4 * CHW)[:, None] + loc
        dh += _ld(gh + at, mask, zero)
        i = _ld(gates + four, mask, zero)
        f = _ld(gates + four + CHW, mask, zero)
        o = _ld(gates + four + 2 * CHW, mask, zero)
        g = _ld(gates + four + 3 * CHW, mask, zero)
        tc = _tanh(_ld(c_ptr + at, mask, zero))
        dc += _ld(gc + at, mask, zero) + dh * o * (1.0 - tc * tc)
        _st(da + four, dc * g * i * (1.0 - i), mask)
        _st(da + four + CHW, dc * _ld(c_prev_ptr, mask, zero) * f * (1.0 - f), mask)
        _st(da + four + 2 * CHW, dh * tc * o * (1.0 - o), mask)
        _st(da + four + 3 * CHW, dc * i * (1.0 - g * g), mask)
        _st(dc_wr + state[:, None] + loc, dc * f, mask)


# ----------------------------------------------------------------------------------------------
# ConvGRU tiles
# ----------------------------------------------------------------------------------------------


@triton.jit
def _gru_fwd_tile(t, b0, NB, pid_m, pid_n, B, C, H, W, h0, p, wzr, wn, h_out, saved,
                  KS: tl.constexpr, F64: tl.constexpr, PHASE: tl.constexpr, BLOCK_M: tl.constexpr,
                  BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PREC: tl.constexpr, CACHE: tl.constexpr):
    b_row, pix, m_ok = _rows(pid_m, b0, NB, H, W, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    CHW, loc = _offsets(C, H, W, offs_n, pix)
    img = (t * B + b_row).to(tl.int64)
    if t == 0:
        src_h = h0
        prev = b_row.to(tl.int64) * CHW
    else:
        src_h = h_out
        prev = (img - B) * CHW
    mask = m_ok[:, None] & (offs_n < C)[None, :]
    three = (img * 3 * CHW)[:, None] + loc  # P: z, r, n
    four = (img * 4 * CHW)[:, None] + loc   # saved: z, r, n, q
    zero = _zeros(BLOCK_M, BLOCK_N, F64)
    h_prev = _ld(src_h + prev[:, None] + loc, mask, zero)
    if PHASE == 0:
        a_z, a_r, _, _ = _gates_conv(zero, zero, zero, zero, src_h, prev, pix, m_ok, wzr, offs_n, C, C, 2 * C,
                                     H, W, 2, KS, 1, BLOCK_K, PREC, CACHE)
        z = tl.sigmoid(a_z + _ld(p + three, mask, zero))
        r = tl.sigmoid(a_r + _ld(p + three + CHW, mask, zero))
        _st(saved + four, z, mask)
        _st(saved + four + CHW, r, mask)
        _st(saved + four + 3 * CHW, r * h_prev, mask)
    else:
        a_n = _conv1(zero, saved, img * 4 * CHW + 3 * CHW, pix, m_ok, wn, offs_n, C, C, H, W, KS, 1,
                     BLOCK_K, PREC, CACHE)
        n = _tanh(a_n + _ld(p + three + 2 * CHW, mask, zero))
        z = _ld(saved + four, mask, zero)
        _st(saved + four + 2 * CHW, n, mask)
        _st(h_out + (img * CHW)[:, None] + loc, n + z * (h_prev - n), mask)


@triton.jit
def _gru_bwd_tile(t, b0, NB, pid_m, pid_n, T, B, C, H, W, gh, h_ptr, h0, saved, wzr, wn, dp, dhz, carry, dh0,
                  KS: tl.constexpr, F64: tl.constexpr, PHASE: tl.constexpr, BLOCK_M: tl.constexpr,
                  BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PREC: tl.constexpr, CACHE: tl.constexpr):
    b_row, pix, m_ok = _rows(pid_m, b0, NB, H, W, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    CHW, loc = _offsets(C, H, W, offs_n, pix)
    mask = m_ok[:, None] & (offs_n < C)[None, :]
    state = b_row.to(tl.int64) * CHW
    zero = _zeros(BLOCK_M, BLOCK_N, F64)
    if PHASE == 2:
        # dh_0 = carry + convT(dP_zr[0], W_hzr)
        acc = _conv1(zero, dp, b_row.to(tl.int64) * 3 * CHW, pix, m_ok, wzr, offs_n, 2 * C, C, H, W, KS, -1,
                     BLOCK_K, PREC, CACHE)
        _st(dh0 + state[:, None] + loc, acc + _ld(carry + state[:, None] + loc, mask, zero), mask)
    else:
        img = (t * B + b_row).to(tl.int64)
        if t == 0:
            h_prev_ptr = h0 + state[:, None] + loc
        else:
            h_prev_ptr = h_ptr + ((img - B) * CHW)[:, None] + loc
        h_prev = _ld(h_prev_ptr, mask, zero)
        three = (img * 3 * CHW)[:, None] + loc
        four = (img * 4 * CHW)[:, None] + loc
        if PHASE == 0:
            dh = zero
            if t < T - 1:
                dh = _conv1(zero, dp, (img + B) * 3 * CHW, pix, m_ok, wzr, offs_n, 2 * C, C, H, W, KS, -1,
                            BLOCK_K, PREC, CACHE)
                dh += _ld(carry + state[:, None] + loc, mask, zero)
            dh += _ld(gh + (img * CHW)[:, None] + loc, mask, zero)
            z = _ld(saved + four, mask, zero)
            n = _ld(saved + four + 2 * CHW, mask, zero)
            _st(dp + three, dh * (h_prev - n) * z * (1.0 - z), mask)
            _st(dp + three + 2 * CHW, dh * (1.0 - z) * (1.0 - n * n), mask)
            _st(dhz + state[:, None] + loc, dh * z, mask)
        else:
            dq = _conv1(zero, dp, img * 3 * CHW + 2 * CHW, pix, m_ok, wn, offs_n, C, C, H, W, KS, -1,
                        BLOCK_K, PREC, CACHE)
            r = _ld(saved + four + CHW, mask, zero)
            _st(dp + three + CHW, dq * h_prev * r * (1.0 - r), mask)
            _st(carry + state[:, None] + loc, _ld(dhz + state[:, None] + loc, mask, zero) + dq * r, mask)


# ----------------------------------------------------------------------------------------------
# kernels: a launch per step (grid: row tiles x channel tiles) or one launch for all steps (grid: (B,))
# ----------------------------------------------------------------------------------------------


@triton.jit(do_not_specialize=["t"])
def _lstm_fwd_step_kernel(t, B, C, H, W, h0, c0, p, wf, h_out, c_out, gates,
                          KS: tl.constexpr, F64: tl.constexpr, PREC: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    _lstm_fwd_tile(t, 0, B, tl.program_id(0), tl.program_id(1), B, C, H, W, h0, c0, p, wf, h_out, c_out, gates,
                   KS, F64, BLOCK_M, BLOCK_N, BLOCK_K, PREC, "")


@triton.jit
def _lstm_fwd_seq_kernel(T, B, C, H, W, h0, c0, p, wf, h_out, c_out, gates,
                         KS: tl.constexpr, F64: tl.constexpr, PREC: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    b = tl.program_id(0)
    num_m = tl.cdiv(H * W, BLOCK_M)
    num_n = tl.cdiv(C, BLOCK_N)
    for t in range(T):
        for pid_m in range(num_m):
            for pid_n in range(num_n):
                _lstm_fwd_tile(t, b, 1, pid_m, pid_n, B, C, H, W, h0, c0, p, wf, h_out, c_out, gates,
                               KS, F64, BLOCK_M, BLOCK_N, BLOCK_K, PREC, ".cg")
        tl.debug_barrier()  # h_t of this image complete before step t + 1 reads its neighbours


@triton.jit(do_not_specialize=["t"])
def _lstm_bwd_step_kernel(t, T, B, C, H, W, gh, gc, c_ptr, c0, gates, wb, da, dc_even, dc_odd, dh0,
                          KS: tl.constexpr, F64: tl.constexpr, FINAL: tl.constexpr, PREC: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    _lstm_bwd_tile(t, 0, B, tl.program_id(0), tl.program_id(1), T, B, C, H, W, gh, gc, c_ptr, c0, gates, wb, da,
                   dc_even, dc_odd, dh0, KS, F64, FINAL, BLOCK_M, BLOCK_N, BLOCK_K, PREC, "")


@triton.jit
def _lstm_bwd_seq_kernel(T, B, C, H, W, gh, gc, c_ptr, c0, gates, wb, da, dc_even, dc_odd, dh0,
                         KS: tl.constexpr, F64: tl.constexpr, PREC: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    b = tl.program_id(0)
    num_m = tl.cdiv(H * W, BLOCK_M)
    num_n = tl.cdiv(C, BLOCK_N)
    for i in range(T):
        t = T - 1 - i
        for pid_m in range(num_m):
            for pid_n in range(num_n):
                _lstm_bwd_tile(t, b, 1, pid_m, pid_n, T, B, C, H, W, gh, gc, c_ptr, c0, gates, wb, da,
                               dc_even, dc_odd, dh0, KS, F64, False, BLOCK_M, BLOCK_N, BLOCK_K, PREC, ".cg")
        tl.debug_barrier()
    for pid_m in range(num_m):
        for pid_n in range(num_n):
            _lstm_bwd_tile(0, b, 1, pid_m, pid_n, T, B, C, H, W, gh, gc, c_ptr, c0, gates, wb, da,
                           dc_even, dc_odd, dh0, KS, F64, True, BLOCK_M, BLOCK_N, BLOCK_K, PREC, ".cg")


@triton.jit(do_not_specialize=["t"])
def _gru_fwd_step_kernel(t, B, C, H, W, h0, p, wzr, wn, h_out, saved,
                         KS: tl.constexpr, F64: tl.constexpr, PHASE: tl.constexpr, PREC: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    _gru_fwd_tile(t, 0, B, tl.program_id(0), tl.program_id(1), B, C, H, W, h0, p, wzr, wn, h_out, saved,
                  KS, F64, PHASE, BLOCK_M, BLOCK_N, BLOCK_K, PREC, "")


@triton.jit
def _gru_fwd_seq_kernel(T, B, C, H, W, h0, p, wzr, wn, h_out, saved,
                        KS: tl.constexpr, F64: tl.constexpr, PREC: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    b = tl.program_id(0)
    num_m = tl.cdiv(H * W, BLOCK_M)
    num_n = tl.cdiv(C, BLOCK_N)
    for t in range(T):
        for pid_m in range(num_m):
            for pid_n in range(num_n):
                _gru_fwd_tile(t, b, 1, pid_m, pid_n, B, C, H, W, h0, p, wzr, wn, h_out, saved,
                              KS, F64, 0, BLOCK_M, BLOCK_N, BLOCK_K, PREC, ".cg")
        tl.debug_barrier()  # q = r h_{t-1} complete before the candidate's convolution reads it
        for pid_m in range(num_m):
            for pid_n in range(num_n):
                _gru_fwd_tile(t, b, 1, pid_m, pid_n, B, C, H, W, h0, p, wzr, wn, h_out, saved,
                              KS, F64, 1, BLOCK_M, BLOCK_N, BLOCK_K, PREC, ".cg")
        tl.debug_barrier()


@triton.jit(do_not_specialize=["t"])
def _gru_bwd_step_kernel(t, T, B, C, H, W, gh, h_ptr, h0, saved, wzr, wn, dp, dhz, carry, dh0,
                         KS: tl.constexpr, F64: tl.constexpr, PHASE: tl.constexpr, PREC: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    _gru_bwd_tile(t, 0, B, tl.program_id(0), tl.program_id(1), T, B, C, H, W, gh, h_ptr, h0, saved, wzr, wn,
                  dp, dhz, carry, dh0, KS, F64, PHASE, BLOCK_M, BLOCK_N, BLOCK_K, PREC, "")


@triton.jit
def _gru_bwd_seq_kernel(T, B, C, H, W, gh, h_ptr, h0, saved, wzr, wn, dp, dhz, carry, dh0,
                        KS: tl.constexpr, F64: tl.constexpr, PREC: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    b = tl.program_id(0)
    num_m = tl.cdiv(H * W, BLOCK_M)
    num_n = tl.cdiv(C, BLOCK_N)
    for i in range(T):
        t = T - 1 - i
        for phase in tl.static_range(2):
            for pid_m in range(num_m):
                for pid_n in range(num_n):
                    _gru_bwd_tile(t, b, 1, pid_m, pid_n, T, B, C, H, W, gh, h_ptr, h0, saved, wzr, wn,
                                  dp, dhz, carry, dh0, KS, F64, phase, BLOCK_M, BLOCK_N, BLOCK_K, PREC, ".cg")
            tl.debug_barrier()
    for pid_m in range(num_m):
        for pid_n in range(num_n):
            _gru_bwd_tile(0, b, 1, pid_m, pid_n, T, B, C, H, W, gh, h_ptr, h0, saved, wzr, wn,
                          dp, dhz, carry, dh0, KS, F64, 2, BLOCK_M, BLOCK_N, BLOCK_K, PREC, ".cg")


# ----------------------------------------------------------------------------------------------
# launchers: autotuned (GPU) or one fixed tile (interpreter)
# ----------------------------------------------------------------------------------------------

#: most accumulator elements (gates x BLOCK_M x BLOCK_N) one program may hold: the LSTM's four gates
#: share the register budget of the CBM kernels' single accumulator
MAX_ACC = 128 * 128


def pipeline_bytes(config, capability: int) -> int:
    """Shared memory of a single-step cell configuration in float32 on ``sm_<capability>``: Triton stages the
    state tile (``BLOCK_M x BLOCK_K``) and the four gates' weight tiles (``BLOCK_K x BLOCK_N`` each) in
    ``num_stages`` buffers on sm_90 and one fewer on sm_80 (what the compiles of the sweep measured,
    benchmarks/RESULTS.md)."""
    k = config.kwargs
    buffers = config.num_stages if capability >= 90 else config.num_stages - 1
    return buffers * (k["BLOCK_M"] * k["BLOCK_K"] + 4 * k["BLOCK_K"] * k["BLOCK_N"]) * 4


def fits_cells(config) -> bool:
    """Whether the cells can take a single-step configuration: the four gate accumulators within
    :data:`MAX_ACC`, and their operand pipeline within the shared memory of sm_80 and sm_90 (64 x 64 x 64 on
    three stages needs 240 KB on an H100); the configurations that fail this are never picked."""
    k = config.kwargs
    return (4 * k["BLOCK_M"] * k["BLOCK_N"] <= MAX_ACC
            and all(pipeline_bytes(config, cap) <= limit for cap, limit in _cbm.SHARED_MEMORY_BYTES.items()))


def _prune_cells(configs, named_args, **kwargs):
    kept = [c for c in _cbm._prune_step(configs, named_args) if fits_cells(c)]
    return kept or [min(configs, key=lambda c: c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] * c.kwargs["BLOCK_K"])]


class CellLaunchers:
    """The eight kernels as launched: autotuned over :mod:`.kernels`' configurations (GPU) or plain
    (interpreter). ``do_bench`` replaces Triton's GPU timer (tests drive the autotuned path on the CPU).
    Autotuning reruns a launch: no launch reads an element that it writes, so reruns give the same result
    (the first launch of a GRU backward phase-0 key is at ``t = T - 1``, which reads no carry)."""

    NAMES = ("lstm_fwd_step", "lstm_fwd_seq", "lstm_bwd_step", "lstm_bwd_seq",
             "gru_fwd_step", "gru_fwd_seq", "gru_bwd_step", "gru_bwd_seq")

    def __init__(self, autotune: bool, do_bench=None):
        self.autotune = autotune
        for name in self.NAMES:
            fn = globals()[f"_{name}_kernel"]
            if autotune:
                step = name.endswith("step")
                key = _cbm._KEY + ["F64"] + (["FINAL"] if name == "lstm_bwd_step" else [])
                key += ["PHASE"] if name.startswith("gru") and step else []
                configs = _cbm._step_configs() if step else _cbm._seq_configs()
                prune = _prune_cells if step else _cbm._prune_seq
                fn = triton.autotune(configs, key=key, prune_configs_by={"early_config_prune": prune},
                                     do_bench=do_bench)(fn)
            setattr(self, name, fn)


#: what the recurrences launch
LAUNCHERS = CellLaunchers(autotune=not INTERPRET)


def _plan(x: torch.Tensor, B: int, C: int, H: int, W: int, ks: int, gates: int):
    """``(multi, grid, blocks, common)``: the launch strategy (by :func:`.kernels.use_multistep` on the
    ``gates * C`` accumulator columns a program holds), the single-step grid, the block sizes and the
    constexprs every kernel takes."""
    _cbm.check_rows(B, H, W)
    L = LAUNCHERS
    HW = H * W
    multi = _cbm.use_multistep(B, gates * C, H, W, ks)
    common = dict(KS=ks, F64=x.dtype == torch.float64, PREC=_cbm.dot_precision(x))
    if not L.autotune:
        blocks = dict(_cbm._INTERP_BLOCKS)
        grid = (triton.cdiv(B * HW, blocks["BLOCK_M"]), triton.cdiv(C, blocks["BLOCK_N"]))
        return multi, (B,) if multi else grid, blocks, common
    if multi:
        # the tile spans the image; the gates' accumulators together as large as the CBM kernels' one
        bn = max(16, min(_cbm._np2(C), 64 // gates))
        return True, (B,), dict(BLOCK_M=min(max(16, _cbm._np2(HW)), 128), BLOCK_N=bn), common

    def grid(meta):
        return triton.cdiv(B * HW, meta["BLOCK_M"]), triton.cdiv(C, meta["BLOCK_N"])

    return False, grid, {}, common


def lstm_forward(p, w_h, h0, c0, h_out, c_out, gates):
    """Fill ``h_out``, ``c_out`` (T, B, C, H, W) and ``gates`` (T, B, 4C, H, W); ``p`` holds the T*B input
    projections (4C channels, contiguous), ``w_h`` is the recurrent part of the weight (4C, C, k, k)."""
    T, B, C, H, W = h_out.shape
    ks = w_h.shape[-1]
    wf = w_h.permute(2, 3, 1, 0).contiguous()  # [kh, kw, ci, 4C]
    multi, grid, blocks, common = _plan(h0, B, C, H, W, ks, 4)
    L = LAUNCHERS
    if multi:
        L.lstm_fwd_seq[grid](T, B, C, H, W, h0, c0, p, wf, h_out, c_out, gates, **common, **blocks)
        return
    for t in range(T):
        L.lstm_fwd_step[grid](t, B, C, H, W, h0, c0, p, wf, h_out, c_out, gates, **common, **blocks)


def lstm_backward(grad_h, grad_c, c, c0, gates, w_h, da, dh0, dc0):
    """Fill ``da`` (dA, T, B, 4C, H, W), ``dh0`` and ``dc0``; every tensor contiguous."""
    T, B, C, H, W = c.shape
    ks = w_h.shape[-1]
    multi, grid, blocks, common = _plan(c0, B, C, H, W, ks, 4)
    wb = w_h.permute(2, 3, 0, 1).contiguous()  # [kh, kw, 4C, ci]
    dc_odd = torch.empty_like(dc0)  # the carry's other buffer (t = 0 writes dc0)
    L = LAUNCHERS
    args = (grad_h, grad_c, c, c0, gates, wb, da, dc0, dc_odd, dh0)
    if multi:
        L.lstm_bwd_seq[grid](T, B, C, H, W, *args, **common, **blocks)
        return
    for t in range(T - 1, -1, -1):
        L.lstm_bwd_step[grid](t, T, B, C, H, W, *args, FINAL=False, **common, **blocks)
    L.lstm_bwd_step[grid](0, T, B, C, H, W, *args, FINAL=True, **common, **blocks)


def gru_forward(p, w_h, h0, h_out, saved):
    """Fill ``h_out`` (T, B, C, H, W) and ``saved`` (T, B, 4C, H, W: z, r, n, r h_{t-1}); ``p`` holds the
    T*B input projections (3C channels, both biases folded in), ``w_h`` is ``weight_h`` (3C, C, k, k)."""
    T, B, C, H, W = h_out.shape
    ks = w_h.shape[-1]
    wzr = w_h[:2 * C].permute(2, 3, 1, 0).contiguous()  # [kh, kw, ci, 2C]
    wn = w_h[2 * C:].permute(2, 3, 1, 0).contiguous()   # [kh, kw, ci, C]
    multi, grid, blocks, common = _plan(h0, B, C, H, W, ks, 2)
    L = LAUNCHERS
    if multi:
        L.gru_fwd_seq[grid](T, B, C, H, W, h0, p, wzr, wn, h_out, saved, **common, **blocks)
        return
    for t in range(T):
        for phase in (0, 1):
            L.gru_fwd_step[grid](t, B, C, H, W, h0, p, wzr, wn, h_out, saved, PHASE=phase, **common, **blocks)


def gru_backward(grad_h, h, h0, saved, w_h, dp, dh0):
    """Fill ``dp`` (dP, T, B, 3C, H, W: z, r, n) and ``dh0``; every tensor contiguous."""
    T, B, C, H, W = h.shape
    ks = w_h.shape[-1]
    wzr = w_h[:2 * C].permute(2, 3, 0, 1).contiguous()  # [kh, kw, 2C, ci]
    wn = w_h[2 * C:].permute(2, 3, 0, 1).contiguous()   # [kh, kw, C, ci]
    multi, grid, blocks, common = _plan(h0, B, C, H, W, ks, 2)
    dhz = torch.empty(B, C, H, W, device=dp.device, dtype=dp.dtype)
    carry = torch.empty_like(dhz)
    L = LAUNCHERS
    args = (grad_h, h, h0, saved, wzr, wn, dp, dhz, carry, dh0)
    if multi:
        L.gru_bwd_seq[grid](T, B, C, H, W, *args, **common, **blocks)
        return
    for t in range(T - 1, -1, -1):
        for phase in (0, 1):
            L.gru_bwd_step[grid](t, T, B, C, H, W, *args, PHASE=phase, **common, **blocks)
    L.gru_bwd_step[grid](0, T, B, C, H, W, *args, PHASE=2, **common, **blocks)


# ----------------------------------------------------------------------------------------------
# ahead-of-time compile check (no GPU needed)
# ----------------------------------------------------------------------------------------------

#: the backward buffers, float32 whatever the activations' dtype (float64 needs no compile check: the GPU
#: path does not take float64)
_STATE_POINTERS = {"da", "dc_even", "dc_odd", "dp", "dhz", "carry"}
_POINTERS = _STATE_POINTERS | {"h0", "c0", "p", "wf", "wb", "wzr", "wn", "h_out", "c_out", "gates", "saved",
                               "gh", "gc", "c_ptr", "h_ptr", "dh0"}


def compile_for(name: str, dt: str, prec: str, config=None, capability: int = 90, **extra):
    """Compile cell kernel ``name`` (``lstm_fwd_step`` ... ``gru_bwd_seq``) for activations of Triton type ``dt``
    (``fp32``, ``bf16``, ``fp16``; the backward buffers are fp32) and dot precision ``prec``, with the tile
    sizes, warps and stages of ``config`` (a ``triton.Config``; default: 64 x 32 x 32, 4 warps, 3 stages) and
    the constexprs ``extra`` (``FINAL``, ``PHASE``), to a cubin for ``sm_<capability>`` without a GPU
    (:func:`.kernels.compile_jit`). Returns the compiled kernel."""
    blocks = dict(BLOCK_M=64, BLOCK_N=32, BLOCK_K=32)
    blocks.update(config.kwargs if config is not None else {})
    consts = dict(KS=3, F64=False, PREC=prec, **blocks, **extra)

    def pointer_type(arg: str) -> Optional[str]:
        if arg not in _POINTERS:
            return None
        return "*fp32" if arg in _STATE_POINTERS else "*" + dt

    return _cbm.compile_jit(globals()[f"_{name}_kernel"], consts, pointer_type,
                            num_warps=config.num_warps if config is not None else 4,
                            num_stages=config.num_stages if config is not None else 3, capability=capability)


def compile_check(capability: int = 90, cases=None):
    """Compile the cell kernels to a cubin for ``sm_<capability>`` without a GPU, like
    :func:`.kernels.compile_check` (run without ``TRITON_INTERPRET``). ``cases``: ``(kernel name, pointer
    dtype, PREC, extra constexprs)`` tuples; returns ``{label: shared memory bytes}``."""
    if cases is None:
        cases = [("lstm_fwd_step", "fp32", "tf32", {}), ("lstm_bwd_step", "fp32", "ieee", {"FINAL": False}),
                 ("lstm_fwd_seq", "bf16", "ieee", {}), ("lstm_bwd_seq", "fp16", "ieee", {}),
                 ("gru_fwd_step", "bf16", "ieee", {"PHASE": 1}), ("gru_bwd_step", "fp32", "tf32", {"PHASE": 0}),
                 ("gru_fwd_seq", "fp32", "ieee", {}), ("gru_bwd_seq", "bf16", "ieee", {})]
    return {f"{name}/{dt}/{prec}": compile_for(name, dt, prec, capability=capability, **extra).metadata.shared
            for name, dt, prec, extra in cases}
