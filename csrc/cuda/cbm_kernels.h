// Torch-free interface of the CUDA step epilogues (csrc/cuda/cbm_kernels.cu). Keeping torch headers out
// of the .cu keeps nvcc fast; csrc/cuda/cbm_cuda.cpp wraps these launchers for the StepKernels interface.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace deeprnn {
namespace cuda_kernels {

enum class DType : int { kFloat = 0, kDouble = 1, kHalf = 2, kBFloat16 = 3 };

// Every tensor is (B, C, H, W) with a contiguous (C, H, W) block of `inner` elements per batch entry and its
// own batch stride (in elements): the projections P_r, P_x and the gradients dP_r, dG are channel slices of
// one (B, 2C, H, W) buffer, so their batch stride is 2 * inner.
struct ForwardArgs {
  const void* p_r;
  const void* p_x;
  const void* rec;
  void* r;
  void* c;
  void* o;
  int64_t B, inner;
  int64_t s_pr, s_px, s_rec, s_r, s_c, s_o;
};

struct BackwardArgs {
  const void* grad_o;
  const void* grad_c;
  const void* rec;  // nullptr at the last step (no gradient from the future)
  const void* r;
  const void* c;
  void* dG;
  void* dP_r;
  int64_t B, inner;
  int64_t s_go, s_gc, s_rec, s_r, s_c, s_dG, s_dPr;
};

// Enqueue one fused epilogue launch on `stream` (nothing is launched when B * inner == 0). The caller checks
// the launch (C10_CUDA_KERNEL_LAUNCH_CHECK). Returns true when the 16-byte vectorized kernel was chosen.
bool launch_forward(DType dtype, int act_r, int act_t, int merge, const ForwardArgs& args, cudaStream_t stream);
bool launch_backward(DType dtype, int act_r, int act_t, int merge, const BackwardArgs& args, cudaStream_t stream);

}  // namespace cuda_kernels
}  // namespace deeprnn
