// The block-level work of the persistent CBM recurrence kernels (csrc/cuda/cbm_persistent.cu), written once for
// two executors: a CUDA thread block (each thread runs its own index, __syncthreads between phases) and a host
// emulation that runs every thread index of a phase in turn (tests/csrc/persistent_emulation.cpp). The emulation
// checks the tile decomposition, halo and padding logic, shared-memory layouts, thread-to-output maps and the
// epilogues on a machine without a GPU; what only a GPU can check is parallel timing (the barriers) and the
// tensor-core instructions themselves, which the host replaces by a plain 16x16 matrix product on the same
// shared-memory pointers, leading dimensions and alignment rules.
//
// The problem (docs/design.md section 1): per step, an implicit GEMM of M = B * H * W rows (image, pixel) by N = C
// output channels over K = KS * KS * C (tap, input channel), then a fused epilogue. Forward reads c_{t-1} and
// writes c_t, o_t, r_t; backward reads dG_{t+1}, convolves it transposed (sign -1: a correlation with the
// flipped kernel, the packed weights swap the channel axes) and writes dG_t, dP_r[t]; a last pass writes
// dc_0 = convT(dG_0). A block owns kBN output channels (their K x kBN weight slice stays in shared memory for all
// steps) and walks kBM-row tiles; a grid-wide barrier separates the steps. Torch-free (host C++ or nvcc).
#pragma once

#include <cstdint>

#include "cbm_math.h"

namespace deeprnn {
namespace persistent {

constexpr int kBM = 64;        // tile rows: (image, pixel) pairs of one step
constexpr int kBN = 32;        // output channels per block
constexpr int kKC = 32;        // input channels per staged A chunk
constexpr int kThreads = 256;  // 8 warps: the MMA path gives each warp one 16 x 16 piece of the 64 x 32 tile
constexpr int kPerThread = kBM * kBN / kThreads;  // FMA path: outputs per thread
constexpr int kWarps = kThreads / 32;
static_assert(kThreads % kBN == 0 && (kBM / 16) * (kBN / 16) == kWarps, "tile / thread layout");

// Declarations, not a using-directive: csrc/cbm.h has enumerators of the same names in namespace deeprnn.
using cbm_math::act_r_fn;
using cbm_math::act_r_grad;
using cbm_math::act_t_fn;
using cbm_math::act_t_grad;
using cbm_math::BF16;
using cbm_math::F32;
using cbm_math::F64;
using cbm_math::kMergeMul;

// The plain tile product (fma_chunk below): each thread accumulates kPerThread outputs in registers. A tile
// product type says whether it uses tensor cores and what one thread keeps between phases (Regs).
template <typename A>
struct Fma {
  static constexpr bool kTensorCores = false;
  struct Regs {
    A acc[kPerThread];
  };
};

// ------------------------------------------------------------------------------------------------------------
// Problem, layouts, work split.

struct Problem {
  int T, B, C, H, W, KS;
  int act_r, act_t, merge;
  DEEPRNN_HD int hw() const { return H * W; }
  DEEPRNN_HD int rows() const { return B * H * W; }       // GEMM M of one step
  DEEPRNN_HD int k_total() const { return KS * KS * C; }  // GEMM K
  DEEPRNN_HD int row_tiles() const { return (rows() + kBM - 1) / kBM; }
  DEEPRNN_HD int channel_slices() const { return (C + kBN - 1) / kBN; }
};

// Forward: image (t, b) of P_r / P_x starts at (t * B + b) * s_p (channel slices of one (T*B, 2C, H, W) buffer);
// c0 is (B, C, H, W); r, c, o are (T, B, C, H, W); all with contiguous (C, H, W). wp: [KS*KS][C_in][C_out].
struct ForwardArgs {
  const void* p_r;
  const void* p_x;
  int64_t s_p;
  const void* wp;
  const void* c0;
  void* r;
  void* c;
  void* o;
};

// An activation gradient read as element (t, b, e) = ptr[t * s_t + b * s_b + e * s_e]: s_e = 1 for a contiguous
// (C, H, W) block with any step / batch strides, s_e = s_t = s_b = 0 for a broadcast scalar (e.g. zeros).
struct Strided {
  const void* ptr;
  int64_t s_t, s_b, s_e;
};

// How the backward epilogue can read a (T, B, C, H, W) gradient with these sizes and strides: true (and *out
// filled) for a broadcast scalar (every stride 0) or a contiguous (C, H, W) block per image with any step and batch
// strides. A dimension of size 1 is never indexed past 0, so its stride does not matter (torch calls such a tensor
// contiguous whatever that stride is). Host-only: the caller decides once per launch.
inline bool strided_layout(const void* ptr, const int64_t* sizes, const int64_t* strides, Strided* out) {
  bool all_zero = true;
  for (int d = 0; d < 5; ++d) all_zero = all_zero && strides[d] == 0;
  if (all_zero) {
    *out = Strided{ptr, 0, 0, 0};
    return true;
  }
  int64_t expected = 1;  // the contiguous stride of dims 4, 3, 2 in turn
  for (int d = 4; d >= 2; --d) {
    if (sizes[d] > 1 && strides[d] != expected) return false;
    expected *= sizes[d];
  }
  *out = Strided{ptr, sizes[0] > 1 ? strides[0] : 0, sizes[1] > 1 ? strides[1] : 0, 1};
  return true;
}

// Backward: dG and dP_r image (t, b) at (t * B + b) * s_dp (channel slices of one (T*B, 2C, H, W) buffer);
// dc0 is (B, C, H, W); r, c are (T, B, C, H, W). wp: [KS*KS][C_out][C_in] (the transposed convolution).
struct BackwardArgs {
  Strided grad_o, grad_c;
  const void* r;
  const void* c;
  const void* wp;
  void* dg;
  void* dpr;
  int64_t s_dp;
  void* dc0;
};

// Shared memory: the weight slice [K][ldw], the A chunk [kBM][lda], and (MMA) the float tile [kBM][ldc]. The
// leading dimensions are padded by 16 bytes (fewer bank conflicts; WMMA needs multiples of 16 bytes) and every
// region starts 128-byte aligned, so each WMMA pointer (row offsets multiples of 8 / 16 rows) is 32-byte aligned.
struct Layout {
  int ldw, lda, ldc;
  int64_t w_off, a_off, c_off, bytes;
};

DEEPRNN_HD int64_t align128(int64_t n) { return (n + 127) / 128 * 128; }

DEEPRNN_HD Layout layout(const Problem& p, int elem_bytes, bool mma) {
  Layout L;
  const int pad = 16 / elem_bytes;
  L.ldw = kBN + pad;
  L.lda = kKC + pad;
  L.ldc = kBN + 4;
  L.w_off = 0;
  L.a_off = align128(int64_t(p.k_total()) * L.ldw * elem_bytes);
  L.c_off = L.a_off + align128(int64_t(kBM) * L.lda * elem_bytes);
  L.bytes = L.c_off + (mma ? align128(int64_t(kBM) * L.ldc * 4) : 0);
  return L;
}

// Block -> work: a block keeps one channel slice for all steps and walks every `stride`-th row tile from `first`.
// The grid is a multiple of channel_slices().
struct BlockWork {
  int n0, first, stride;
};

DEEPRNN_HD BlockWork block_work(const Problem& p, int block, int grid) {
  const int slices = p.channel_slices();
  return BlockWork{(block % slices) * kBN, block / slices, grid / slices};
}

// Output element i of thread tid in a tile (FMA path and epilogues): row m, channel n. Threads of a warp share m
// and take consecutive channels, so the A reads broadcast and the weight reads hit consecutive banks.
DEEPRNN_HD int out_row(int tid, int i) { return tid / kBN + i * (kThreads / kBN); }
DEEPRNN_HD int out_col(int tid) { return tid % kBN; }

// MMA path: warp w of the 8 owns rows 16 * (w / 2).. and channels 16 * (w % 2).. of the 64 x 32 tile.
DEEPRNN_HD int warp_row(int tid) { return (tid / 32) / (kBN / 16) * 16; }
DEEPRNN_HD int warp_col(int tid) { return (tid / 32) % (kBN / 16) * 16; }

// Channels of chunk c_begin actually present (the last chunk of a ragged C is short).
DEEPRNN_HD int chunk_width(const Problem& p, int c_begin) { return p.C - c_begin < kKC ? p.C - c_begin : kKC; }

// ------------------------------------------------------------------------------------------------------------
// Phases (strided over the block's threads).

template <typename S>
DEEPRNN_HD S load_state(const S* p) {
#if defined(__CUDA_ARCH__)
  return __ldcg(p);  // written by other blocks during this kernel: read through L2, not a stale L1 line
#else
  return *p;
#endif
}

// w[k * ldw + n] = wp[k * C + n0 + n] for the block's channel slice; zero past C.
template <typename S>
DEEPRNN_HD void load_weight_slice(S* w, const Layout& L, const S* wp, const Problem& p, int n0, int tid) {
  const int K = p.k_total();
  for (int e = tid; e < K * kBN; e += kThreads) {
    const int k = e / kBN, n = e - k * kBN;
    w[k * L.ldw + n] = n0 + n < p.C ? wp[int64_t(k) * p.C + n0 + n] : S(0);
  }
}

// a[m * lda + kc] = the state value that tap (kh, kw) of row m0 + m reads in input channel c_begin + kc; zero
// outside the image (the "same" padding), past C and past the last row. A thread always fills the same row
// (its pixel is decoded once per call, not per element); consecutive threads take consecutive rows, i.e.
// pixels of one channel: coalesced global reads. src image b starts at b * s_img.
template <typename S>
DEEPRNN_HD void load_a_chunk(S* a, const Layout& L, const S* src, int64_t s_img, const Problem& p, int sign,
                             int m0, int kh, int kw, int c_begin, int tid) {
  static_assert(kThreads % kBM == 0, "a thread's rows must not change between its elements");
  const int HW = p.hw(), half = p.KS / 2, m = tid % kBM, row = m0 + m;
  const S* pixel = nullptr;  // the tapped pixel in channel 0 of the row's image; null when it reads padding
  if (row < p.rows()) {
    const int b = row / HW, pix = row - b * HW, oh = pix / p.W, ow = pix - oh * p.W;
    const int ih = oh + sign * (kh - half), iw = ow + sign * (kw - half);
    if (ih >= 0 && ih < p.H && iw >= 0 && iw < p.W) pixel = src + b * s_img + ih * p.W + iw;
  }
  for (int kc = tid / kBM; kc < kKC; kc += kThreads / kBM) {
    const int ci = c_begin + kc;
    a[m * L.lda + kc] = pixel != nullptr && ci < p.C ? load_state(pixel + int64_t(ci) * HW) : S(0);
  }
}

// acc[i] += sum_kc a[m_i][kc] * w[k_row0 + kc][n] over the chunk's `width` channels (FMA path).
template <typename Tr>
DEEPRNN_HD void fma_chunk(typename Tr::acc* acc, const typename Tr::storage* a, const typename Tr::storage* w,
                          const Layout& L, int k_row0, int width, int tid) {
  const int n = out_col(tid);
  for (int kc = 0; kc < width; ++kc) {
    const typename Tr::acc wv = Tr::load(w[(k_row0 + kc) * L.ldw + n]);
    for (int i = 0; i < kPerThread; ++i) acc[i] += Tr::load(a[out_row(tid, i) * L.lda + kc]) * wv;
  }
}

// Where output (row, channel) of step t lives: image b of the step, image index t * B + b, and the element
// offset channel * H * W + pixel inside a (C, H, W) block.
struct Output {
  int b;
  int64_t img, e;
};

DEEPRNN_HD Output output_at(const Problem& p, int t, int row, int channel) {
  const int HW = p.hw(), b = row / HW;
  return Output{b, int64_t(t) * p.B + b, int64_t(channel) * HW + (row - b * HW)};
}

// The forward epilogue of one output (row, co) at step t (the step kernels' formulas, csrc/cuda/cbm_kernels.cu).
template <typename Tr>
DEEPRNN_HD void forward_epilogue(typename Tr::acc acc, const ForwardArgs& a, const Problem& p, int t, int row,
                                 int co) {
  using S = typename Tr::storage;
  using A = typename Tr::acc;
  if (row >= p.rows() || co >= p.C) return;
  const Output at = output_at(p, t, row, co);
  const A g = acc + Tr::load(static_cast<const S*>(a.p_x)[at.img * a.s_p + at.e]);
  const A z = Tr::load(static_cast<const S*>(a.p_r)[at.img * a.s_p + at.e]);
  const A cv = act_t_fn(p.act_t, g), rv = act_r_fn(p.act_r, z);
  const int64_t out = at.img * p.C * p.hw() + at.e;
  static_cast<S*>(a.r)[out] = Tr::store(rv);
  static_cast<S*>(a.c)[out] = Tr::store(cv);
  static_cast<S*>(a.o)[out] = Tr::store(p.merge == kMergeMul ? rv * cv : rv + cv);
}

// The backward epilogue of one output (row, ci) at step t: acc = convT(dG_{t+1}, W_tc) (zero at the last step).
template <typename Tr>
DEEPRNN_HD void backward_epilogue(typename Tr::acc acc, const BackwardArgs& a, const Problem& p, int t, int row,
                                  int ci) {
  using S = typename Tr::storage;
  using A = typename Tr::acc;
  if (row >= p.rows() || ci >= p.C) return;
  const Output at = output_at(p, t, row, ci);
  const auto grad = [&](const Strided& s) {
    return Tr::load(static_cast<const S*>(s.ptr)[t * s.s_t + at.b * s.s_b + at.e * s.s_e]);
  };
  const A go = grad(a.grad_o);
  const int64_t saved = at.img * p.C * p.hw() + at.e;
  const A rv = Tr::load(static_cast<const S*>(a.r)[saved]), cv = Tr::load(static_cast<const S*>(a.c)[saved]);
  const bool mul = p.merge == kMergeMul;
  const A dc = grad(a.grad_c) + (mul ? go * rv : go) + acc;
  static_cast<S*>(a.dg)[at.img * a.s_dp + at.e] = Tr::store(dc * act_t_grad(p.act_t, cv));
  static_cast<S*>(a.dpr)[at.img * a.s_dp + at.e] = Tr::store((mul ? go * cv : go) * act_r_grad(p.act_r, rv));
}

// dc_0 = convT(dG_0, W_tc) for one output.
template <typename Tr>
DEEPRNN_HD void initial_state_epilogue(typename Tr::acc acc, const BackwardArgs& a, const Problem& p, int row,
                                       int ci) {
  if (row >= p.rows() || ci >= p.C) return;
  const Output at = output_at(p, 0, row, ci);  // step 0: the image index is b, as in (B, C, H, W)
  static_cast<typename Tr::storage*>(a.dc0)[at.img * p.C * p.hw() + at.e] = Tr::store(acc);
}

// ------------------------------------------------------------------------------------------------------------
// One tile of one step, for an executor Ex: Ex::each(f) runs f(tid, regs) for the block's threads and then
// synchronises them; Ex::Regs is one thread's accumulator state; Ex::Mma (MMA path) provides zero(regs),
// chunk(regs, a, w, L, k_row0, width, tid) and store(regs, cs, L, tid), collective per warp.

template <bool MMA, typename Ex>
DEEPRNN_HD void zero_accumulators(Ex& ex) {
  ex.each([&](int, typename Ex::Regs& regs) {
    if constexpr (MMA) {
      Ex::Mma::zero(regs);
    } else {
      for (int i = 0; i < kPerThread; ++i) regs.acc[i] = 0;
    }
  });
}

// Convolution of the tile at rows m0.. into the threads' accumulators: every tap, every chunk of input channels.
template <typename Tr, bool MMA, typename Ex>
DEEPRNN_HD void conv_tile(Ex& ex, typename Tr::storage* a, const typename Tr::storage* w, const Layout& L,
                          const typename Tr::storage* src, int64_t s_img, const Problem& p, int sign, int m0) {
  using Regs = typename Ex::Regs;
  zero_accumulators<MMA>(ex);
  for (int kh = 0; kh < p.KS; ++kh) {
    for (int kw = 0; kw < p.KS; ++kw) {
      const int tap = kh * p.KS + kw;
      for (int c_begin = 0; c_begin < p.C; c_begin += kKC) {
        ex.each([&](int tid, Regs&) { load_a_chunk(a, L, src, s_img, p, sign, m0, kh, kw, c_begin, tid); });
        const int k_row0 = tap * p.C + c_begin, width = chunk_width(p, c_begin);
        ex.each([&](int tid, Regs& regs) {
          if constexpr (MMA) {
            Ex::Mma::chunk(regs, a, w, L, k_row0, width, tid);
          } else {
            fma_chunk<Tr>(regs.acc, a, w, L, k_row0, width, tid);
          }
        });
      }
    }
  }
}

// Runs epi(acc, row, col) on every output of the tile (the MMA path goes through the float tile in shared memory).
template <typename Tr, bool MMA, typename Ex, typename Epi>
DEEPRNN_HD void tile_epilogue(Ex& ex, float* cs, const Layout& L, int m0, int n0, Epi epi) {
  using Regs = typename Ex::Regs;
  if constexpr (MMA) {
    ex.each([&](int tid, Regs& regs) { Ex::Mma::store(regs, cs, L, tid); });
    ex.each([&](int tid, Regs&) {
      for (int i = 0; i < kPerThread; ++i) {
        const int m = out_row(tid, i), n = out_col(tid);
        epi(typename Tr::acc(cs[m * L.ldc + n]), m0 + m, n0 + n);
      }
    });
  } else {
    ex.each([&](int tid, Regs& regs) {
      for (int i = 0; i < kPerThread; ++i) epi(regs.acc[i], m0 + out_row(tid, i), n0 + out_col(tid));
    });
  }
}

template <typename Tr, bool MMA, typename Ex>
DEEPRNN_HD void block_setup(Ex& ex, unsigned char* smem, const Layout& L, const void* wp, const Problem& p,
                            const BlockWork& bw) {
  using S = typename Tr::storage;
  ex.each([&](int tid, typename Ex::Regs&) {
    load_weight_slice(reinterpret_cast<S*>(smem + L.w_off), L, static_cast<const S*>(wp), p, bw.n0, tid);
  });
}

// Step t of the forward recurrence for one block: every tile it owns.
template <typename Tr, bool MMA, typename Ex>
DEEPRNN_HD void forward_block_step(Ex& ex, unsigned char* smem, const Layout& L, const ForwardArgs& args,
                                   const Problem& p, const BlockWork& bw, int t) {
  using S = typename Tr::storage;
  S* w = reinterpret_cast<S*>(smem + L.w_off);
  S* a = reinterpret_cast<S*>(smem + L.a_off);
  float* cs = reinterpret_cast<float*>(smem + L.c_off);
  const int64_t chw = int64_t(p.C) * p.hw();
  const S* src = t == 0 ? static_cast<const S*>(args.c0) : static_cast<const S*>(args.c) + (int64_t(t) - 1) * p.B * chw;
  for (int tile = bw.first; tile < p.row_tiles(); tile += bw.stride) {
    const int m0 = tile * kBM;
    conv_tile<Tr, MMA>(ex, a, w, L, src, chw, p, +1, m0);
    tile_epilogue<Tr, MMA>(ex, cs, L, m0, bw.n0, [&](typename Tr::acc acc, int row, int co) {
      forward_epilogue<Tr>(acc, args, p, t, row, co);
    });
  }
}

// Step t of the backward recurrence (t = -1: the final pass that writes dc_0).
template <typename Tr, bool MMA, typename Ex>
DEEPRNN_HD void backward_block_step(Ex& ex, unsigned char* smem, const Layout& L, const BackwardArgs& args,
                                    const Problem& p, const BlockWork& bw, int t) {
  using S = typename Tr::storage;
  S* w = reinterpret_cast<S*>(smem + L.w_off);
  S* a = reinterpret_cast<S*>(smem + L.a_off);
  float* cs = reinterpret_cast<float*>(smem + L.c_off);
  const S* src = static_cast<const S*>(args.dg) + (int64_t(t) + 1) * p.B * args.s_dp;  // dG_{t+1}
  for (int tile = bw.first; tile < p.row_tiles(); tile += bw.stride) {
    const int m0 = tile * kBM;
    if (t + 1 < p.T) {
      conv_tile<Tr, MMA>(ex, a, w, L, src, args.s_dp, p, -1, m0);
    } else {
      zero_accumulators<MMA>(ex);  // no gradient from beyond the last step
    }
    tile_epilogue<Tr, MMA>(ex, cs, L, m0, bw.n0, [&](typename Tr::acc acc, int row, int ci) {
      if (t >= 0) {
        backward_epilogue<Tr>(acc, args, p, t, row, ci);
      } else {
        initial_state_epilogue<Tr>(acc, args, p, row, ci);
      }
    });
  }
}

}  // namespace persistent
}  // namespace deeprnn
