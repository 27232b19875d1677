// Host emulation of the persistent CBM kernels (csrc/cuda/cbm_persistent_impl.cuh) for tests on a machine without a
// GPU: the same tile code (csrc/cuda/persistent_tile.h) run block by block, every thread index of a phase in turn,
// the grid-wide barrier being the end of a step. The tensor-core products are replaced by a plain 16 x 16 product on
// the same shared-memory pointers and leading dimensions, checking the WMMA rules (32-byte aligned pointers, leading
// dimensions in multiples of 16 bytes, whole k-steps) as it goes. Shared memory is a 128-byte aligned buffer of
// exactly Layout::bytes with a guard zone behind it. Plain C ABI for ctypes; built by tests/test_persistent_tiles.py.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "persistent_tile.h"

using namespace deeprnn::persistent;

namespace {

enum Error { kOk = 0, kBadGrid = 1, kWmmaRule = 2, kSmemOverflow = 3, kBadDtype = 4 };
int g_error = kOk;

void fail(int code) {
  if (g_error == kOk) g_error = code;
}


bool aligned32(const void* p) { return reinterpret_cast<uintptr_t>(p) % 32 == 0; }

// WMMA stand-in: KSTEP = 8 (TF32) or 16 (bf16 / fp16); only lane 0 of a warp computes (the warp's fragment).
template <typename Tr, int KSTEP>
struct HostMma {
  static constexpr bool kTensorCores = true;
  using S = typename Tr::storage;
  struct Regs {
    float c[16 * 16];
  };
  static void zero(Regs& r) { std::memset(r.c, 0, sizeof(r.c)); }
  static void chunk(Regs& r, const S* a, const S* w, const Layout& L, int k_row0, int width, int tid) {
    if (tid % 32 != 0) return;
    if (width % KSTEP != 0 || (L.lda * sizeof(S)) % 16 != 0 || (L.ldw * sizeof(S)) % 16 != 0) fail(kWmmaRule);
    const S* at = a + warp_row(tid) * L.lda;
    const S* wt = w + warp_col(tid);
    for (int kk = 0; kk < width; kk += KSTEP) {
      const S* pa = at + kk;
      const S* pb = wt + (k_row0 + kk) * L.ldw;
      if (!aligned32(pa) || !aligned32(pb)) fail(kWmmaRule);
      for (int i = 0; i < 16; ++i) {
        for (int j = 0; j < 16; ++j) {
          float s = r.c[i * 16 + j];
          for (int k = 0; k < KSTEP; ++k) s += float(Tr::load(pa[i * L.lda + k])) * float(Tr::load(pb[k * L.ldw + j]));
          r.c[i * 16 + j] = s;
        }
      }
    }
  }
  static void store(Regs& r, float* cs, const Layout& L, int tid) {
    if (tid % 32 != 0) return;
    float* p = cs + warp_row(tid) * L.ldc + warp_col(tid);
    if (!aligned32(p) || L.ldc % 4 != 0) fail(kWmmaRule);
    for (int i = 0; i < 16; ++i) {
      for (int j = 0; j < 16; ++j) p[i * L.ldc + j] = r.c[i * 16 + j];
    }
  }
};

template <typename M>
struct HostExec {
  using Mma = M;
  using Regs = typename M::Regs;
  std::vector<Regs> regs = std::vector<Regs>(kThreads);
  template <typename F>
  void each(F&& f) {
    for (int tid = 0; tid < kThreads; ++tid) f(tid, regs[tid]);
  }
};

constexpr int kGuard = 256;
constexpr unsigned char kGuardByte = 0xA5;

struct Smem {
  unsigned char* base = nullptr;
  int64_t bytes = 0;
  explicit Smem(int64_t n) : bytes(n) {
    base = static_cast<unsigned char*>(std::aligned_alloc(128, size_t((n + kGuard + 127) / 128 * 128)));
    std::memset(base, 0x7f, size_t(n));  // garbage, as real shared memory holds
    std::memset(base + n, kGuardByte, kGuard);
  }
  Smem(const Smem&) = delete;
  ~Smem() { std::free(base); }
  bool guard_intact() const {
    for (int i = 0; i < kGuard; ++i) {
      if (base[bytes + i] != kGuardByte) return false;
    }
    return true;
  }
};

Problem problem(const int* d) { return Problem{d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7], d[8]}; }

// Runs every block of the grid through all steps; Step(ex, smem, block work, t) is one block's step.
template <typename Tr, typename M, typename Step>
int run_grid(const Problem& p, int grid, bool reverse, const void* wp, int first_t, int last_t, int dt, Step step) {
  g_error = kOk;
  if (grid <= 0 || grid % p.channel_slices() != 0) return kBadGrid;
  const Layout L = layout(p, int(sizeof(typename Tr::storage)), M::kTensorCores);
  std::vector<HostExec<M>> ex(grid);
  std::vector<Smem*> smem;
  for (int b = 0; b < grid; ++b) {
    smem.push_back(new Smem(L.bytes));
    block_setup<Tr, M::kTensorCores>(ex[b], smem[b]->base, L, wp, p, block_work(p, b, grid));
  }
  for (int t = first_t; t != last_t + dt; t += dt) {
    for (int i = 0; i < grid; ++i) {
      const int b = reverse ? grid - 1 - i : i;
      step(ex[b], smem[b]->base, L, block_work(p, b, grid), t);
    }
  }
  for (Smem* s : smem) {
    if (!s->guard_intact()) fail(kSmemOverflow);
    delete s;
  }
  return g_error;
}

// Calls fn(Tr{}, M{}) for dtype code (0 float32, 1 float64, 3 bfloat16: cuda_kernels::DType) and the product.
template <typename F>
int dispatch(int dtype, bool mma, F&& fn) {
  switch (dtype) {
    case 0: return mma ? fn(F32{}, HostMma<F32, 8>{}) : fn(F32{}, Fma<float>{});
    case 1: return mma ? kBadDtype : fn(F64{}, Fma<double>{});
    case 3: return mma ? fn(BF16{}, HostMma<BF16, 16>{}) : fn(BF16{}, Fma<float>{});
    default: return kBadDtype;
  }
}

}  // namespace

extern "C" {

// dims: T, B, C, H, W, KS, act_r, act_t, merge. Returns 0 or an Error code.
int deeprnn_emulate_forward(int dtype, int mma, int grid, int reverse, const int* dims, const void* p_r,
                            const void* p_x, int64_t s_p, const void* wp, const void* c0, void* r, void* c, void* o) {
  const Problem p = problem(dims);
  const ForwardArgs args{p_r, p_x, s_p, wp, c0, r, c, o};
  return dispatch(dtype, mma != 0, [&](auto tr, auto m) {
    using Tr = decltype(tr);
    using M = decltype(m);
    return run_grid<Tr, M>(p, grid, reverse != 0, wp, 0, p.T - 1, +1,
                           [&](HostExec<M>& ex, unsigned char* smem, const Layout& L, const BlockWork& bw, int t) {
                             forward_block_step<Tr, M::kTensorCores>(ex, smem, L, args, p, bw, t);
                           });
  });
}

// strides: grad_o (s_t, s_b, s_e), then grad_c (s_t, s_b, s_e).
int deeprnn_emulate_backward(int dtype, int mma, int grid, int reverse, const int* dims, const void* grad_o,
                             const void* grad_c, const int64_t* strides, const void* r, const void* c,
                             const void* wp, void* dg, void* dpr, int64_t s_dp, void* dc0) {
  const Problem p = problem(dims);
  const BackwardArgs args{Strided{grad_o, strides[0], strides[1], strides[2]},
                          Strided{grad_c, strides[3], strides[4], strides[5]}, r, c, wp, dg, dpr, s_dp, dc0};
  return dispatch(dtype, mma != 0, [&](auto tr, auto m) {
    using Tr = decltype(tr);
    using M = decltype(m);
    return run_grid<Tr, M>(p, grid, reverse != 0, wp, p.T - 1, -1, -1,
                           [&](HostExec<M>& ex, unsigned char* smem, const Layout& L, const BlockWork& bw, int t) {
                             backward_block_step<Tr, M::kTensorCores>(ex, smem, L, args, p, bw, t);
                           });
  });
}

// strided_layout for a (T, B, C, H, W) gradient: 1 with out = (s_t, s_b, s_e) when the kernels read it in place.
int deeprnn_strided_layout(const int64_t* sizes, const int64_t* strides, int64_t* out) {
  Strided view{};
  if (!strided_layout(nullptr, sizes, strides, &view)) return 0;
  out[0] = view.s_t;
  out[1] = view.s_b;
  out[2] = view.s_e;
  return 1;
}

// Layout::bytes for dims in dtype (element size) with or without the MMA tile (what the GPU must provide).
int64_t deeprnn_persistent_smem_bytes(int elem_bytes, int mma, const int* dims) {
  return layout(problem(dims), elem_bytes, mma != 0).bytes;
}

}  // extern "C"
