// CUDA kernels of the CBM ops: the fused per-step epilogues of docs/design.md section 1, one launch per step each way.
//
// The work of one index (a 16-byte pack of each tensor where every pointer, stride and the inner size allow it, else
// one element), the vector-width decision and the option dispatch are epilogue_bodies.h's, shared with the host
// executor that runs them in CI (csrc/cpu/cuda_emulation.cpp); this file adds only the grid-stride walk and the
// launch. act_r / act_t / merge are template parameters (a compile-time switch over the runtime codes, like mamba's
// BOOL_SWITCH); half types are stored as 16-bit words and computed in float32; double stays double. No torch
// headers here: see cbm_kernels.h.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "cbm_kernels.h"
#include "epilogue_bodies.h"

namespace deeprnn {
namespace cuda_kernels {
namespace {

using namespace bodies;

constexpr int kThreads = 256;

template <typename Tr, int VEC, int ACT_R, int ACT_T, int MERGE>
__global__ void __launch_bounds__(kThreads) forward_kernel(const ForwardArgs a) {
  const int64_t total = a.B * (a.inner / VEC);
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    cbm_forward_at<Tr, VEC, ACT_R, ACT_T, MERGE>(a, i);
  }
}

template <typename Tr, int VEC, int ACT_R, int ACT_T, int MERGE>
__global__ void __launch_bounds__(kThreads) backward_kernel(const BackwardArgs a) {
  const int64_t total = a.B * (a.inner / VEC);
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    cbm_backward_at<Tr, VEC, ACT_R, ACT_T, MERGE>(a, i);
  }
}

int64_t grid_for(int64_t work) {
  const int64_t blocks = (work + kThreads - 1) / kThreads;
  return std::max<int64_t>(1, std::min<int64_t>(blocks, int64_t(1) << 20));
}

}  // namespace

bool launch_forward(DType dtype, int act_r, int act_t, int merge, const ForwardArgs& a, cudaStream_t stream) {
  if (a.B * a.inner == 0) return false;
  bool vec = false;
  dispatch_dtype(dtype, [&](auto tr) {
    using Tr = decltype(tr);
    constexpr int VEC = kVec<Tr>;
    vec = vectorized<Tr>(a);
    dispatch_options(act_r, act_t, merge, [&](auto ar, auto at, auto mg) {
      if (vec) {
        forward_kernel<Tr, VEC, decltype(ar)::value, decltype(at)::value, decltype(mg)::value>
            <<<grid_for(a.B * (a.inner / VEC)), kThreads, 0, stream>>>(a);
      } else {
        forward_kernel<Tr, 1, decltype(ar)::value, decltype(at)::value, decltype(mg)::value>
            <<<grid_for(a.B * a.inner), kThreads, 0, stream>>>(a);
      }
    });
  });
  return vec;
}

bool launch_backward(DType dtype, int act_r, int act_t, int merge, const BackwardArgs& a, cudaStream_t stream) {
  if (a.B * a.inner == 0) return false;
  bool vec = false;
  dispatch_dtype(dtype, [&](auto tr) {
    using Tr = decltype(tr);
    constexpr int VEC = kVec<Tr>;
    vec = vectorized<Tr>(a);
    dispatch_options(act_r, act_t, merge, [&](auto ar, auto at, auto mg) {
      if (vec) {
        backward_kernel<Tr, VEC, decltype(ar)::value, decltype(at)::value, decltype(mg)::value>
            <<<grid_for(a.B * (a.inner / VEC)), kThreads, 0, stream>>>(a);
      } else {
        backward_kernel<Tr, 1, decltype(ar)::value, decltype(at)::value, decltype(mg)::value>
            <<<grid_for(a.B * a.inner), kThreads, 0, stream>>>(a);
      }
    });
  });
  return vec;
}

}  // namespace cuda_kernels
}  // namespace deeprnn
