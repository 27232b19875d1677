// Torch-free interface of the CUDA epilogues of the ConvLSTM and ConvGRU cells (csrc/cuda/cells_kernels.cu);
// csrc/cuda/cells_cuda.cpp wraps them for the LstmStepKernels / GruStepKernels tables of csrc/cells.h.
// NEVER RUN ON A GPU: written and compiled with nvcc without one; tests/test_cuda_cells.py is their first check.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernel_args.h"

namespace deeprnn {
namespace cuda_kernels {

// Enqueue one epilogue on `stream` (nothing when B * inner == 0); the caller checks the launch.
void launch_cell_epilogue(DType dtype, CellEpilogue epilogue, const CellArgs& args, cudaStream_t stream);

}  // namespace cuda_kernels
}  // namespace deeprnn
