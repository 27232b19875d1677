// Device side of the persistent kernels: the thread-block executor for persistent_tile.h, the tensor-core (WMMA)
// tile products, the kernel and its launch planning. Included by cbm_persistent_fwd.cu and cbm_persistent_bwd.cu,
// which instantiate one direction each (so they compile in parallel).
#pragma once

#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <algorithm>
#include <mutex>
#include <type_traits>

#include "cbm_persistent.h"

namespace deeprnn {
namespace persistent {
namespace device {

namespace cg = cooperative_groups;
namespace wmma = nvcuda::wmma;
using cbm_math::F16;
using cuda_kernels::DType;


// bf16 / fp16 tensor cores: 16 x 16 x 16 steps, float accumulators. Needs chunk widths that are multiples of 16.
template <typename T>
struct WmmaHalf {
  static constexpr bool kTensorCores = true;
  struct Regs {
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> c;
  };
  static __device__ __forceinline__ void zero(Regs& r) { wmma::fill_fragment(r.c, 0.0f); }
  static __device__ __forceinline__ void chunk(Regs& r, const unsigned short* a, const unsigned short* w,
                                               const Layout& L, int k_row0, int width, int tid) {
    const T* at = reinterpret_cast<const T*>(a) + warp_row(tid) * L.lda;
    const T* wt = reinterpret_cast<const T*>(w) + warp_col(tid);
    for (int kk = 0; kk < width; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa;
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> fb;
      wmma::load_matrix_sync(fa, at + kk, L.lda);
      wmma::load_matrix_sync(fb, wt + (k_row0 + kk) * L.ldw, L.ldw);
      wmma::mma_sync(r.c, fa, fb, r.c);
    }
  }
  static __device__ __forceinline__ void store(Regs& r, float* cs, const Layout& L, int tid) {
    wmma::store_matrix_sync(cs + warp_row(tid) * L.ldc + warp_col(tid), r.c, L.ldc, wmma::mem_row_major);
  }
};

// float32 on TF32 tensor cores (only when the caller allows TF32): 16 x 16 x 8 steps.
struct WmmaTf32 {
  static constexpr bool kTensorCores = true;
  struct Regs {
    wmma::fragment<wmma::accumulator, 16, 16, 8, float> c;
  };
  static __device__ __forceinline__ void zero(Regs& r) { wmma::fill_fragment(r.c, 0.0f); }
  static __device__ __forceinline__ void chunk(Regs& r, const float* a, const float* w, const Layout& L, int k_row0,
                                               int width, int tid) {
    const float* at = a + warp_row(tid) * L.lda;
    const float* wt = w + warp_col(tid);
    for (int kk = 0; kk < width; kk += 8) {
      wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major> fa;
      wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::row_major> fb;
      wmma::load_matrix_sync(fa, at + kk, L.lda);
      wmma::load_matrix_sync(fb, wt + (k_row0 + kk) * L.ldw, L.ldw);
      for (int i = 0; i < fa.num_elements; ++i) fa.x[i] = wmma::__float_to_tf32(fa.x[i]);
      for (int i = 0; i < fb.num_elements; ++i) fb.x[i] = wmma::__float_to_tf32(fb.x[i]);
      wmma::mma_sync(r.c, fa, fb, r.c);
    }
  }
  static __device__ __forceinline__ void store(Regs& r, float* cs, const Layout& L, int tid) {
    wmma::store_matrix_sync(cs + warp_row(tid) * L.ldc + warp_col(tid), r.c, L.ldc, wmma::mem_row_major);
  }
};

// The executor of persistent_tile.h on a thread block: each thread runs its own index, then the block syncs.
template <typename Tr, typename M>
struct BlockExec {
  using Mma = M;
  using Regs = typename M::Regs;
  Regs regs;
  template <typename F>
  __device__ __forceinline__ void each(F&& f) {
    f(int(threadIdx.x), regs);
    __syncthreads();
  }
};

// The whole recurrence of one direction: Args is ForwardArgs (steps 0..T-1) or BackwardArgs (steps T-1..0, then
// t = -1: dc_0 = convT(dG_0)); a grid-wide barrier after each step, so the next one reads complete neighbours.
template <typename Tr, typename M, typename Args>
__global__ void __launch_bounds__(kThreads) recurrence_kernel(const Args args, const Problem p) {
  extern __shared__ __align__(128) unsigned char smem[];
  constexpr bool kMma = M::kTensorCores;
  constexpr bool kForward = std::is_same_v<Args, ForwardArgs>;
  const Layout L = layout(p, int(sizeof(typename Tr::storage)), kMma);
  const BlockWork bw = block_work(p, int(blockIdx.x), int(gridDim.x));
  BlockExec<Tr, M> ex;
  block_setup<Tr, kMma>(ex, smem, L, args.wp, p, bw);
  cg::grid_group grid = cg::this_grid();
  const int first = kForward ? 0 : p.T - 1, last = kForward ? p.T - 1 : -1, step = kForward ? 1 : -1;
  for (int t = first;; t += step) {
    if constexpr (kForward) {
      forward_block_step<Tr, kMma>(ex, smem, L, args, p, bw, t);
    } else {
      backward_block_step<Tr, kMma>(ex, smem, L, args, p, bw, t);
    }
    if (t == last) break;
    __threadfence();
    grid.sync();
  }
}

// Calls fn(Tr{}, M{}) with the number format of dtype and the tile product: tensor cores for bf16 / fp16, and for
// float32 when TF32 is allowed, whenever C is a multiple of 16 (whole 16-channel WMMA steps); FMA otherwise.
template <typename F>
void dispatch(DType dtype, bool allow_tf32, const Problem& p, F&& fn) {
  const bool mma_shape = p.C % 16 == 0;
  switch (dtype) {
    case DType::kDouble: fn(F64{}, Fma<double>{}); break;
    case DType::kHalf: mma_shape ? fn(F16{}, WmmaHalf<__half>{}) : fn(F16{}, Fma<float>{}); break;
    case DType::kBFloat16: mma_shape ? fn(BF16{}, WmmaHalf<__nv_bfloat16>{}) : fn(BF16{}, Fma<float>{}); break;
    default: (mma_shape && allow_tf32) ? fn(F32{}, WmmaTf32{}) : fn(F32{}, Fma<float>{}); break;
  }
}

// Raises the kernel's dynamic shared-memory limit on device dev to the device's opt-in maximum, once per kernel and
// device: a per-call value would race between host threads planning different shapes (one thread's smaller limit
// landing between another's planning and launch). Returns the status of that one call.
template <typename Tr, typename M, typename Args>
cudaError_t opt_in_max_smem(int dev, int max_smem) {
  constexpr int kMaxDevices = 64;
  static std::once_flag once[kMaxDevices];
  static cudaError_t status[kMaxDevices];
  if (dev < 0 || dev >= kMaxDevices) return cudaErrorInvalidDevice;
  std::call_once(once[dev], [&] {
    status[dev] = cudaFuncSetAttribute(reinterpret_cast<const void*>(&recurrence_kernel<Tr, M, Args>),
                                       cudaFuncAttributeMaxDynamicSharedMemorySize, max_smem);
  });
  return status[dev];
}

// Grid and shared memory for the kernel of Args on the current device (see plan_forward in cbm_persistent.h).
template <typename Args>
bool plan(DType dtype, bool allow_tf32, const Problem& p, Plan* out) {
  if (p.T <= 0 || p.rows() <= 0 || p.C <= 0) return false;
  int dev = 0, coop = 0, max_smem = 0, sms = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  bool ok = false;
  dispatch(dtype, allow_tf32, p, [&](auto tr, auto mma) {
    using Tr = decltype(tr);
    using M = decltype(mma);
    const void* kernel = reinterpret_cast<const void*>(&recurrence_kernel<Tr, M, Args>);
    const Layout L = layout(p, int(sizeof(typename Tr::storage)), M::kTensorCores);
    int per_sm = 0;
    if (!coop || L.bytes > max_smem || opt_in_max_smem<Tr, M, Args>(dev, max_smem) != cudaSuccess ||
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, size_t(L.bytes)) != cudaSuccess) {
      (void)cudaGetLastError();
      return;
    }
    const int slices = p.channel_slices();
    const int per_slice = std::min(p.row_tiles(), per_sm * sms / slices);
    if (per_slice < 1) return;
    *out = Plan{slices * per_slice, L.bytes, M::kTensorCores};
    ok = true;
  });
  return ok;
}

template <typename Args>
cudaError_t launch(DType dtype, const Plan& plan, const Problem& p, const Args& args, cudaStream_t stream) {
  cudaError_t status = cudaErrorInvalidValue;
  dispatch(dtype, plan.mma, p, [&](auto tr, auto mma) {
    using Tr = decltype(tr);
    using M = decltype(mma);
    if (plan.mma != M::kTensorCores) return;  // the plan was made for another tile product
    void* params[] = {const_cast<Args*>(&args), const_cast<Problem*>(&p)};
    status = cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(&recurrence_kernel<Tr, M, Args>),
                                         dim3(plan.grid), dim3(kThreads), params, size_t(plan.smem), stream);
  });
  return status;
}

}  // namespace device
}  // namespace persistent
}  // namespace deeprnn
