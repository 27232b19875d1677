// The arguments of the per-step epilogue kernels, free of torch and of the CUDA runtime: the CUDA launchers
// (cbm_kernels.h, cells_kernels.h), their host executor (csrc/cpu/cuda_emulation.cpp) and the table code that
// fills them from tensors (csrc/step_tables.h) all include it.
#pragma once

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

// The fused per-step passes of csrc/cells.h, one kernel each. kLstmForwardInference is kLstmForward without the
// four gate stores (inference keeps no gates).
enum class CellEpilogue : int {
  kLstmForward,
  kLstmForwardInference,
  kLstmBackward,
  kGruForwardZr,
  kGruForwardN,
  kGruBackwardZn,
  kGruBackwardR
};

constexpr int kMaxCellOperands = 15;

// Every operand is (B, C, H, W) with a contiguous (C, H, W) block of `inner` elements per batch entry and its own
// batch stride (in elements); operand order (outputs first) is that of the CPU epilogue of the same name
// (csrc/cpu/cells_cpu.cpp). An output may alias an input exactly (each element is read before it is written).
struct CellArgs {
  void* ptr[kMaxCellOperands];
  int64_t stride[kMaxCellOperands];
  int64_t B, inner;
};

}  // namespace cuda_kernels
}  // namespace deeprnn
