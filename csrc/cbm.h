// Shared declarations of the CBM ops: option codes, the device-generic recurrence driver, and the
// per-step epilogue interface each device implements (csrc/cpu/, csrc/cuda/).
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <optional>
#include <tuple>

namespace deeprnn {

// Codes match deeprnn_cuda/_checks.py (ACT_R_CODES, ACT_T_CODES, MERGE_CODES).
enum ActR : int64_t { kActRIdentity = 0, kActRRelu = 1, kActRTanh = 2 };
enum ActT : int64_t { kActTSigmoid = 0, kActTRelu = 1 };
enum Merge : int64_t { kMergeMul = 0, kMergeAdd = 1 };

struct Options {
  int64_t act_r;
  int64_t act_t;
  int64_t merge;
};

// The whole sequential part of a layer, for a device that can run it in one go (CUDA: the persistent kernels of
// csrc/cuda/cbm_persistent_*.cu). Every activation is (T, B, C, H, W) with contiguous (C, H, W); p_r / p_x and
// dG / dP_r are channel slices of one (T, B, 2C, H, W) buffer. w_tc is the contiguous (C, C, k, k) recurrent
// weight; c0 is contiguous.
struct ForwardSequence {
  const at::Tensor& p_r;
  const at::Tensor& p_x;
  const at::Tensor& w_tc;
  const at::Tensor& c0;
  const at::Tensor& r;
  const at::Tensor& c;
  const at::Tensor& o;
  Options opt;
};

struct BackwardSequence {
  const at::Tensor& grad_o;  // may be strided or a broadcast scalar, like the step kernels' inputs
  const at::Tensor& grad_c;
  const at::Tensor& r;
  const at::Tensor& c;
  const at::Tensor& w_tc;
  const at::Tensor& c0;
  const at::Tensor& dG;
  const at::Tensor& dP_r;
  Options opt;
};

// One time step's fused elementwise work. Every tensor is (B, C, H, W) with contiguous (C, H, W) and an
// arbitrary batch stride (the projections P_r, P_x and the gradient dG, dP_r are channel slices of one
// (B, 2C, H, W) buffer).
struct StepKernels {
  // G = p_x + rec;  c = act_t(G);  r = act_r(p_r);  o = merge(r, c).
  void (*forward)(const at::Tensor& p_r, const at::Tensor& p_x, const at::Tensor& rec, const at::Tensor& r,
                  const at::Tensor& c, const at::Tensor& o, Options opt);
  // dc = grad_o * dmerge/dc + grad_c + rec (rec undefined at the last step);  dG = dc * act_t'(c);
  // dP_r = grad_o * dmerge/dr * act_r'(r). Derivatives are taken from the saved outputs r and c.
  void (*backward)(const at::Tensor& grad_o, const at::Tensor& grad_c, const at::Tensor& rec, const at::Tensor& r,
                   const at::Tensor& c, const at::Tensor& dG, const at::Tensor& dP_r, Options opt);
  // Most elements (input plus output channels, times pixels, times images) per input-projection convolution,
  // forward and backward; 0 means all T*B images in one call. oneDNN runs large NCHW batches markedly slower
  // per image than small ones, while many tiny calls cost overhead, so the CPU goes a chunk at a time
  // (csrc/cpu/conv_chunk.h; tests make it small with deeprnn::_set_cpu_conv_chunk_elements).
  int64_t conv_chunk_elements = 0;
  // Optional (null: always the per-step loop). Fills r, c, o for all T steps, either by calling step_loop (the
  // per-step path) or with its own kernels; it may run both, e.g. to time them. Called when one chunk covers T.
  void (*forward_sequence)(const ForwardSequence& seq, const std::function<void()>& step_loop) = nullptr;
  // Optional: fills dG and dP_r for all T steps and returns grad_c0 = convT(dG_0, W_tc), as step_loop does.
  at::Tensor (*backward_sequence)(const BackwardSequence& seq, const std::function<at::Tensor()>& step_loop) = nullptr;
};

// Returns (o, c, r), each (T, B, C, H, W); r = act_r(conv(x, W_r) + b_r) is kept for backward.
std::tuple<at::Tensor, at::Tensor, at::Tensor> cbm_forward_impl(
    const at::Tensor& x, const at::Tensor& weight_r, const std::optional<at::Tensor>& bias_r,
    const at::Tensor& weight_t, const std::optional<at::Tensor>& bias_t, const at::Tensor& c0, Options opt,
    const StepKernels& kernels);

// Inference: (o, c) only; r is never materialised (docs/design.md section 7, the fast inference path). Without
// all_states, c is the final state alone, (1, B, C, H, W), and only two states are ever allocated.
std::tuple<at::Tensor, at::Tensor> cbm_inference_impl(
    const at::Tensor& x, const at::Tensor& weight_r, const std::optional<at::Tensor>& bias_r,
    const at::Tensor& weight_t, const std::optional<at::Tensor>& bias_t, const at::Tensor& c0, Options opt,
    bool all_states, const StepKernels& kernels);

// Returns (grad_x, grad_weight_r, grad_bias_r, grad_weight_t, grad_bias_t, grad_c0).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> cbm_backward_impl(
    const at::Tensor& grad_o, const at::Tensor& grad_c, const at::Tensor& x, const at::Tensor& weight_r,
    const at::Tensor& weight_t, const at::Tensor& c0, const at::Tensor& r, const at::Tensor& c,
    const std::optional<at::Tensor>& td_mask, Options opt, const StepKernels& kernels);

// Defensive checks for direct callers of torch.ops.deeprnn.* (the Python API validates first, with
// friendlier messages); raise c10::ValueError, which surfaces in Python as ValueError.
void check_forward_args(const at::Tensor& x, const at::Tensor& weight_r, const std::optional<at::Tensor>& bias_r,
                        const at::Tensor& weight_t, const std::optional<at::Tensor>& bias_t, const at::Tensor& c0,
                        Options opt);

// The same for the backward op: also the shapes, dtypes and devices of grad_o, grad_c, r, c and td_mask.
void check_backward_args(const at::Tensor& grad_o, const at::Tensor& grad_c, const at::Tensor& x,
                         const at::Tensor& weight_r, const at::Tensor& weight_t, const at::Tensor& c0,
                         const at::Tensor& r, const at::Tensor& c, const std::optional<at::Tensor>& td_mask,
                         Options opt);

// td_mask, when given, must be bool (T,) or (T, B) on x's device (x already checked). The forward ops ignore it but
// check it too, so a bad mask fails where it is passed, not later in backward.
void check_td_mask(const at::Tensor& x, const std::optional<at::Tensor>& td_mask);

}  // namespace deeprnn
