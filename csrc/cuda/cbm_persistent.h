// Torch-free interface of the persistent CBM recurrence kernels (csrc/cuda/cbm_persistent_*.cu): one cooperative
// launch runs all T steps of the forward (or backward) recurrence, the recurrent weights staying in shared memory
// and a grid-wide barrier separating the steps. The tile code is csrc/cuda/persistent_tile.h.
#pragma once

#include <cuda_runtime.h>

#include "cbm_kernels.h"
#include "persistent_tile.h"

namespace deeprnn {
namespace persistent {

struct Plan {
  int grid = 0;        // blocks (a multiple of Problem::channel_slices(), all co-resident)
  int64_t smem = 0;    // dynamic shared memory per block, bytes
  bool mma = false;    // tensor cores (WMMA): bf16/fp16, or float32 as TF32 when allowed
};

// Plans a launch of problem p in dtype on the current device; false (nothing to launch) when the device cannot do
// cooperative launches, the weight slice does not fit in shared memory or not one block per channel slice fits.
// allow_tf32 lets float32 use TF32 tensor cores.
bool plan_forward(cuda_kernels::DType dtype, bool allow_tf32, const Problem& p, Plan* plan);
bool plan_backward(cuda_kernels::DType dtype, bool allow_tf32, const Problem& p, Plan* plan);

// Enqueue the cooperative launch on `stream`; returns the launch status (the caller checks it).
cudaError_t launch_forward(cuda_kernels::DType dtype, const Plan& plan, const Problem& p, const ForwardArgs& args,
                           cudaStream_t stream);
cudaError_t launch_backward(cuda_kernels::DType dtype, const Plan& plan, const Problem& p, const BackwardArgs& args,
                            cudaStream_t stream);

}  // namespace persistent
}  // namespace deeprnn
