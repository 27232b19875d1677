// The ConvLSTM and ConvGRU cells on the shared recurrence driver (csrc/recurrence.h, docs/design.md section 7):
// their per-step epilogue tables, implemented per device (csrc/cpu/cells_cpu.cpp, csrc/cuda/cells_cuda.cpp), and
// the device-generic op bodies (csrc/cell_recurrence.cpp).
//
// Every step tensor is (B, C, H, W) with a contiguous (C, H, W) block per batch entry and its own batch stride
// (gate k of a (B, nC, H, W) buffer is its channel slice [kC, (k+1)C)), except the incoming output gradients
// (grad_h, grad_c), which may have any strides (a broadcast zero, an expanded sum).
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace deeprnn {

// ConvLSTM, gates i, f, o, g (ndrplz/ConvLSTM_pytorch's order).
struct LstmStepKernels {
  // A = p + rec (both (B, 4C, H, W));  gates = [σ(A_i), σ(A_f), σ(A_o), tanh(A_g)];  c = f*c_prev + i*g;
  // h = o*tanh(c). `gates` undefined: inference, where they are not kept.
  void (*forward)(const at::Tensor& p, const at::Tensor& rec, const at::Tensor& c_prev, const at::Tensor& gates,
                  const at::Tensor& c, const at::Tensor& h);
  // dh = grad_h + dh_next;  dc = grad_c + dc_next + dh*o*(1 - tanh²c);  dA = gate pre-activation gradients
  // (B, 4C, H, W);  dc_prev = dc*f. dc_prev may be dc_next itself (the carried buffer is updated in place).
  void (*backward)(const at::Tensor& grad_h, const at::Tensor& grad_c, const at::Tensor& dh_next,
                   const at::Tensor& dc_next, const at::Tensor& gates, const at::Tensor& c, const at::Tensor& c_prev,
                   const at::Tensor& dA, const at::Tensor& dc_prev);
  // As StepKernels::conv_chunk_elements (csrc/cbm.h).
  int64_t conv_chunk_elements = 0;
};

// ConvGRU, gates z, r, n. Two recurrent convolutions per step, so two epilogues each way.
struct GruStepKernels {
  // Before conv(r*h_prev, W_hn): z = σ(p_z + u_z), r = σ(p_r + u_r) into gates[:, :2C]; rh = r*h_prev.
  // p, u and gates are (B, 3C | 2C, H, W) buffers: p is the step's projection, u = conv(h_prev, W_hzr).
  void (*forward_zr)(const at::Tensor& p, const at::Tensor& u, const at::Tensor& h_prev, const at::Tensor& gates,
                     const at::Tensor& rh);
  // After it: n = tanh(p_n + v) into gates[:, 2C:];  h = (1 - z)*n + z*h_prev.
  void (*forward_n)(const at::Tensor& p, const at::Tensor& v, const at::Tensor& h_prev, const at::Tensor& gates,
                    const at::Tensor& h);
  // dh = grad_h + dh_next + rec_next (rec_next = convT(dA_zr of step t+1, W_hzr));  dA_z = dh*(h_prev - n)*z(1-z),
  // dA_n = dh*(1-z)*(1-n²) into dA (B, 3C, H, W);  dh_acc = dh*z (may alias dh_next).
  void (*backward_zn)(const at::Tensor& grad_h, const at::Tensor& dh_next, const at::Tensor& rec_next,
                      const at::Tensor& gates, const at::Tensor& h_prev, const at::Tensor& dA,
                      const at::Tensor& dh_acc);
  // After d_rh = convT(dA_n, W_hn): dA_r = d_rh*h_prev*r(1-r) into dA;  dh_acc += d_rh*r.
  void (*backward_r)(const at::Tensor& d_rh, const at::Tensor& gates, const at::Tensor& h_prev, const at::Tensor& dA,
                     const at::Tensor& dh_acc);
  int64_t conv_chunk_elements = 0;
};

// Checks for direct callers of torch.ops.deeprnn.* (the Python API validates first, with friendlier messages).
void check_convlstm_args(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                         const at::Tensor& h0, const at::Tensor& c0);
void check_convgru_args(const at::Tensor& x, const at::Tensor& weight_x, const std::optional<at::Tensor>& bias_x,
                        const at::Tensor& weight_h, const std::optional<at::Tensor>& bias_h, const at::Tensor& h0);

// Returns (h, c, gates), each (T, B, ·, H, W); gates (T, B, 4C, H, W) are kept for backward. Without save_gates
// none are kept and the returned one is undefined.
std::tuple<at::Tensor, at::Tensor, at::Tensor> convlstm_forward_impl(
    const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias, const at::Tensor& h0,
    const at::Tensor& c0, bool save_gates, bool all_states, const LstmStepKernels& kernels);

// Returns (grad_x, grad_weight, grad_bias, grad_h0, grad_c0).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> convlstm_backward_impl(
    const at::Tensor& grad_h, const at::Tensor& grad_c, const at::Tensor& x, const at::Tensor& weight,
    const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& h, const at::Tensor& c, const at::Tensor& gates,
    const LstmStepKernels& kernels);

// Returns (h, gates): h (T, B, C, H, W) and the gates z, r, n (T, B, 3C, H, W), undefined without save_gates.
std::tuple<at::Tensor, at::Tensor> convgru_forward_impl(const at::Tensor& x, const at::Tensor& weight_x,
                                                        const std::optional<at::Tensor>& bias_x,
                                                        const at::Tensor& weight_h,
                                                        const std::optional<at::Tensor>& bias_h, const at::Tensor& h0,
                                                        bool save_gates, const GruStepKernels& kernels);

// Returns (grad_x, grad_weight_x, grad_bias_x, grad_weight_h, grad_bias_h, grad_h0).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> convgru_backward_impl(
    const at::Tensor& grad_h, const at::Tensor& x, const at::Tensor& weight_x, const at::Tensor& weight_h,
    const at::Tensor& h0, const at::Tensor& h, const at::Tensor& gates, const GruStepKernels& kernels);

}  // namespace deeprnn
