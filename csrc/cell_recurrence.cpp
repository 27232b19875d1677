// ConvLSTM and ConvGRU on the shared recurrence driver (csrc/recurrence.h): each op body is the cell's per-step
// hook (its recurrent convolutions and its device's fused epilogues, csrc/cells.h) and its gradient bookkeeping;
// the projections, the chunking and the batched input/weight gradients are the driver's.
#include "cells.h"

#include <c10/util/Exception.h>

#include <array>
#include <utility>

#include "recurrence.h"

namespace deeprnn {

using at::Tensor;

namespace {

void check_kernel(const Tensor& w, const char* name) {
  TORCH_CHECK_VALUE(w.size(2) == w.size(3) && w.size(2) % 2 == 1, name, " must have a square odd kernel, got ",
                    w.sizes());
}

void check_state(const Tensor& s, const Tensor& x, int64_t C, const char* name) {
  TORCH_CHECK_VALUE(s.dim() == 4 && s.size(0) == x.size(1) && s.size(1) == C && s.size(2) == x.size(3) &&
                        s.size(3) == x.size(4),
                    name, " must be (B, C, H, W) = (", x.size(1), ", ", C, ", ", x.size(3), ", ", x.size(4),
                    "), got ", s.sizes());
  check_like_x(x, s, name);
}

void check_bias(const std::optional<Tensor>& b, int64_t n, const char* name, const Tensor& x) {
  if (!b.has_value()) return;
  TORCH_CHECK_VALUE(b->dim() == 1 && b->size(0) == n, name, " must be (", n, ",)");
  check_like_x(x, *b, name);
}

Tensor bias_or_zeros(const std::optional<Tensor>& b, int64_t n, const Tensor& like) {
  return b.has_value() ? *b : at::zeros({n}, like.options());
}

// Zero input or hidden channels would leave the convolutions without a well-defined shape.
void check_channels(const Tensor& x, int64_t C, const char* weight_name, const Tensor& weight) {
  TORCH_CHECK_VALUE(x.size(2) >= 1, "x must have at least one input channel (C_in >= 1), got ", x.sizes());
  TORCH_CHECK_VALUE(C >= 1, weight_name, " must describe at least one hidden channel (C >= 1), got ", weight.sizes());
}

// ConvGRU's weights for its per-step concatenated form: (W_zr, W_n) = ([W_x | W_h] rows z, r; rows n), both
// (·, C_in + C, k, k) with k the larger kernel (the smaller one zero-padded to it).
std::pair<Tensor, Tensor> gru_concat_weights(const Tensor& weight_x, const Tensor& weight_h) {
  const int64_t k = std::max(weight_x.size(-1), weight_h.size(-1)), C = weight_h.size(1);
  const Tensor wx = pad_kernel(weight_x, k), wh = pad_kernel(weight_h, k);
  return {at::cat({wx.narrow(0, 0, 2 * C), wh.narrow(0, 0, 2 * C)}, 1),
          at::cat({wx.narrow(0, 2 * C, C), wh.narrow(0, 2 * C, C)}, 1)};
}

}  // namespace

void check_convlstm_args(const Tensor& x, const Tensor& weight, const std::optional<Tensor>& bias, const Tensor& h0,
                         const Tensor& c0) {
  TORCH_CHECK_VALUE(x.dim() == 5, "x must be (T, B, C_in, H, W), got ", x.sizes());
  TORCH_CHECK_VALUE(weight.dim() == 4 && weight.size(0) % 4 == 0 && weight.size(1) == x.size(2) + weight.size(0) / 4,
                    "weight must be (4C, C_in + C, k, k) with C_in=", x.size(2), ", got ", weight.sizes());
  check_channels(x, weight.size(0) / 4, "weight", weight);
  check_kernel(weight, "weight");
  check_like_x(x, weight, "weight");
  const int64_t C = weight.size(0) / 4;
  check_bias(bias, 4 * C, "bias", x);
  check_state(h0, x, C, "h0");
  check_state(c0, x, C, "c0");
}

void check_convgru_args(const Tensor& x, const Tensor& weight_x, const std::optional<Tensor>& bias_x,
                        const Tensor& weight_h, const std::optional<Tensor>& bias_h, const Tensor& h0) {
  TORCH_CHECK_VALUE(x.dim() == 5, "x must be (T, B, C_in, H, W), got ", x.sizes());
  TORCH_CHECK_VALUE(weight_h.dim() == 4 && weight_h.size(0) == 3 * weight_h.size(1),
                    "weight_h must be (3C, C, k, k), got ", weight_h.sizes());
  const int64_t C = weight_h.size(1);
  check_channels(x, C, "weight_h", weight_h);
  TORCH_CHECK_VALUE(weight_x.dim() == 4 && weight_x.size(0) == 3 * C && weight_x.size(1) == x.size(2),
                    "weight_x must be (3C=", 3 * C, ", C_in=", x.size(2), ", k, k), got ", weight_x.sizes());
  check_kernel(weight_x, "weight_x");
  check_kernel(weight_h, "weight_h");
  check_like_x(x, weight_x, "weight_x");
  check_like_x(x, weight_h, "weight_h");
  check_bias(bias_x, 3 * C, "bias_x", x);
  check_bias(bias_h, 3 * C, "bias_h", x);
  check_state(h0, x, C, "h0");
}

std::tuple<Tensor, Tensor, Tensor> convlstm_forward_impl(const Tensor& x, const Tensor& weight_in,
                                                         const std::optional<Tensor>& bias, const Tensor& h0,
                                                         const Tensor& c0, bool save_gates, bool all_states,
                                                         const LstmStepKernels& kernels) {
  check_convlstm_args(x, weight_in, bias, h0, c0);
  const Tensor weight = contiguous_weight(weight_in);
  const int64_t T = x.size(0), B = x.size(1), C_in = x.size(2), H = x.size(3), W = x.size(4);
  const int64_t C = weight.size(0) / 4;
  Tensor h = at::empty({T, B, C, H, W}, x.options());
  const StepStates c(T, B, C, H, W, x.options(), save_gates || all_states);  // backward reads every c
  Tensor gates = save_gates ? at::empty({T, B, 4 * C, H, W}, x.options()) : Tensor();
  if (h.numel() == 0) return {h, c.result(), gates};  // empty sequence, batch or image: nothing to compute
  const Tensor h0_c = h0.contiguous(), c0_c = c0.contiguous();
  if (one_step_per_chunk(kernels.conv_chunk_elements, B, (C_in + 4 * C) * H * W)) {
    StepConcat xh(x, C);
    const Tensor weight_c = weight.contiguous(), b = bias_or_zeros(bias, 4 * C, x);
    const Tensor zero = at::zeros({}, x.options()).expand({B, 4 * C, H, W});  // the epilogue's rec: in A already
    for (int64_t t = 0; t < T; ++t) {
      const Tensor A = same_conv(xh.fill(t, t == 0 ? h0_c : h[t - 1]), weight_c, b);
      kernels.forward(A, zero, t == 0 ? c0_c : c.at(t - 1), save_gates ? gates[t] : Tensor(), c.at(t), h[t]);
    }
    return {h, c.result(), gates};
  }
  const Tensor w_x = weight.narrow(1, 0, C_in).contiguous(), w_h = weight.narrow(1, C_in, C).contiguous();
  project_forward(x, w_x, bias_or_zeros(bias, 4 * C, x), kernels.conv_chunk_elements,
                  [&](int64_t t0, int64_t n, const Tensor& P) {
                    for (int64_t t = t0; t < t0 + n; ++t) {
                      const Tensor rec = same_conv(t == 0 ? h0_c : h[t - 1], w_h);
                      const Tensor p = P[t - t0];
                      kernels.forward(p, rec, t == 0 ? c0_c : c.at(t - 1), save_gates ? gates[t] : Tensor(), c.at(t),
                                      h[t]);
                    }
                  });
  return {h, c.result(), gates};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> convlstm_backward_impl(
    const Tensor& grad_h, const Tensor& grad_c, const Tensor& x, const Tensor& weight_in, const Tensor& h0,
    const Tensor& c0, const Tensor& h, const Tensor& c, const Tensor& gates, const LstmStepKernels& kernels) {
  check_convlstm_args(x, weight_in, std::nullopt, h0, c0);
  const Tensor weight = contiguous_weight(weight_in);
  const int64_t T = x.size(0), B = x.size(1), C_in = x.size(2), H = x.size(3), W = x.size(4);
  const int64_t C = weight.size(0) / 4;
  const std::array<int64_t, 5> shape{T, B, C, H, W}, gate_shape{T, B, 4 * C, H, W};
  TORCH_CHECK_VALUE(grad_h.sizes() == at::IntArrayRef(shape) && grad_c.sizes() == at::IntArrayRef(shape) &&
                        h.sizes() == at::IntArrayRef(shape) && c.sizes() == at::IntArrayRef(shape),
                    "grad_h, grad_c, h and c must all be (T, B, C, H, W) = ", at::IntArrayRef(shape));
  TORCH_CHECK_VALUE(gates.sizes() == at::IntArrayRef(gate_shape), "gates must be (T, B, 4C, H, W) = ",
                    at::IntArrayRef(gate_shape), ", got ", gates.sizes());
  for (const auto& [t, name] : {std::pair{&grad_h, "grad_h"}, std::pair{&grad_c, "grad_c"}, std::pair{&h, "h"},
                                std::pair{&c, "c"}, std::pair{&gates, "gates"}}) {
    check_like_x(x, *t, name);
  }
  if (h.numel() == 0) {  // empty sequence, batch or image: zero gradients
    return {contiguous_zeros(x), contiguous_zeros(weight), at::zeros({4 * C}, x.options()), contiguous_zeros(h0),
            contiguous_zeros(c0)};
  }
  const Tensor h0_c = h0.contiguous(), c0_c = c0.contiguous();
  // Carried from step t+1 to t: dh_next = convT(dA_{t+1}, W_h) and dc (updated in place to dc_prev).
  Tensor dh_next = at::zeros({B, C, H, W}, x.options());
  const Tensor dc = at::zeros({B, C, H, W}, x.options());
  if (one_step_per_chunk(kernels.conv_chunk_elements, B, (C_in + 4 * C) * H * W)) {
    StepConcat xh(x, C);
    const Tensor weight_c = weight.contiguous(), dA = at::empty({B, 4 * C, H, W}, x.options());
    Tensor grad_x = at::empty_like(x), grad_weight, grad_bias;
    for (int64_t t = T - 1; t >= 0; --t) {
      kernels.backward(grad_h[t], grad_c[t], dh_next, dc, gates[t], c[t], t == 0 ? c0_c : c[t - 1], dA, dc);
      auto [d_xh, gw, gb] = conv_backward(dA, xh.fill(t, t == 0 ? h0_c : h[t - 1]), weight_c, {true, true, true});
      grad_x[t].copy_(xh.grad_x(d_xh));
      dh_next = xh.grad_state(d_xh);
      accumulate(grad_weight, gw);
      accumulate(grad_bias, gb);
    }
    return {grad_x, grad_weight, grad_bias, dh_next.contiguous(), dc};
  }
  const Tensor w_x = weight.narrow(1, 0, C_in).contiguous(), w_h = weight.narrow(1, C_in, C).contiguous();
  const Tensor w_h_t = transpose_kernel(w_h);
  Tensor grad_w_h;
  auto [grad_x, grad_w_x, grad_bias] =
      project_backward(x, w_x, kernels.conv_chunk_elements, [&](int64_t t0, int64_t n, const Tensor& dP) {
        for (int64_t t = t0 + n - 1; t >= t0; --t) {
          const Tensor dA = dP[t - t0];
          kernels.backward(grad_h[t], grad_c[t], dh_next, dc, gates[t], c[t], t == 0 ? c0_c : c[t - 1], dA, dc);
          dh_next = same_conv(dA, w_h_t);
        }
        accumulate_lagged_weight_grad(grad_w_h, dP, h, h0_c, t0, n, w_h);  // pairs (h_{t-1}, dA_t)
      });
  return {grad_x, at::cat({grad_w_x, grad_w_h}, 1), grad_bias, dh_next, dc};
}

std::tuple<Tensor, Tensor> convgru_forward_impl(const Tensor& x, const Tensor& weight_x_in,
                                                const std::optional<Tensor>& bias_x, const Tensor& weight_h_in,
                                                const std::optional<Tensor>& bias_h, const Tensor& h0, bool save_gates,
                                                const GruStepKernels& kernels) {
  check_convgru_args(x, weight_x_in, bias_x, weight_h_in, bias_h, h0);
  const Tensor weight_x = contiguous_weight(weight_x_in), weight_h = contiguous_weight(weight_h_in);
  const int64_t T = x.size(0), B = x.size(1), H = x.size(3), W = x.size(4);
  const int64_t C = weight_h.size(1);
  Tensor h = at::empty({T, B, C, H, W}, x.options());
  Tensor gates = save_gates ? at::empty({T, B, 3 * C, H, W}, x.options()) : Tensor();
  if (h.numel() == 0) return {h, gates};  // empty sequence, batch or image: nothing to compute
  // Both biases are added outside r * (...), so they act as one bias of the projection.
  const Tensor bias = bias_or_zeros(bias_x, 3 * C, x) + bias_or_zeros(bias_h, 3 * C, x);
  const Tensor h0_c = h0.contiguous();
  if (one_step_per_chunk(kernels.conv_chunk_elements, B, (x.size(2) + 3 * C) * H * W)) {
    // z, r from one convolution of cat[x_t, h_{t-1}]; n from one of cat[x_t, r * h_{t-1}], whose second part
    // the z/r epilogue writes in place.
    const auto [w_zr, w_n] = gru_concat_weights(weight_x, weight_h);
    const Tensor b_zr = bias.narrow(0, 0, 2 * C), b_n = bias.narrow(0, 2 * C, C);
    StepConcat xh(x, C), xrh(x, C);
    const Tensor zero = at::zeros({}, x.options()).expand({B, 3 * C, H, W});  // the epilogues' p: in u, v already
    const Tensor step_gates = save_gates ? Tensor() : at::empty({B, 3 * C, H, W}, x.options());
    for (int64_t t = 0; t < T; ++t) {
      const Tensor h_prev = t == 0 ? h0_c : h[t - 1], g = save_gates ? gates[t] : step_gates;
      kernels.forward_zr(zero, same_conv(xh.fill(t, h_prev), w_zr, b_zr), h_prev, g, xrh.state());
      kernels.forward_n(zero, same_conv(xrh.fill_x(t), w_n, b_n), h_prev, g, h[t]);
    }
    return {h, gates};
  }
  const Tensor w_hzr = weight_h.narrow(0, 0, 2 * C).contiguous(), w_hn = weight_h.narrow(0, 2 * C, C).contiguous();
  const Tensor rh = at::empty({B, C, H, W}, x.options());
  project_forward(x, weight_x, bias, kernels.conv_chunk_elements, [&](int64_t t0, int64_t n, const Tensor& P) {
    for (int64_t t = t0; t < t0 + n; ++t) {
      const Tensor h_prev = t == 0 ? h0_c : h[t - 1], p = P[t - t0], g = save_gates ? gates[t] : p;
      kernels.forward_zr(p, same_conv(h_prev, w_hzr), h_prev, g, rh);
      kernels.forward_n(p, same_conv(rh, w_hn), h_prev, g, h[t]);
    }
  });
  return {h, gates};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> convgru_backward_impl(
    const Tensor& grad_h, const Tensor& x, const Tensor& weight_x_in, const Tensor& weight_h_in, const Tensor& h0,
    const Tensor& h, const Tensor& gates, const GruStepKernels& kernels) {
  check_convgru_args(x, weight_x_in, std::nullopt, weight_h_in, std::nullopt, h0);
  const Tensor weight_x = contiguous_weight(weight_x_in), weight_h = contiguous_weight(weight_h_in);
  const int64_t T = x.size(0), B = x.size(1), H = x.size(3), W = x.size(4);
  const int64_t C = weight_h.size(1);
  const std::array<int64_t, 5> shape{T, B, C, H, W}, gate_shape{T, B, 3 * C, H, W};
  TORCH_CHECK_VALUE(grad_h.sizes() == at::IntArrayRef(shape) && h.sizes() == at::IntArrayRef(shape),
                    "grad_h and h must be (T, B, C, H, W) = ", at::IntArrayRef(shape));
  TORCH_CHECK_VALUE(gates.sizes() == at::IntArrayRef(gate_shape), "gates must be (T, B, 3C, H, W) = ",
                    at::IntArrayRef(gate_shape), ", got ", gates.sizes());
  for (const auto& [t, name] : {std::pair{&grad_h, "grad_h"}, std::pair{&h, "h"}, std::pair{&gates, "gates"}}) {
    check_like_x(x, *t, name);
  }
  if (h.numel() == 0) {  // empty sequence, batch or image: zero gradients
    return {contiguous_zeros(x), contiguous_zeros(weight_x), at::zeros({3 * C}, x.options()), contiguous_zeros(weight_h),
            at::zeros({3 * C}, x.options()), contiguous_zeros(h0)};
  }
  const Tensor h0_c = h0.contiguous();
  // Carried from step t+1 to t: dh_acc (the direct and r-path parts of dh_t) and rec = convT(dA_zr, W_hzr).
  const Tensor dh_acc = at::zeros({B, C, H, W}, x.options());
  Tensor rec = at::zeros({B, C, H, W}, x.options());
  if (one_step_per_chunk(kernels.conv_chunk_elements, B, (x.size(2) + 3 * C) * H * W)) {
    const auto [w_zr, w_n] = gru_concat_weights(weight_x, weight_h);
    StepConcat xh(x, C), xrh(x, C);
    const Tensor dA = at::empty({B, 3 * C, H, W}, x.options());
    Tensor grad_x = at::empty_like(x), grad_w_zr, grad_w_n, grad_b_zr, grad_b_n;
    for (int64_t t = T - 1; t >= 0; --t) {
      const Tensor h_prev = t == 0 ? h0_c : h[t - 1];
      kernels.backward_zn(grad_h[t], dh_acc, rec, gates[t], h_prev, dA, dh_acc);
      Tensor rh = xrh.state();
      at::mul_out(rh, gates[t].narrow(1, C, C), h_prev);  // r_t * h_{t-1}, recomputed
      auto [d_xrh, gw_n, gb_n] = conv_backward(dA.narrow(1, 2 * C, C), xrh.fill_x(t), w_n, {true, true, true});
      kernels.backward_r(xrh.grad_state(d_xrh), gates[t], h_prev, dA, dh_acc);
      auto [d_xh, gw_zr, gb_zr] = conv_backward(dA.narrow(1, 0, 2 * C), xh.fill(t, h_prev), w_zr, {true, true, true});
      Tensor dx = grad_x[t];
      at::add_out(dx, xh.grad_x(d_xh), xrh.grad_x(d_xrh));
      rec = xh.grad_state(d_xh);
      accumulate(grad_w_zr, gw_zr);
      accumulate(grad_w_n, gw_n);
      accumulate(grad_b_zr, gb_zr);
      accumulate(grad_b_n, gb_n);
    }
    const int64_t C_in = x.size(2);
    const Tensor grad_bias = at::cat({grad_b_zr, grad_b_n});
    return {grad_x,
            crop_kernel(at::cat({grad_w_zr.narrow(1, 0, C_in), grad_w_n.narrow(1, 0, C_in)}), weight_x.size(-1)),
            grad_bias,
            crop_kernel(at::cat({grad_w_zr.narrow(1, C_in, C), grad_w_n.narrow(1, C_in, C)}), weight_h.size(-1)),
            grad_bias.clone(), dh_acc + rec};
  }
  const Tensor w_hzr = weight_h.narrow(0, 0, 2 * C).contiguous(), w_hn = weight_h.narrow(0, 2 * C, C).contiguous();
  const Tensor w_hzr_t = transpose_kernel(w_hzr), w_hn_t = transpose_kernel(w_hn);
  Tensor grad_w_hzr, grad_w_hn;
  auto [grad_x, grad_w_x, grad_bias] =
      project_backward(x, weight_x, kernels.conv_chunk_elements, [&](int64_t t0, int64_t n, const Tensor& dP) {
        for (int64_t t = t0 + n - 1; t >= t0; --t) {
          const Tensor h_prev = t == 0 ? h0_c : h[t - 1], dA = dP[t - t0];
          kernels.backward_zn(grad_h[t], dh_acc, rec, gates[t], h_prev, dA, dh_acc);
          kernels.backward_r(same_conv(dA.narrow(1, 2 * C, C), w_hn_t), gates[t], h_prev, dA, dh_acc);
          rec = same_conv(dA.narrow(1, 0, 2 * C), w_hzr_t);
        }
        accumulate_lagged_weight_grad(grad_w_hzr, dP.narrow(2, 0, 2 * C), h, h0_c, t0, n, w_hzr);
        // W_hn convolves r_t * h_{t-1}: recomputed for the chunk, pairs with dA_n.
        const Tensor rh = gates.narrow(0, t0, n).narrow(2, C, C) * previous_states(h, h0_c, t0, n);
        accumulate(grad_w_hn, std::get<1>(conv_backward(dP.narrow(0, 0, n).narrow(2, 2 * C, C).reshape({n * B, C, H, W}),
                                                        rh.view({n * B, C, H, W}), w_hn, {false, true, false})));
      });
  return {grad_x, grad_w_x, grad_bias, at::cat({grad_w_hzr, grad_w_hn}, 0), grad_bias.clone(), dh_acc + rec};
}

}  // namespace deeprnn
