// The persistent forward recurrence: every step of c_t = act_t(P_x[t] + conv(c_{t-1}, W_tc)), r_t, o_t in one
// cooperative launch. See persistent_tile.h (the tile work) and cbm_persistent_impl.cuh (the device side).
#include "cbm_persistent_impl.cuh"

namespace deeprnn {
namespace persistent {

bool plan_forward(cuda_kernels::DType dtype, bool allow_tf32, const Problem& p, Plan* plan) {
  return device::plan<ForwardArgs>(dtype, allow_tf32, p, plan);
}

cudaError_t launch_forward(cuda_kernels::DType dtype, const Plan& plan, const Problem& p, const ForwardArgs& args,
                           cudaStream_t stream) {
  return device::launch(dtype, plan, p, args, stream);
}

}  // namespace persistent
}  // namespace deeprnn
