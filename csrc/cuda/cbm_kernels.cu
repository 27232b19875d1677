// CUDA kernels of the CBM ops: the fused per-step epilogues of docs/design.md section 1.
//
// forward:  G = P_x + rec;  c = act_t(G);  r = act_r(P_r);  o = merge(r, c)            (one pass, one launch)
// backward: dc = dO * dmerge/dc + dC + rec;  dG = dc * act_t'(c);  dP_r = dO * dmerge/dr * act_r'(r)
//
// act_r / act_t / merge are template parameters (a compile-time switch over the runtime codes, like mamba's
// BOOL_SWITCH); half types are stored as 16-bit words and computed in float32; double stays double. When every
// pointer is 16-byte aligned and every batch stride and the inner size are multiples of the vector width, each
// thread moves 16 bytes per tensor per iteration. No torch headers here: see cbm_kernels.h.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "cbm_kernels.h"
#include "cbm_math.h"

namespace deeprnn {
namespace cuda_kernels {
namespace {

using namespace cbm_math;  // option codes, number formats, activations (shared with the persistent kernels)

template <typename S, int N>
struct alignas(sizeof(S) * N) Pack {
  S v[N];
};

template <typename S, int VEC>
__device__ __forceinline__ Pack<S, VEC> load_pack(const void* base, int64_t offset) {
  return *reinterpret_cast<const Pack<S, VEC>*>(static_cast<const S*>(base) + offset);
}

template <typename S, int VEC>
__device__ __forceinline__ void store_pack(void* base, int64_t offset, const Pack<S, VEC>& p) {
  *reinterpret_cast<Pack<S, VEC>*>(static_cast<S*>(base) + offset) = p;
}

constexpr int kThreads = 256;

template <typename Tr, int VEC, int ACT_R, int ACT_T, int MERGE>
__global__ void __launch_bounds__(kThreads) forward_kernel(const ForwardArgs a) {
  using S = typename Tr::storage;
  using A = typename Tr::acc;
  const int64_t nv = a.inner / VEC;
  const int64_t total = a.B * nv;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = i / nv;
    const int64_t j = (i - b * nv) * VEC;
    const auto pr = load_pack<S, VEC>(a.p_r, b * a.s_pr + j);
    const auto px = load_pack<S, VEC>(a.p_x, b * a.s_px + j);
    const auto rc = load_pack<S, VEC>(a.rec, b * a.s_rec + j);
    Pack<S, VEC> r, c, o;
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      const A rv = act_r_fn<ACT_R>(Tr::load(pr.v[k]));
      const A cv = act_t_fn<ACT_T>(Tr::load(px.v[k]) + Tr::load(rc.v[k]));
      r.v[k] = Tr::store(rv);
      c.v[k] = Tr::store(cv);
      o.v[k] = Tr::store(MERGE == kMergeMul ? rv * cv : rv + cv);
    }
    store_pack<S, VEC>(a.r, b * a.s_r + j, r);
    store_pack<S, VEC>(a.c, b * a.s_c + j, c);
    store_pack<S, VEC>(a.o, b * a.s_o + j, o);
  }
}

template <typename Tr, int VEC, int ACT_R, int ACT_T, int MERGE>
__global__ void __launch_bounds__(kThreads) backward_kernel(const BackwardArgs a) {
  using S = typename Tr::storage;
  using A = typename Tr::acc;
  const int64_t nv = a.inner / VEC;
  const int64_t total = a.B * nv;
  const bool has_rec = a.rec != nullptr;  // uniform over the grid
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = i / nv;
    const int64_t j = (i - b * nv) * VEC;
    const auto go = load_pack<S, VEC>(a.grad_o, b * a.s_go + j);
    const auto gc = load_pack<S, VEC>(a.grad_c, b * a.s_gc + j);
    const auto rp = load_pack<S, VEC>(a.r, b * a.s_r + j);
    const auto cp = load_pack<S, VEC>(a.c, b * a.s_c + j);
    Pack<S, VEC> rc;
    if (has_rec) rc = load_pack<S, VEC>(a.rec, b * a.s_rec + j);
    Pack<S, VEC> dg, dpr;
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      const A g = Tr::load(go.v[k]), rv = Tr::load(rp.v[k]), cv = Tr::load(cp.v[k]);
      A dc = Tr::load(gc.v[k]) + (MERGE == kMergeMul ? g * rv : g);
      if (has_rec) dc += Tr::load(rc.v[k]);
      dg.v[k] = Tr::store(dc * act_t_grad<ACT_T>(cv));
      dpr.v[k] = Tr::store((MERGE == kMergeMul ? g * cv : g) * act_r_grad<ACT_R>(rv));
    }
    store_pack<S, VEC>(a.dG, b * a.s_dG + j, dg);
    store_pack<S, VEC>(a.dP_r, b * a.s_dPr + j, dpr);
  }
}

template <int V>
using IC = std::integral_constant<int, V>;

// Runtime option codes -> template arguments.
template <typename F>
void dispatch_options(int act_r, int act_t, int merge, F&& fn) {
  auto with_merge = [&](auto ar, auto at) {
    if (merge == kMergeAdd) {
      fn(ar, at, IC<kMergeAdd>{});
    } else {
      fn(ar, at, IC<kMergeMul>{});
    }
  };
  auto with_act_t = [&](auto ar) {
    if (act_t == kActTRelu) {
      with_merge(ar, IC<kActTRelu>{});
    } else {
      with_merge(ar, IC<kActTSigmoid>{});
    }
  };
  switch (act_r) {
    case kActRRelu: with_act_t(IC<kActRRelu>{}); break;
    case kActRTanh: with_act_t(IC<kActRTanh>{}); break;
    default: with_act_t(IC<kActRIdentity>{}); break;
  }
}

template <typename F>
void dispatch_dtype(DType dtype, F&& fn) {
  switch (dtype) {
    case DType::kDouble: fn(F64{}); break;
    case DType::kHalf: fn(F16{}); break;
    case DType::kBFloat16: fn(BF16{}); break;
    default: fn(F32{}); break;
  }
}

bool aligned16(const void* p) { return p == nullptr || reinterpret_cast<uintptr_t>(p) % 16 == 0; }

int64_t grid_for(int64_t work) {
  const int64_t blocks = (work + kThreads - 1) / kThreads;
  return std::max<int64_t>(1, std::min<int64_t>(blocks, int64_t(1) << 20));
}

}  // namespace

bool launch_forward(DType dtype, int act_r, int act_t, int merge, const ForwardArgs& a, cudaStream_t stream) {
  if (a.B * a.inner == 0) return false;
  bool vectorized = false;
  dispatch_dtype(dtype, [&](auto tr) {
    using Tr = decltype(tr);
    constexpr int VEC = 16 / int(sizeof(typename Tr::storage));
    vectorized = a.inner % VEC == 0 && a.s_pr % VEC == 0 && a.s_px % VEC == 0 && a.s_rec % VEC == 0 &&
                 a.s_r % VEC == 0 && a.s_c % VEC == 0 && a.s_o % VEC == 0 && aligned16(a.p_r) && aligned16(a.p_x) &&
                 aligned16(a.rec) && aligned16(a.r) && aligned16(a.c) && aligned16(a.o);
    dispatch_options(act_r, act_t, merge, [&](auto ar, auto at, auto mg) {
      if (vectorized) {
        forward_kernel<Tr, VEC, decltype(ar)::value, decltype(at)::value, decltype(mg)::value>
            <<<grid_for(a.B * (a.inner / VEC)), kThreads, 0, stream>>>(a);
      } else {
        forward_kernel<Tr, 1, decltype(ar)::value, decltype(at)::value, decltype(mg)::value>
            <<<grid_for(a.B * a.inner), kThreads, 0, stream>>>(a);
      }
    });
  });
  return vectorized;
}

bool launch_backward(DType dtype, int act_r, int act_t, int merge, const BackwardArgs& a, cudaStream_t stream) {
  if (a.B * a.inner == 0) return false;
  bool vectorized = false;
  dispatch_dtype(dtype, [&](auto tr) {
    using Tr = decltype(tr);
    constexpr int VEC = 16 / int(sizeof(typename Tr::storage));
    vectorized = a.inner % VEC == 0 && a.s_go % VEC == 0 && a.s_gc % VEC == 0 && a.s_rec % VEC == 0 &&
                 a.s_r % VEC == 0 && a.s_c % VEC == 0 && a.s_dG % VEC == 0 && a.s_dPr % VEC == 0 &&
                 aligned16(a.grad_o) && aligned16(a.grad_c) && aligned16(a.rec) && aligned16(a.r) &&
                 aligned16(a.c) && aligned16(a.dG) && aligned16(a.dP_r);
    dispatch_options(act_r, act_t, merge, [&](auto ar, auto at, auto mg) {
      if (vectorized) {
        backward_kernel<Tr, VEC, decltype(ar)::value, decltype(at)::value, decltype(mg)::value>
            <<<grid_for(a.B * (a.inner / VEC)), kThreads, 0, stream>>>(a);
      } else {
        backward_kernel<Tr, 1, decltype(ar)::value, decltype(at)::value, decltype(mg)::value>
            <<<grid_for(a.B * a.inner), kThreads, 0, stream>>>(a);
      }
    });
  });
  return vectorized;
}

}  // namespace cuda_kernels
}  // namespace deeprnn
