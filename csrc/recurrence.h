// The device-generic recurrence driver shared by every cell (docs/design.md section 7): the input projections of
// many steps in one batched convolution, the sequential part handed to the cell a chunk of steps at a time,
// and in backward the input and weight gradients of each chunk in a few batched convolutions. A cell is its
// per-step hook (recurrent convolutions plus its fused epilogues, csrc/cpu/ and csrc/cuda/) and its reference;
// it never copies this loop.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <array>
#include <functional>
#include <tuple>

namespace deeprnn {

// Pads a square odd kernel with zeros to size k: "same" convolution with the padded kernel is unchanged.
at::Tensor pad_kernel(const at::Tensor& w, int64_t k);
// Undoes pad_kernel on a gradient.
at::Tensor crop_kernel(const at::Tensor& g, int64_t k);
// The gradient of a stride-1 "same" convolution with respect to its input is the same convolution with the
// kernel flipped spatially and its channel axes swapped.
at::Tensor transpose_kernel(const at::Tensor& w);
// Stride-1 "same" convolution, plus `bias` (C_out,) in the same pass when it is defined.
at::Tensor same_conv(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& bias = {});
// Gradients of a stride-1 "same" convolution (with bias) for the outputs selected by mask.
std::tuple<at::Tensor, at::Tensor, at::Tensor> conv_backward(const at::Tensor& grad, const at::Tensor& input,
                                                             const at::Tensor& weight, std::array<bool, 3> mask);
// The layout rule for weights: every op body works on contiguous weights, so the convolution libraries (oneDNN, cuDNN),
// which return channels-last gradients for channels-last weights, return contiguous gradients, as the fake kernels
// say (a model moved to channels_last, a weight seen through a permutation).
inline at::Tensor contiguous_weight(const at::Tensor& w) { return w.contiguous(); }
// Zeros of t's shape, contiguous whatever t's layout (zeros_like keeps it): the gradients of empty problems.
inline at::Tensor contiguous_zeros(const at::Tensor& t) { return at::zeros(t.sizes(), t.options()); }
// dtype and device of `t` (named `name`) must be x's: the kernels index every tensor with x's sizes and read it as
// x's type (a ValueError otherwise).
void check_like_x(const at::Tensor& x, const at::Tensor& t, const char* name);
// total += part (total starts undefined).
void accumulate(at::Tensor& total, const at::Tensor& part);

// Time steps per chunk for a projection whose images hold `elements_per_image` elements (input plus output
// channels times pixels); `chunk_elements` <= 0 means all T steps at once.
int64_t chunk_steps(int64_t chunk_elements, int64_t T, int64_t B, int64_t elements_per_image);

// True when a single step's projection already fills a chunk (chunk_elements > 0 and two steps' images exceed
// it): the projections then gain nothing from batching over time, and a cell runs each step's input and
// recurrent convolutions as one convolution of cat[x_t, s_{t-1}] (StepConcat), the per-step loop's formulation:
// one call instead of two per step forward, and in backward one convolution_backward per step instead of three.
bool one_step_per_chunk(int64_t chunk_elements, int64_t B, int64_t elements_per_image);

// The (B, C_in + C, H, W) buffer cat[x_t, s] for x (T, B, C_in, H, W), reused from step to step: fill(t, s)
// copies both parts; fill_x(t) only x_t, for a kernel that writes s straight into state(). `grad_x` and
// `grad_state` take a gradient of it apart.
class StepConcat {
 public:
  StepConcat(const at::Tensor& x, int64_t C);
  const at::Tensor& fill(int64_t t, const at::Tensor& s);
  const at::Tensor& fill_x(int64_t t);
  at::Tensor state() const { return buffer_.narrow(1, C_in_, buffer_.size(1) - C_in_); }
  at::Tensor grad_x(const at::Tensor& grad) const { return grad.narrow(1, 0, C_in_); }
  at::Tensor grad_state(const at::Tensor& grad) const { return grad.narrow(1, C_in_, grad.size(1) - C_in_); }

 private:
  at::Tensor x_, buffer_;
  int64_t C_in_;
};

// The states s_t a forward writes, step by step: all T of them, (T, B, C, H, W), or, where only the last is wanted
// (an inference that returns the final state), two (B, C, H, W) buffers used in turn, so the op allocates and
// touches 2 states instead of T (on the CPU a fresh (T, ...) output also costs its page faults on every call).
// at(t) is s_t (without all, valid for the current and previous step only); result() is every state, or the last
// as (1, B, C, H, W) (what the full tensor's [-1:] would be).
class StepStates {
 public:
  StepStates(int64_t T, int64_t B, int64_t C, int64_t H, int64_t W, const at::TensorOptions& options, bool all);
  at::Tensor at(int64_t t) const { return buffer_[all_ ? t : t % 2]; }
  at::Tensor result() const;

 private:
  at::Tensor buffer_;
  int64_t T_;
  bool all_;
};

// Forward: P = conv(x, w_in) + bias for a chunk of steps at a time, (n, B, Cp, H, W) contiguous, handed to
// chunk(t0, n, P) in time order. x is (T, B, C_in, H, W); w_in (Cp, C_in, k, k); bias (Cp,).
using ForwardChunk = std::function<void(int64_t t0, int64_t n, const at::Tensor& P)>;
void project_forward(const at::Tensor& x, const at::Tensor& w_in, const at::Tensor& bias, int64_t chunk_elements,
                     const ForwardChunk& chunk);

// Backward: chunks of steps, last first. chunk(t0, n, dP) runs the cell's sequential part for steps
// [t0, t0 + n), filling dP[:n] (n, B, Cp, H, W) with the gradient of the projection P (and accumulating its own
// recurrent weight gradients); the driver then takes the gradients of x, w_in and the bias for those steps.
// `keep`, when defined, is (T*B, 1, 1, 1): x's gradient sees dP's channels [cut0, cut0 + cut_n) multiplied by
// it (Temporal Dropout), while w_in and the bias see the full dP. Returns (grad_x, grad_w_in, grad_bias).
using BackwardChunk = std::function<void(int64_t t0, int64_t n, const at::Tensor& dP)>;
std::tuple<at::Tensor, at::Tensor, at::Tensor> project_backward(const at::Tensor& x, const at::Tensor& w_in,
                                                                int64_t chunk_elements, const BackwardChunk& chunk,
                                                                const at::Tensor& keep = {}, int64_t cut0 = 0,
                                                                int64_t cut_n = 0);

// Accumulates into grad_w the weight gradient of a recurrent convolution y_t = conv(s_{t-1}, w) for the steps
// [t0, t0 + n): dY is (>= n, B, C_out, H, W), s_{-1} = s0 (B, C, H, W), s_t = states[t]. The s0 pair is taken
// apart so the states are never concatenated.
void accumulate_lagged_weight_grad(at::Tensor& grad_w, const at::Tensor& dY, const at::Tensor& states,
                                   const at::Tensor& s0, int64_t t0, int64_t n, const at::Tensor& w);

// The states s_{t-1} for t in [t0, t0 + n) as one (n, B, C, H, W) tensor (a view unless t0 == 0).
at::Tensor previous_states(const at::Tensor& states, const at::Tensor& s0, int64_t t0, int64_t n);

}  // namespace deeprnn
