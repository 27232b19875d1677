// The CUDA step-kernel tables' host side, written once for two executors: the CUDA launchers (csrc/cuda/cbm_cuda.cpp,
// csrc/cuda/cells_cuda.cpp) and their host executor (csrc/cpu/cuda_emulation.cpp), which runs the same kernel bodies
// on CPU tensors in CI. Everything between the driver's tensors and a kernel launch is here: which inputs are copied,
// the batch strides handed over, the gate slices each epilogue sees, and the table's configuration (one projection
// chunk for all T steps, the whole-sequence hooks). An executor provides
//   static void cbm_forward(DType, Options, const ForwardArgs&);   static void cbm_backward(DType, Options, const BackwardArgs&);
//   static void cell(DType, CellEpilogue, const CellArgs&);
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <initializer_list>
#include <optional>
#include <vector>

#include "cbm.h"
#include "cells.h"
#include "cuda/kernel_args.h"

namespace deeprnn {
namespace step_tables {

namespace ck = cuda_kernels;
using at::Tensor;

// The kernels' code for st; nullopt for a dtype they do not handle.
inline std::optional<ck::DType> kernel_dtype(at::ScalarType st) {
  switch (st) {
    case at::kFloat: return ck::DType::kFloat;
    case at::kDouble: return ck::DType::kDouble;
    case at::kHalf: return ck::DType::kHalf;
    case at::kBFloat16: return ck::DType::kBFloat16;
    default: return std::nullopt;
  }
}

inline ck::DType dtype_code(at::ScalarType st) {
  const auto dt = kernel_dtype(st);
  TORCH_CHECK_VALUE(dt.has_value(), "deeprnn CUDA kernels support float32, float64, float16 and bfloat16, got ", st);
  return *dt;
}

// True when each batch entry's (C, H, W) block is contiguous (size-1 dims may have any stride).
inline bool inner_contiguous(const Tensor& t) {
  int64_t expected = 1;
  for (int64_t d = t.dim() - 1; d >= 1; --d) {
    if (t.size(d) != 1 && t.stride(d) != expected) return false;
    expected *= t.size(d);
  }
  return true;
}

// Inputs the kernels cannot index (a broadcast zero gradient, an expanded sum) are copied first.
inline Tensor inner_contiguous_input(const Tensor& t) { return inner_contiguous(t) ? t : t.contiguous(); }

// Batch stride in elements; with one batch entry the stride is never used, so report `inner` to keep the
// vectorized kernel eligible.
inline int64_t batch_stride(const Tensor& t, int64_t inner) { return t.size(0) == 1 ? inner : t.stride(0); }

inline void check_step_tensor(const Tensor& t, const Tensor& like, const char* name) {
  TORCH_INTERNAL_ASSERT(t.dim() == 4 && t.sizes() == like.sizes() && t.scalar_type() == like.scalar_type() &&
                            t.device() == like.device(),
                        "deeprnn CUDA epilogue: bad ", name);
}

inline void check_outputs(std::initializer_list<const Tensor*> outputs, const Tensor& like) {
  for (const Tensor* out : outputs) {
    check_step_tensor(*out, like, "output");
    TORCH_INTERNAL_ASSERT(inner_contiguous(*out), "deeprnn CUDA epilogue: outputs need contiguous (C, H, W)");
  }
}

// ---------------------------------------------------------------------------------------------------------------
// CBM: StepKernels::forward / backward (csrc/cbm.h).

template <class Exec>
void cbm_forward(const Tensor& p_r_in, const Tensor& p_x_in, const Tensor& rec_in, const Tensor& r, const Tensor& c,
                 const Tensor& o, Options opt) {
  check_outputs({&r, &c, &o}, c);
  const Tensor p_r = inner_contiguous_input(p_r_in), p_x = inner_contiguous_input(p_x_in),
               rec = inner_contiguous_input(rec_in);
  check_step_tensor(p_r, c, "p_r");
  check_step_tensor(p_x, c, "p_x");
  check_step_tensor(rec, c, "rec");
  const int64_t B = c.size(0), inner = B == 0 ? 0 : c.numel() / B;
  if (B * inner == 0) return;
  const ck::ForwardArgs a{p_r.const_data_ptr(),     p_x.const_data_ptr(),     rec.const_data_ptr(),
                          r.mutable_data_ptr(),     c.mutable_data_ptr(),     o.mutable_data_ptr(),
                          B,                        inner,                    batch_stride(p_r, inner),
                          batch_stride(p_x, inner), batch_stride(rec, inner), batch_stride(r, inner),
                          batch_stride(c, inner),   batch_stride(o, inner)};
  Exec::cbm_forward(dtype_code(c.scalar_type()), opt, a);
}

template <class Exec>
void cbm_backward(const Tensor& grad_o_in, const Tensor& grad_c_in, const Tensor& rec_in, const Tensor& r_in,
                  const Tensor& c_in, const Tensor& dG, const Tensor& dP_r, Options opt) {
  check_outputs({&dG, &dP_r}, c_in);
  const Tensor grad_o = inner_contiguous_input(grad_o_in), grad_c = inner_contiguous_input(grad_c_in),
               r = inner_contiguous_input(r_in), c = inner_contiguous_input(c_in);
  const Tensor rec = rec_in.defined() ? inner_contiguous_input(rec_in) : Tensor();
  check_step_tensor(grad_o, c, "grad_o");
  check_step_tensor(grad_c, c, "grad_c");
  check_step_tensor(r, c, "r");
  if (rec.defined()) check_step_tensor(rec, c, "rec");
  const int64_t B = c.size(0), inner = B == 0 ? 0 : c.numel() / B;
  if (B * inner == 0) return;
  const ck::BackwardArgs a{grad_o.const_data_ptr(),
                           grad_c.const_data_ptr(),
                           rec.defined() ? rec.const_data_ptr() : nullptr,
                           r.const_data_ptr(),
                           c.const_data_ptr(),
                           dG.mutable_data_ptr(),
                           dP_r.mutable_data_ptr(),
                           B,
                           inner,
                           batch_stride(grad_o, inner),
                           batch_stride(grad_c, inner),
                           rec.defined() ? batch_stride(rec, inner) : inner,
                           batch_stride(r, inner),
                           batch_stride(c, inner),
                           batch_stride(dG, inner),
                           batch_stride(dP_r, inner)};
  Exec::cbm_backward(dtype_code(c.scalar_type()), opt, a);
}

// The table of a device that projects all T*B images in one call (GPU memory, not oneDNN's batch sizes, is the limit)
// and may run whole sequences at once.
template <class Exec>
StepKernels cbm_table(decltype(StepKernels::forward_sequence) forward_sequence,
                      decltype(StepKernels::backward_sequence) backward_sequence) {
  return StepKernels{cbm_forward<Exec>, cbm_backward<Exec>, /*conv_chunk_elements=*/0, forward_sequence,
                     backward_sequence};
}

// ---------------------------------------------------------------------------------------------------------------
// ConvLSTM and ConvGRU: LstmStepKernels / GruStepKernels (csrc/cells.h).

inline Tensor gate(const Tensor& t, int64_t k, int64_t C) { return t.narrow(1, k * C, C); }

// Runs `epilogue` over `operands` (outputs first, all (B, C, H, W)). Outputs are views the driver made
// (inner-contiguous); inputs that are not are copied first.
template <class Exec>
void cell(ck::CellEpilogue epilogue, std::initializer_list<Tensor> operands, int num_outputs) {
  std::vector<Tensor> ops(operands);
  const Tensor& like = ops[0];
  const ck::DType dtype = dtype_code(like.scalar_type());
  const int64_t B = like.size(0), inner = B == 0 ? 0 : like.numel() / B;
  if (B * inner == 0) return;
  TORCH_INTERNAL_ASSERT(ops.size() <= size_t(ck::kMaxCellOperands));
  ck::CellArgs a{};
  a.B = B;
  a.inner = inner;
  for (size_t k = 0; k < ops.size(); ++k) {
    check_step_tensor(ops[k], like, "cell operand");
    if (!inner_contiguous(ops[k])) {
      TORCH_INTERNAL_ASSERT(int(k) >= num_outputs, "deeprnn CUDA cell epilogue: outputs need contiguous (C, H, W)");
      ops[k] = ops[k].contiguous();
    }
    a.ptr[k] = ops[k].data_ptr();
    a.stride[k] = batch_stride(ops[k], inner);
  }
  Exec::cell(dtype, epilogue, a);
}

template <class Exec>
void lstm_forward(const Tensor& p, const Tensor& rec, const Tensor& c_prev, const Tensor& gates, const Tensor& c,
                  const Tensor& h) {
  const int64_t C = c.size(1);
  if (!gates.defined()) {  // inference keeps no gates: nothing to store but c and h
    cell<Exec>(ck::CellEpilogue::kLstmForwardInference,
               {c, h, gate(p, 0, C), gate(p, 1, C), gate(p, 2, C), gate(p, 3, C), gate(rec, 0, C), gate(rec, 1, C),
                gate(rec, 2, C), gate(rec, 3, C), c_prev},
               2);
    return;
  }
  cell<Exec>(ck::CellEpilogue::kLstmForward,
             {gate(gates, 0, C), gate(gates, 1, C), gate(gates, 2, C), gate(gates, 3, C), c, h, gate(p, 0, C),
              gate(p, 1, C), gate(p, 2, C), gate(p, 3, C), gate(rec, 0, C), gate(rec, 1, C), gate(rec, 2, C),
              gate(rec, 3, C), c_prev},
             6);
}

template <class Exec>
void lstm_backward(const Tensor& grad_h, const Tensor& grad_c, const Tensor& dh_next, const Tensor& dc_next,
                   const Tensor& gates, const Tensor& c, const Tensor& c_prev, const Tensor& dA, const Tensor& dc_prev) {
  const int64_t C = c.size(1);
  cell<Exec>(ck::CellEpilogue::kLstmBackward,
             {gate(dA, 0, C), gate(dA, 1, C), gate(dA, 2, C), gate(dA, 3, C), dc_prev, grad_h, grad_c, dh_next, dc_next,
              gate(gates, 0, C), gate(gates, 1, C), gate(gates, 2, C), gate(gates, 3, C), c, c_prev},
             5);
}

template <class Exec>
void gru_forward_zr(const Tensor& p, const Tensor& u, const Tensor& h_prev, const Tensor& gates, const Tensor& rh) {
  const int64_t C = h_prev.size(1);
  cell<Exec>(ck::CellEpilogue::kGruForwardZr,
             {gate(gates, 0, C), gate(gates, 1, C), rh, gate(p, 0, C), gate(p, 1, C), gate(u, 0, C), gate(u, 1, C),
              h_prev},
             3);
}

template <class Exec>
void gru_forward_n(const Tensor& p, const Tensor& v, const Tensor& h_prev, const Tensor& gates, const Tensor& h) {
  const int64_t C = h_prev.size(1);
  cell<Exec>(ck::CellEpilogue::kGruForwardN, {gate(gates, 2, C), h, gate(p, 2, C), v, gate(gates, 0, C), h_prev}, 2);
}

template <class Exec>
void gru_backward_zn(const Tensor& grad_h, const Tensor& dh_next, const Tensor& rec_next, const Tensor& gates,
                     const Tensor& h_prev, const Tensor& dA, const Tensor& dh_acc) {
  const int64_t C = h_prev.size(1);
  cell<Exec>(ck::CellEpilogue::kGruBackwardZn,
             {gate(dA, 0, C), gate(dA, 2, C), dh_acc, grad_h, dh_next, rec_next, gate(gates, 0, C), gate(gates, 2, C),
              h_prev},
             3);
}

template <class Exec>
void gru_backward_r(const Tensor& d_rh, const Tensor& gates, const Tensor& h_prev, const Tensor& dA,
                    const Tensor& dh_acc) {
  const int64_t C = h_prev.size(1);
  cell<Exec>(ck::CellEpilogue::kGruBackwardR, {gate(dA, 1, C), dh_acc, d_rh, gate(gates, 1, C), h_prev}, 2);
}

// All T*B images in one projection call, as the CBM table.
template <class Exec>
LstmStepKernels lstm_table() {
  return LstmStepKernels{lstm_forward<Exec>, lstm_backward<Exec>, /*conv_chunk_elements=*/0};
}

template <class Exec>
GruStepKernels gru_table() {
  return GruStepKernels{gru_forward_zr<Exec>, gru_forward_n<Exec>, gru_backward_zn<Exec>, gru_backward_r<Exec>,
                        /*conv_chunk_elements=*/0};
}

}  // namespace step_tables
}  // namespace deeprnn
