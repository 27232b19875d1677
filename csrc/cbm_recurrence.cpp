// The device-generic CBM recurrence (docs/design.md section 1, "Why it can be fast"): both input convolutions as
// one ATen convolution with 2C output channels over many steps' images at once (all T*B on CUDA, chunks on
// the CPU: StepKernels::conv_chunk_elements), and the time loop in C++ with one C -> C convolution and one
// fused epilogue per step. Backward mirrors it; weight and input gradients are batched per chunk of steps.
#include "cbm.h"
#include "recurrence.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <array>
#include <utility>

namespace deeprnn {
namespace {

using at::Tensor;

// The representation weights and the x-half of the temporal weights stacked on output channels, so both
// input projections are one convolution with 2C output channels.
Tensor input_weight(const Tensor& weight_r, const Tensor& w_tx) {
  const int64_t k = std::max(weight_r.size(-1), w_tx.size(-1));
  return at::cat({pad_kernel(weight_r, k), pad_kernel(w_tx, k)}, 0);
}

}  // namespace

void check_forward_args(const Tensor& x, const Tensor& weight_r, const std::optional<Tensor>& bias_r,
                        const Tensor& weight_t, const std::optional<Tensor>& bias_t, const Tensor& c0,
                        Options opt) {
  TORCH_CHECK_VALUE(opt.act_r >= 0 && opt.act_r <= 2, "act_r must be 0 (identity), 1 (relu) or 2 (tanh), got ",
                    opt.act_r);
  TORCH_CHECK_VALUE(opt.act_t >= 0 && opt.act_t <= 1, "act_t must be 0 (sigmoid) or 1 (relu), got ", opt.act_t);
  TORCH_CHECK_VALUE(opt.merge >= 0 && opt.merge <= 1, "merge must be 0 (mul) or 1 (add), got ", opt.merge);
  TORCH_CHECK_VALUE(x.dim() == 5, "x must be (T, B, C_in, H, W), got ", x.sizes());
  TORCH_CHECK_VALUE(at::isFloatingType(x.scalar_type()), "x must be a floating point tensor, got ", x.scalar_type());
  // Zero input or output channels would leave the convolutions below without a well-defined shape.
  TORCH_CHECK_VALUE(x.size(2) >= 1, "x must have at least one input channel (C_in >= 1), got ", x.sizes());
  TORCH_CHECK_VALUE(weight_r.dim() == 4 && weight_r.size(1) == x.size(2), "weight_r must be (C, C_in=", x.size(2),
                    ", k, k), got ", weight_r.sizes());
  const int64_t C = weight_r.size(0);
  TORCH_CHECK_VALUE(C >= 1, "weight_r must have at least one output channel (C >= 1), got ", weight_r.sizes());
  TORCH_CHECK_VALUE(weight_t.dim() == 4 && weight_t.size(0) == C && weight_t.size(1) == x.size(2) + C,
                    "weight_t must be (C=", C, ", C_in + C=", x.size(2) + C, ", k, k), got ", weight_t.sizes());
  for (const auto& [w, name] : {std::pair{&weight_r, "weight_r"}, std::pair{&weight_t, "weight_t"}}) {
    TORCH_CHECK_VALUE(w->size(2) == w->size(3) && w->size(2) % 2 == 1, name, " must have a square odd kernel, got ",
                      w->sizes());
    check_like_x(x, *w, name);
  }
  for (const auto& [b, name] : {std::pair{&bias_r, "bias_r"}, std::pair{&bias_t, "bias_t"}}) {
    if (!b->has_value()) continue;
    TORCH_CHECK_VALUE((*b)->dim() == 1 && (*b)->size(0) == C, name, " must be (C=", C, ",), got ", (*b)->sizes());
    check_like_x(x, **b, name);
  }
  TORCH_CHECK_VALUE(c0.dim() == 4 && c0.size(0) == x.size(1) && c0.size(1) == C && c0.size(2) == x.size(3) &&
                        c0.size(3) == x.size(4),
                    "c0 must be (B, C, H, W) = (", x.size(1), ", ", C, ", ", x.size(3), ", ", x.size(4), "), got ",
                    c0.sizes());
  check_like_x(x, c0, "c0");
}

void check_backward_args(const Tensor& grad_o, const Tensor& grad_c, const Tensor& x, const Tensor& weight_r,
                         const Tensor& weight_t, const Tensor& c0, const Tensor& r, const Tensor& c,
                         const std::optional<Tensor>& td_mask, Options opt) {
  check_forward_args(x, weight_r, std::nullopt, weight_t, std::nullopt, c0, opt);
  const int64_t T = x.size(0), B = x.size(1);
  const std::array<int64_t, 5> shape{T, B, weight_r.size(0), x.size(3), x.size(4)};
  // The step kernels index these with the sizes of x and the weights: any other shape, dtype or device would
  // read out of bounds or reinterpret memory.
  for (const auto& [t, name] : {std::pair{&grad_o, "grad_o"}, std::pair{&grad_c, "grad_c"}, std::pair{&r, "r"},
                                std::pair{&c, "c"}}) {
    TORCH_CHECK_VALUE(t->sizes() == at::IntArrayRef(shape), name, " must be (T, B, C, H, W) = ",
                      at::IntArrayRef(shape), ", got ", t->sizes());
    check_like_x(x, *t, name);
  }
  check_td_mask(x, td_mask);
}

void check_td_mask(const Tensor& x, const std::optional<Tensor>& td_mask) {
  if (!td_mask.has_value()) return;
  const int64_t T = x.size(0), B = x.size(1);
  TORCH_CHECK_VALUE(td_mask->scalar_type() == at::kBool, "td_mask must be a bool tensor, got ",
                    td_mask->scalar_type());
  TORCH_CHECK_VALUE((td_mask->sizes() == at::IntArrayRef{T} || td_mask->sizes() == at::IntArrayRef{T, B}),
                    "td_mask must be (T,) or (T, B) = (", T, ", ", B, "), got ", td_mask->sizes());
  TORCH_CHECK_VALUE(td_mask->device() == x.device(), "td_mask must be on x's device ", x.device());
}

namespace {

// The forward of both ops; without save_r, r is written over P_r in the chunk buffer instead of a (T, B, C, H, W)
// tensor (the persistent kernels, which want one, still get it) and the returned r is undefined. Without
// all_states (inference only) the returned c is the final state alone, (1, B, C, H, W).
std::tuple<Tensor, Tensor, Tensor> cbm_forward_any(const Tensor& x, const Tensor& weight_r_in,
                                                   const std::optional<Tensor>& bias_r, const Tensor& weight_t_in,
                                                   const std::optional<Tensor>& bias_t, const Tensor& c0,
                                                   Options opt, const StepKernels& kernels, bool save_r,
                                                   bool all_states) {
  check_forward_args(x, weight_r_in, bias_r, weight_t_in, bias_t, c0, opt);
  const Tensor weight_r = contiguous_weight(weight_r_in), weight_t = contiguous_weight(weight_t_in);
  const int64_t T = x.size(0), B = x.size(1), C_in = x.size(2), H = x.size(3), W = x.size(4);
  const int64_t C = weight_r.size(0);
  auto o = at::empty({T, B, C, H, W}, x.options());
  const int64_t steps = chunk_steps(kernels.conv_chunk_elements, T, B, (C_in + 2 * C) * H * W);
  // The whole-sequence hook writes every state and r: only where they are kept anyway (a forward for backward, or an
  // inference that returns all states), so an inference without all_states keeps two states on every device.
  const bool sequence = kernels.forward_sequence != nullptr && steps >= T && (save_r || all_states);
  // Backward reads every state; the persistent kernels write every state.
  const StepStates c(T, B, C, H, W, x.options(), save_r || sequence || all_states);
  Tensor r = save_r || sequence ? at::empty_like(o) : Tensor();
  // Nothing to compute for an empty sequence, batch or image; returning here also keeps every size that is
  // divided by (B in chunk_steps' callers) or indexed with (the persistent kernels' problem) non-zero.
  if (o.numel() == 0) return {o, c.result(), save_r ? r : Tensor()};

  const Tensor w_tc = weight_t.narrow(1, C_in, C).contiguous();
  const Tensor bias = at::cat({bias_r.has_value() ? *bias_r : at::zeros({C}, x.options()),
                               bias_t.has_value() ? *bias_t : at::zeros({C}, x.options())});
  const Tensor w_in = input_weight(weight_r, weight_t.narrow(1, 0, C_in));
  project_forward(x, w_in, bias, kernels.conv_chunk_elements, [&](int64_t t0, int64_t n, const Tensor& P) {
    // P = [P_r | P_x] for the chunk's (t, b): (n, B, 2C, H, W).
    const auto step_loop = [&]() {
      for (int64_t t = t0; t < t0 + n; ++t) {
        const Tensor rec = same_conv(t == 0 ? c0 : c.at(t - 1), w_tc);
        const Tensor p_r = P[t - t0].narrow(1, 0, C);
        kernels.forward(p_r, P[t - t0].narrow(1, C, C), rec, r.defined() ? r[t] : p_r, c.at(t), o[t], opt);
      }
    };
    if (sequence) {
      const Tensor p_r = P.narrow(2, 0, C), p_x = P.narrow(2, C, C), c0_c = c0.contiguous();
      const Tensor c_all = c.result();  // every state: `sequence` keeps them all
      kernels.forward_sequence(ForwardSequence{p_r, p_x, w_tc, c0_c, r, c_all, o, opt}, step_loop);
    } else {
      step_loop();
    }
  });
  return {o, c.result(), save_r ? r : Tensor()};
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor> cbm_forward_impl(const Tensor& x, const Tensor& weight_r,
                                                    const std::optional<Tensor>& bias_r, const Tensor& weight_t,
                                                    const std::optional<Tensor>& bias_t, const Tensor& c0,
                                                    Options opt, const StepKernels& kernels) {
  return cbm_forward_any(x, weight_r, bias_r, weight_t, bias_t, c0, opt, kernels, /*save_r=*/true,
                         /*all_states=*/true);
}

std::tuple<Tensor, Tensor> cbm_inference_impl(const Tensor& x, const Tensor& weight_r,
                                              const std::optional<Tensor>& bias_r, const Tensor& weight_t,
                                              const std::optional<Tensor>& bias_t, const Tensor& c0, Options opt,
                                              bool all_states, const StepKernels& kernels) {
  auto [o, c, r] =
      cbm_forward_any(x, weight_r, bias_r, weight_t, bias_t, c0, opt, kernels, /*save_r=*/false, all_states);
  return {o, c};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> cbm_backward_impl(
    const Tensor& grad_o_in, const Tensor& grad_c_in, const Tensor& x, const Tensor& weight_r_in,
    const Tensor& weight_t_in, const Tensor& c0_in, const Tensor& r, const Tensor& c,
    const std::optional<Tensor>& td_mask, Options opt, const StepKernels& kernels) {
  check_backward_args(grad_o_in, grad_c_in, x, weight_r_in, weight_t_in, c0_in, r, c, td_mask, opt);
  const Tensor weight_r = contiguous_weight(weight_r_in), weight_t = contiguous_weight(weight_t_in);
  const int64_t T = x.size(0), B = x.size(1), C_in = x.size(2);
  const int64_t C = weight_r.size(0);
  if (c.numel() == 0) {  // empty sequence, batch or image: zero gradients, and no division by B below
    return {contiguous_zeros(x), contiguous_zeros(weight_r), at::zeros({C}, x.options()), contiguous_zeros(weight_t),
            at::zeros({C}, x.options()), contiguous_zeros(c0_in)};
  }
  // The gradients may be strided (expanded from a sum, or a broadcast zero): the step kernels read strides.
  const Tensor& grad_o = grad_o_in;
  const Tensor& grad_c = grad_c_in;
  const Tensor c0 = c0_in.contiguous();
  const Tensor w_tx = weight_t.narrow(1, 0, C_in), w_tc = weight_t.narrow(1, C_in, C);
  const Tensor w_tc_t = transpose_kernel(w_tc);
  const Tensor w_in = input_weight(weight_r, w_tx);
  Tensor keep;  // (T*B, 1, 1, 1): 0 where Temporal Dropout cuts dG's path into x
  if (td_mask.has_value()) {
    keep = td_mask->logical_not().to(x.scalar_type());
    keep = (keep.dim() == 1 ? keep.view({T, 1}).expand({T, B}) : keep).reshape({T * B, 1, 1, 1});
  }
  // Per chunk of steps (last first; see StepKernels::conv_chunk_elements) the sequential part (dG_t needs
  // convT(dG_{t+1}, W_tc)) fills dP = [dP_r | dG]; the driver then batches the input projection's gradients.
  Tensor grad_w_tc, rec;
  auto [grad_x, grad_w_in, grad_bias] = project_backward(
      x, w_in, kernels.conv_chunk_elements,
      [&](int64_t t0, int64_t n, const Tensor& dP) {
        const int64_t t1 = t0 + n;
        const Tensor dP_r = dP.narrow(2, 0, C), dG = dP.narrow(2, C, C);
        const auto step_loop = [&, rec_in = rec]() {  // repeatable: starts from the chunk's incoming gradient
          Tensor rec_t = rec_in;
          for (int64_t t = t1 - 1; t >= t0; --t) {
            kernels.backward(grad_o[t], grad_c[t], rec_t, r[t], c[t], dG[t - t0], dP_r[t - t0], opt);
            rec_t = same_conv(dG[t - t0], w_tc_t);  // convT(dG_t, W_tc): feeds step t-1; at t = 0 it is grad_c0
          }
          return rec_t;
        };
        if (kernels.backward_sequence != nullptr && n == T) {
          const Tensor w_tc_c = w_tc.contiguous();
          rec = kernels.backward_sequence(BackwardSequence{grad_o, grad_c, r, c, w_tc_c, c0, dG, dP_r, opt},
                                          step_loop);
        } else {
          rec = step_loop();
        }
        // Recurrent weight: pairs (c_{t-1}, dG_t).
        accumulate_lagged_weight_grad(grad_w_tc, dG, c, c0, t0, n, w_tc);
      },
      keep, C, C);
  const Tensor grad_weight_r = crop_kernel(grad_w_in.narrow(0, 0, C), weight_r.size(-1)).contiguous();
  const Tensor grad_w_tx = crop_kernel(grad_w_in.narrow(0, C, C), weight_t.size(-1));
  return {grad_x,
          grad_weight_r,
          grad_bias.narrow(0, 0, C).clone(),  // outputs must not alias
          at::cat({grad_w_tx, grad_w_tc}, 1),
          grad_bias.narrow(0, C, C).clone(),
          rec};
}

}  // namespace deeprnn
