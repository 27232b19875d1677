// CUDA epilogues of the ConvLSTM and ConvGRU cells: the math of csrc/cpu/cells_cpu.cpp, one thread per element,
// half types computed in float32 (cbm_math.h's number formats and activations). No torch headers here.
// NEVER RUN ON A GPU: compiled with nvcc only; tests/test_cuda_cells.py checks them against the reference.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "cbm_math.h"
#include "cells_kernels.h"

namespace deeprnn {
namespace cuda_kernels {
namespace {

using namespace cbm_math;

constexpr int kThreads = 256;

template <typename A>
__device__ __forceinline__ A sigmoid_(A z) {
  return act_t_fn<kActTSigmoid>(z);
}

// The element math of each epilogue: load(k) reads operand k, store(k, v) writes it (outputs first, as in
// cells_kernels.h). Everything is loaded before anything is stored: outputs may alias inputs.
template <CellEpilogue E>
struct Body;

template <>
struct Body<CellEpilogue::kLstmForward> {
  // 0-3 gates i, f, o, g | 4 c | 5 h | 6-9 p | 10-13 rec | 14 c_prev
  template <typename A, typename L, typename S>
  __device__ static void run(L load, S store) {
    const A i = sigmoid_(load(6) + load(10)), f = sigmoid_(load(7) + load(11));
    const A o = sigmoid_(load(8) + load(12)), g = tanh_(load(9) + load(13));
    const A c = f * load(14) + i * g;
    store(0, i), store(1, f), store(2, o), store(3, g), store(4, c), store(5, o * tanh_(c));
  }
};

template <>
struct Body<CellEpilogue::kLstmBackward> {
  // 0-3 dA i, f, o, g | 4 dc_prev | 5 grad_h | 6 grad_c | 7 dh_next | 8 dc_next | 9-12 gates | 13 c | 14 c_prev
  template <typename A, typename L, typename S>
  __device__ static void run(L load, S store) {
    const A i = load(9), f = load(10), o = load(11), g = load(12), tc = tanh_(load(13)), cp = load(14);
    const A dh = load(5) + load(7);
    const A dc = load(6) + load(8) + dh * o * (A(1) - tc * tc);
    store(0, dc * g * i * (A(1) - i));
    store(1, dc * cp * f * (A(1) - f));
    store(2, dh * tc * o * (A(1) - o));
    store(3, dc * i * (A(1) - g * g));
    store(4, dc * f);
  }
};

template <>
struct Body<CellEpilogue::kGruForwardZr> {
  // 0 z | 1 r | 2 rh | 3 p_z | 4 p_r | 5 u_z | 6 u_r | 7 h_prev
  template <typename A, typename L, typename S>
  __device__ static void run(L load, S store) {
    const A z = sigmoid_(load(3) + load(5)), r = sigmoid_(load(4) + load(6)), rh = r * load(7);
    store(0, z), store(1, r), store(2, rh);
  }
};

template <>
struct Body<CellEpilogue::kGruForwardN> {
  // 0 n | 1 h | 2 p_n | 3 v | 4 z | 5 h_prev
  template <typename A, typename L, typename S>
  __device__ static void run(L load, S store) {
    const A n = tanh_(load(2) + load(3)), z = load(4), h = n + z * (load(5) - n);
    store(0, n), store(1, h);
  }
};

template <>
struct Body<CellEpilogue::kGruBackwardZn> {
  // 0 dA_z | 1 dA_n | 2 dh_acc | 3 grad_h | 4 dh_next | 5 rec_next | 6 z | 7 n | 8 h_prev
  template <typename A, typename L, typename S>
  __device__ static void run(L load, S store) {
    const A dh = load(3) + load(4) + load(5), z = load(6), n = load(7), hp = load(8);
    const A da_z = dh * (hp - n) * z * (A(1) - z), da_n = dh * (A(1) - z) * (A(1) - n * n);
    store(0, da_z), store(1, da_n), store(2, dh * z);
  }
};

template <>
struct Body<CellEpilogue::kGruBackwardR> {
  // 0 dA_r | 1 dh_acc (read and written) | 2 d_rh | 3 r | 4 h_prev
  template <typename A, typename L, typename S>
  __device__ static void run(L load, S store) {
    const A d = load(2), r = load(3), acc = load(1);
    const A da_r = d * load(4) * r * (A(1) - r);
    store(0, da_r), store(1, acc + d * r);
  }
};

template <typename Tr, CellEpilogue E>
__global__ void __launch_bounds__(kThreads) cell_kernel(const CellArgs a) {
  using S = typename Tr::storage;
  using A = typename Tr::acc;
  const int64_t total = a.B * a.inner;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = e / a.inner, j = e - b * a.inner;
    const auto load = [&](int k) { return Tr::load(static_cast<const S*>(a.ptr[k])[b * a.stride[k] + j]); };
    const auto store = [&](int k, A v) { static_cast<S*>(a.ptr[k])[b * a.stride[k] + j] = Tr::store(v); };
    Body<E>::template run<A>(load, store);
  }
}

template <typename Tr>
void launch_for(CellEpilogue epilogue, const CellArgs& a, cudaStream_t stream) {
  const int64_t blocks = std::max<int64_t>(1, std::min<int64_t>((a.B * a.inner + kThreads - 1) / kThreads, 1 << 20));
  switch (epilogue) {
    case CellEpilogue::kLstmForward:
      cell_kernel<Tr, CellEpilogue::kLstmForward><<<blocks, kThreads, 0, stream>>>(a);
      break;
    case CellEpilogue::kLstmBackward:
      cell_kernel<Tr, CellEpilogue::kLstmBackward><<<blocks, kThreads, 0, stream>>>(a);
      break;
    case CellEpilogue::kGruForwardZr:
      cell_kernel<Tr, CellEpilogue::kGruForwardZr><<<blocks, kThreads, 0, stream>>>(a);
      break;
    case CellEpilogue::kGruForwardN:
      cell_kernel<Tr, CellEpilogue::kGruForwardN><<<blocks, kThreads, 0, stream>>>(a);
      break;
    case CellEpilogue::kGruBackwardZn:
      cell_kernel<Tr, CellEpilogue::kGruBackwardZn><<<blocks, kThreads, 0, stream>>>(a);
      break;
    case CellEpilogue::kGruBackwardR:
      cell_kernel<Tr, CellEpilogue::kGruBackwardR><<<blocks, kThreads, 0, stream>>>(a);
      break;
  }
}

}  // namespace

void launch_cell_epilogue(DType dtype, CellEpilogue epilogue, const CellArgs& a, cudaStream_t stream) {
  if (a.B * a.inner == 0) return;
  switch (dtype) {
    case DType::kDouble: launch_for<F64>(epilogue, a, stream); break;
    case DType::kHalf: launch_for<F16>(epilogue, a, stream); break;
    case DType::kBFloat16: launch_for<BF16>(epilogue, a, stream); break;
    default: launch_for<F32>(epilogue, a, stream); break;
  }
}

}  // namespace cuda_kernels
}  // namespace deeprnn
