// Torch-free interface of the CUDA step epilogues (csrc/cuda/cbm_kernels.cu). Keeping torch headers out
// of the .cu keeps nvcc fast; csrc/cuda/cbm_cuda.cpp wraps these launchers for the StepKernels interface.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernel_args.h"

namespace deeprnn {
namespace cuda_kernels {

// Enqueue one fused epilogue launch on `stream` (nothing is launched when B * inner == 0). The caller checks
// the launch (C10_CUDA_KERNEL_LAUNCH_CHECK). Returns true when the 16-byte vectorized kernel was chosen.
bool launch_forward(DType dtype, int act_r, int act_t, int merge, const ForwardArgs& args, cudaStream_t stream);
bool launch_backward(DType dtype, int act_r, int act_t, int merge, const BackwardArgs& args, cudaStream_t stream);

}  // namespace cuda_kernels
}  // namespace deeprnn
