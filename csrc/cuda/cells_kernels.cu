// CUDA epilogues of the ConvLSTM and ConvGRU cells: one thread per element, half types computed in float32. The
// element work (epilogue_bodies.h) is shared with the host executor that runs it in CI (csrc/cpu/cuda_emulation.cpp);
// this file adds only the grid-stride walk and the launch. No torch headers here.
// NEVER RUN ON A GPU: compiled with nvcc only; tests/test_cuda_cells.py checks them against the reference.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "cells_kernels.h"
#include "epilogue_bodies.h"

namespace deeprnn {
namespace cuda_kernels {
namespace {

using namespace bodies;

constexpr int kThreads = 256;

template <typename Tr, CellEpilogue E>
__global__ void __launch_bounds__(kThreads) cell_kernel(const CellArgs a) {
  const int64_t total = a.B * a.inner;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    cell_at<Tr, E>(a, e);
  }
}

}  // namespace

void launch_cell_epilogue(DType dtype, CellEpilogue epilogue, const CellArgs& a, cudaStream_t stream) {
  if (a.B * a.inner == 0) return;
  const int64_t blocks = std::max<int64_t>(1, std::min<int64_t>((a.B * a.inner + kThreads - 1) / kThreads, 1 << 20));
  dispatch_dtype(dtype, [&](auto tr) {
    dispatch_epilogue(epilogue, [&](auto e) {
      cell_kernel<decltype(tr), decltype(e)::value><<<blocks, kThreads, 0, stream>>>(a);
    });
  });
}

}  // namespace cuda_kernels
}  // namespace deeprnn
