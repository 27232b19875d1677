// The persistent backward recurrence: every step of dG_t, dP_r[t] (and finally dc_0) in one cooperative launch.
// See persistent_tile.h (the tile work) and cbm_persistent_impl.cuh (the device side).
#include "cbm_persistent_impl.cuh"

namespace deeprnn {
namespace persistent {

bool plan_backward(cuda_kernels::DType dtype, bool allow_tf32, const Problem& p, Plan* plan) {
  return device::plan<BackwardArgs>(dtype, allow_tf32, p, plan);
}

cudaError_t launch_backward(cuda_kernels::DType dtype, const Plan& plan, const Problem& p, const BackwardArgs& args,
                            cudaStream_t stream) {
  return device::launch(dtype, plan, p, args, stream);
}

}  // namespace persistent
}  // namespace deeprnn
