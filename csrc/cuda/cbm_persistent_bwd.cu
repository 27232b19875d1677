// The persistent backward recurrence: every step of dG_t, dP_r[t] (and finally dc_0) in one
// cooperative launch. See persistent_tile.h (the tile work) and cbm_persistent_impl.cuh (the device side).
#include "cbm_persistent_impl.cuh"

namespace deeprnn {
namespace persistent {

bool plan_backward(cuda_kernels::DType dtype, bool allow_tf32, const Problem& p, Plan* plan) {
  bool ok = false;
  device::dispatch(dtype, allow_tf32, p, [&](auto tr, auto mma) {
    using Tr = decltype(tr);
    using M = decltype(mma);
    ok = device::plan_kernel(reinterpret_cast<const void*>(&device::backward_kernel<Tr, M>), p,
                             int(sizeof(typename Tr::storage)), M::kTensorCores, plan);
  });
  return ok;
}

cudaError_t launch_backward(cuda_kernels::DType dtype, const Plan& plan, const Problem& p, const BackwardArgs& args,
                            cudaStream_t stream) {
  cudaError_t status = cudaErrorInvalidValue;
  device::dispatch(dtype, plan.mma, p, [&](auto tr, auto mma) {
    using Tr = decltype(tr);
    using M = decltype(mma);
    if (plan.mma != M::kTensorCores) return;  // the plan was made for another product
    status = device::launch_kernel(reinterpret_cast<const void*>(&device::backward_kernel<Tr, M>), plan, p, args,
                                   stream);
  });
  return status;
}

}  // namespace persistent
}  // namespace deeprnn
