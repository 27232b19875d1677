// CUDA registrations of the ConvLSTM and ConvGRU ops: the device-generic op bodies (csrc/cell_recurrence.cpp) with
// the epilogues of cells_kernels.cu, on the current stream with no host synchronisation in the loop.
// NEVER RUN ON A GPU: compiled with nvcc only; tests/test_cuda_cells.py is their first check.
#include <ATen/ATen.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../cells.h"
#include "cells_kernels.h"
#include "../step_tables.h"

namespace deeprnn {
namespace {

using at::Tensor;
namespace ck = cuda_kernels;

// The cell epilogues' launcher for the shared table code (csrc/step_tables.h), on the current stream.
struct CudaLaunch {
  static void cell(ck::DType dtype, ck::CellEpilogue epilogue, const ck::CellArgs& a) {
    ck::launch_cell_epilogue(dtype, epilogue, a, c10::cuda::getCurrentCUDAStream());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

const LstmStepKernels kLstmCuda = step_tables::lstm_table<CudaLaunch>();
const GruStepKernels kGruCuda = step_tables::gru_table<CudaLaunch>();

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
