// Torch-free interface of the CUDA epilogues of the ConvLSTM and ConvGRU cells (csrc/cuda/cells_kernels.cu);
// csrc/cuda/cells_cuda.cpp wraps them for the LstmStepKernels / GruStepKernels tables of csrc/cells.h.
// NEVER RUN ON A GPU: written and compiled with nvcc without one; tests/test_cuda_cells.py is their first check.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cbm_kernels.h"  // DType

namespace deeprnn {
namespace cuda_kernels {

// The fused per-step passes of csrc/cells.h, one kernel each.
enum class CellEpilogue : int { kLstmForward, kLstmBackward, kGruForwardZr, kGruForwardN, kGruBackwardZn, kGruBackwardR };

constexpr int kMaxCellOperands = 15;

// Every operand is (B, C, H, W) with a contiguous (C, H, W) block of `inner` elements per batch entry and its own
// batch stride (in elements); operand order (outputs first) is that of the CPU epilogue of the same name
// (csrc/cpu/cells_cpu.cpp). An output may alias an input exactly (each element is read before it is written).
struct CellArgs {
  void* ptr[kMaxCellOperands];
  int64_t stride[kMaxCellOperands];
  int64_t B, inner;
};

// Enqueue one epilogue on `stream` (nothing when B * inner == 0); the caller checks the launch.
void launch_cell_epilogue(DType dtype, CellEpilogue epilogue, const CellArgs& args, cudaStream_t stream);

}  // namespace cuda_kernels
}  // namespace deeprnn
