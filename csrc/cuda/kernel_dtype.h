// The torch dtype -> cuda_kernels::DType map, for every CUDA op wrapper (cbm_cuda.cpp, cbm_persistent_cuda.cpp).
#pragma once

#include <c10/core/ScalarType.h>

#include <optional>

#include "cbm_kernels.h"

namespace deeprnn {

// The kernels' code for st; nullopt for a dtype they do not handle.
inline std::optional<cuda_kernels::DType> kernel_dtype(at::ScalarType st) {
  switch (st) {
    case at::kFloat: return cuda_kernels::DType::kFloat;
    case at::kDouble: return cuda_kernels::DType::kDouble;
    case at::kHalf: return cuda_kernels::DType::kHalf;
    case at::kBFloat16: return cuda_kernels::DType::kBFloat16;
    default: return std::nullopt;
  }
}

}  // namespace deeprnn
