// CUDA registrations of the ConvLSTM and ConvGRU ops: the device-generic op bodies (csrc/cell_recurrence.cpp) with
// the epilogues of cells_kernels.cu, on the current stream with no host synchronisation in the loop.
// NEVER RUN ON A GPU: compiled with nvcc only; tests/test_cuda_cells.py is their first check.
#include <ATen/ATen.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <initializer_list>
#include <vector>

#include "../cells.h"
#include "cells_kernels.h"
#include "kernel_dtype.h"

namespace deeprnn {
namespace {

using at::Tensor;
namespace ck = cuda_kernels;

// True when each batch entry's (C, H, W) block is contiguous (size-1 dims may have any stride).
bool inner_contiguous(const Tensor& t) {
  int64_t expected = 1;
  for (int64_t d = t.dim() - 1; d >= 1; --d) {
    if (t.size(d) != 1 && t.stride(d) != expected) return false;
    expected *= t.size(d);
  }
  return true;
}

Tensor gate(const Tensor& t, int64_t k, int64_t C) { return t.narrow(1, k * C, C); }

// Launches `epilogue` over `operands` (outputs first, all (B, C, H, W)). Outputs are views the driver made
// (inner-contiguous); inputs that are not (a broadcast zero gradient, an expanded sum) are copied first.
void launch(ck::CellEpilogue epilogue, std::initializer_list<Tensor> operands, int num_outputs) {
  std::vector<Tensor> ops(operands);
  const Tensor& like = ops[0];
  const auto dtype = kernel_dtype(like.scalar_type());
  TORCH_CHECK_VALUE(dtype.has_value(), "deeprnn CUDA kernels support float32, float64, float16 and bfloat16, got ",
                    like.scalar_type());
  const int64_t B = like.size(0), inner = B == 0 ? 0 : like.numel() / B;
  if (B * inner == 0) return;
  ck::CellArgs a{};
  a.B = B;
  a.inner = inner;
  for (size_t k = 0; k < ops.size(); ++k) {
    TORCH_INTERNAL_ASSERT(ops[k].is_cuda() && ops[k].sizes() == like.sizes() &&
                              ops[k].scalar_type() == like.scalar_type(),
                          "deeprnn CUDA cell epilogue: bad operand ", k);
    if (!inner_contiguous(ops[k])) {
      TORCH_INTERNAL_ASSERT(int(k) >= num_outputs, "deeprnn CUDA cell epilogue: outputs need contiguous (C, H, W)");
      ops[k] = ops[k].contiguous();
    }
    a.ptr[k] = ops[k].data_ptr();
    a.stride[k] = B == 1 ? inner : ops[k].stride(0);
  }
  ck::launch_cell_epilogue(*dtype, epilogue, a, c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void lstm_forward(const Tensor& p, const Tensor& rec, const Tensor& c_prev, const Tensor& gates, const Tensor& c,
                  const Tensor& h) {
  const int64_t C = c.size(1);
  const Tensor& g = gates.defined() ? gates : p;  // inference: the gates go over the projection
  launch(ck::CellEpilogue::kLstmForward,
         {gate(g, 0, C), gate(g, 1, C), gate(g, 2, C), gate(g, 3, C), c, h, gate(p, 0, C),
          gate(p, 1, C), gate(p, 2, C), gate(p, 3, C), gate(rec, 0, C), gate(rec, 1, C), gate(rec, 2, C),
          gate(rec, 3, C), c_prev},
         6);
}

void lstm_backward(const Tensor& grad_h, const Tensor& grad_c, const Tensor& dh_next, const Tensor& dc_next,
                   const Tensor& gates, const Tensor& c, const Tensor& c_prev, const Tensor& dA,
                   const Tensor& dc_prev) {
  const int64_t C = c.size(1);
  launch(ck::CellEpilogue::kLstmBackward,
         {gate(dA, 0, C), gate(dA, 1, C), gate(dA, 2, C), gate(dA, 3, C), dc_prev, grad_h, grad_c, dh_next, dc_next,
          gate(gates, 0, C), gate(gates, 1, C), gate(gates, 2, C), gate(gates, 3, C), c, c_prev},
         5);
}

void gru_forward_zr(const Tensor& p, const Tensor& u, const Tensor& h_prev, const Tensor& gates, const Tensor& rh) {
  const int64_t C = h_prev.size(1);
  launch(ck::CellEpilogue::kGruForwardZr,
         {gate(gates, 0, C), gate(gates, 1, C), rh, gate(p, 0, C), gate(p, 1, C), gate(u, 0, C), gate(u, 1, C), h_prev},
         3);
}

void gru_forward_n(const Tensor& p, const Tensor& v, const Tensor& h_prev, const Tensor& gates, const Tensor& h) {
  const int64_t C = h_prev.size(1);
  launch(ck::CellEpilogue::kGruForwardN, {gate(gates, 2, C), h, gate(p, 2, C), v, gate(gates, 0, C), h_prev}, 2);
}

void gru_backward_zn(const Tensor& grad_h, const Tensor& dh_next, const Tensor& rec_next, const Tensor& gates,
                     const Tensor& h_prev, const Tensor& dA, const Tensor& dh_acc) {
  const int64_t C = h_prev.size(1);
  launch(ck::CellEpilogue::kGruBackwardZn,
         {gate(dA, 0, C), gate(dA, 2, C), dh_acc, grad_h, dh_next, rec_next, gate(gates, 0, C), gate(gates, 2, C),
          h_prev},
         3);
}

void gru_backward_r(const Tensor& d_rh, const Tensor& gates, const Tensor& h_prev, const Tensor& dA,
                    const Tensor& dh_acc) {
  const int64_t C = h_prev.size(1);
  launch(ck::CellEpilogue::kGruBackwardR, {gate(dA, 1, C), dh_acc, d_rh, gate(gates, 1, C), h_prev}, 2);
}

// All T*B images in one projection call, as the CBM CUDA kernels.
constexpr LstmStepKernels kLstmCuda{lstm_forward, lstm_backward, /*conv_chunk_elements=*/0};
constexpr GruStepKernels kGruCuda{gru_forward_zr, gru_forward_n, gru_backward_zn, gru_backward_r,
                                  /*conv_chunk_elements=*/0};

// Every op runs on x's device, in its dtype even inside an autocast region (the Python API casts first).
struct OpGuard {
  explicit OpGuard(const Tensor& x) : device(x.device()) {}
  c10::cuda::CUDAGuard device;
  c10::impl::ExcludeDispatchKeyGuard no_autocast{c10::DispatchKey::AutocastCUDA};
};

std::tuple<Tensor, Tensor, Tensor> convlstm_forward_cuda(const Tensor& x, const Tensor& weight,
                                                         const std::optional<Tensor>& bias, const Tensor& h0,
                                                         const Tensor& c0) {
  const OpGuard guard(x);
  return convlstm_forward_impl(x, weight, bias, h0, c0, /*save_gates=*/true, /*all_states=*/true, kLstmCuda);
}

std::tuple<Tensor, Tensor> convlstm_inference_cuda(const Tensor& x, const Tensor& weight,
                                                   const std::optional<Tensor>& bias, const Tensor& h0,
                                                   const Tensor& c0, bool all_states) {
  const OpGuard guard(x);
  auto [h, c, gates] = convlstm_forward_impl(x, weight, bias, h0, c0, /*save_gates=*/false, all_states, kLstmCuda);
  return {h, c};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> convlstm_backward_cuda(const Tensor& grad_h, const Tensor& grad_c,
                                                                          const Tensor& x, const Tensor& weight,
                                                                          const Tensor& h0, const Tensor& c0,
                                                                          const Tensor& h, const Tensor& c,
                                                                          const Tensor& gates) {
  const OpGuard guard(x);
  return convlstm_backward_impl(grad_h, grad_c, x, weight, h0, c0, h, c, gates, kLstmCuda);
}

std::tuple<Tensor, Tensor> convgru_forward_cuda(const Tensor& x, const Tensor& weight_x,
                                                const std::optional<Tensor>& bias_x, const Tensor& weight_h,
                                                const std::optional<Tensor>& bias_h, const Tensor& h0) {
  const OpGuard guard(x);
  return convgru_forward_impl(x, weight_x, bias_x, weight_h, bias_h, h0, /*save_gates=*/true, kGruCuda);
}

Tensor convgru_inference_cuda(const Tensor& x, const Tensor& weight_x, const std::optional<Tensor>& bias_x,
                              const Tensor& weight_h, const std::optional<Tensor>& bias_h, const Tensor& h0) {
  const OpGuard guard(x);
  return std::get<0>(convgru_forward_impl(x, weight_x, bias_x, weight_h, bias_h, h0, /*save_gates=*/false, kGruCuda));
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> convgru_backward_cuda(
    const Tensor& grad_h, const Tensor& x, const Tensor& weight_x, const Tensor& weight_h, const Tensor& h0,
    const Tensor& h, const Tensor& gates) {
  const OpGuard guard(x);
  return convgru_backward_impl(grad_h, x, weight_x, weight_h, h0, h, gates, kGruCuda);
}

}  // namespace

TORCH_LIBRARY_IMPL(deeprnn, CUDA, m) {
  m.impl("convlstm_forward", &convlstm_forward_cuda);
  m.impl("convlstm_inference", &convlstm_inference_cuda);
  m.impl("convlstm_backward", &convlstm_backward_cuda);
  m.impl("convgru_forward", &convgru_forward_cuda);
  m.impl("convgru_inference", &convgru_inference_cuda);
  m.impl("convgru_backward", &convgru_backward_cuda);
}

}  // namespace deeprnn
