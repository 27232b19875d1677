// The device-generic recurrence driver: see recurrence.h.
#include "recurrence.h"

#include <c10/util/Exception.h>

namespace deeprnn {

using at::Tensor;

Tensor pad_kernel(const Tensor& w, int64_t k) {
  const int64_t p = (k - w.size(-1)) / 2;
  return p == 0 ? w : at::constant_pad_nd(w, {p, p, p, p});
}

Tensor crop_kernel(const Tensor& g, int64_t k) {
  const int64_t p = (g.size(-1) - k) / 2;
  return p == 0 ? g : g.narrow(2, p, k).narrow(3, p, k);
}

Tensor transpose_kernel(const Tensor& w) { return w.flip({2, 3}).transpose(0, 1).contiguous(); }

namespace {

// oneDNN spends tens of microseconds on any CPU convolution (it picks a kernel and reorders the weights per call),
// more than a whole per-step recurrent convolution of a small image costs as im2col + GEMM (ATen's thnn_conv2d):
// that runs them in about half the time, up to roughly this size, where oneDNN's faster kernels take over
// (measured per shape in benchmarks/RESULTS.md, the cell table's notes). A fixed rule, not a timing,
// so that every run of a program computes the same bits.
constexpr double kIm2colMaxFlops = 3.2e7;

bool im2col_is_faster(const Tensor& input, const Tensor& weight) {
  // float only: oneDNN has no double kernels (ATen already takes the im2col path), and bf16 GEMMs are slow here.
  if (!input.is_cpu() || input.scalar_type() != at::kFloat) return false;
  const double flops = 2.0 * double(input.size(0)) * double(input.size(2)) * double(input.size(3)) *
                       double(weight.numel());
  return flops <= kIm2colMaxFlops;
}

}  // namespace

Tensor same_conv(const Tensor& input, const Tensor& weight, const Tensor& bias) {
  const int64_t k = weight.size(-1), p = k / 2;
  if (im2col_is_faster(input, weight)) return at::thnn_conv2d(input, weight, {k, k}, bias, {1, 1}, {p, p});
  return at::conv2d(input, weight, bias, 1, p);
}

std::tuple<Tensor, Tensor, Tensor> conv_backward(const Tensor& grad, const Tensor& input, const Tensor& weight,
                                                 std::array<bool, 3> mask) {
  const int64_t p = weight.size(-1) / 2;
  const std::array<int64_t, 1> bias_sizes{weight.size(0)};
  return at::convolution_backward(grad, input, weight, at::IntArrayRef(bias_sizes), {1, 1}, {p, p}, {1, 1}, false,
                                  {0, 0}, 1, mask);
}

void accumulate(Tensor& total, const Tensor& part) { total = total.defined() ? total.add_(part) : part; }

void check_like_x(const Tensor& x, const Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.scalar_type() == x.scalar_type(), name, " must have x's dtype ", x.scalar_type(), ", got ",
                    t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == x.device(), name, " must be on x's device ", x.device(), ", got ", t.device());
}

int64_t chunk_steps(int64_t chunk_elements, int64_t T, int64_t B, int64_t elements_per_image) {
  const int64_t total = T * B;
  const int64_t images =
      chunk_elements <= 0
          ? total
          : std::clamp<int64_t>(chunk_elements / std::max<int64_t>(1, elements_per_image), 1, std::max<int64_t>(1, total));
  return std::max<int64_t>(1, images / std::max<int64_t>(1, B));
}

bool one_step_per_chunk(int64_t chunk_elements, int64_t B, int64_t elements_per_image) {
  return chunk_elements > 0 && chunk_elements / std::max<int64_t>(1, elements_per_image) < 2 * B;
}

StepConcat::StepConcat(const Tensor& x, int64_t C)
    : x_(x),
      buffer_(at::empty({x.size(1), x.size(2) + C, x.size(3), x.size(4)}, x.options())),
      C_in_(x.size(2)) {}

const Tensor& StepConcat::fill_x(int64_t t) {
  buffer_.narrow(1, 0, C_in_).copy_(x_[t]);
  return buffer_;
}

const Tensor& StepConcat::fill(int64_t t, const Tensor& s) {
  state().copy_(s);
  return fill_x(t);
}

StepStates::StepStates(int64_t T, int64_t B, int64_t C, int64_t H, int64_t W, const at::TensorOptions& options,
                       bool all)
    : buffer_(at::empty({all ? T : std::min<int64_t>(T, 2), B, C, H, W}, options)), T_(T), all_(all) {}

Tensor StepStates::result() const {
  if (all_) return buffer_;
  return T_ == 0 ? buffer_ : buffer_.narrow(0, (T_ - 1) % 2, 1);
}

void project_forward(const Tensor& x, const Tensor& w_in, const Tensor& bias, int64_t chunk_elements,
                     const ForwardChunk& chunk) {
  const int64_t T = x.size(0), B = x.size(1), C_in = x.size(2), H = x.size(3), W = x.size(4), Cp = w_in.size(0);
  const Tensor x_c = x.contiguous();
  const int64_t steps = chunk_steps(chunk_elements, T, B, (C_in + Cp) * H * W);
  for (int64_t t0 = 0; t0 < T; t0 += steps) {
    const int64_t n = std::min(steps, T - t0);
    const Tensor P = at::conv2d(x_c.narrow(0, t0, n).view({n * B, C_in, H, W}), w_in, bias, 1, w_in.size(-1) / 2)
                         .contiguous()
                         .view({n, B, Cp, H, W});
    chunk(t0, n, P);
  }
}

std::tuple<Tensor, Tensor, Tensor> project_backward(const Tensor& x, const Tensor& w_in, int64_t chunk_elements,
                                                    const BackwardChunk& chunk, const Tensor& keep, int64_t cut0,
                                                    int64_t cut_n) {
  const int64_t T = x.size(0), B = x.size(1), C_in = x.size(2), H = x.size(3), W = x.size(4), Cp = w_in.size(0);
  const int64_t TB = T * B;
  const Tensor x_flat = x.contiguous().view({TB, C_in, H, W});
  // The chunk buffer is reused, so memory stays O(chunk), not O(T).
  const int64_t steps = chunk_steps(chunk_elements, T, B, (C_in + Cp) * H * W);
  const Tensor dP = at::empty({std::min(steps, T), B, Cp, H, W}, x.options());
  Tensor grad_x = steps >= T ? Tensor() : at::empty_like(x_flat);
  Tensor grad_w_in, grad_bias;
  for (int64_t t1 = T; t1 > 0; t1 -= steps) {
    const int64_t t0 = std::max<int64_t>(0, t1 - steps), n = t1 - t0;
    chunk(t0, n, dP);
    const Tensor dp = dP.narrow(0, 0, n).view({n * B, Cp, H, W}), xs = x_flat.narrow(0, t0 * B, n * B);
    auto [dx, gw, gb] = conv_backward(dp, xs, w_in, {!keep.defined(), true, true});
    if (keep.defined()) {
      Tensor dp_cut = dp.clone();
      dp_cut.narrow(1, cut0, cut_n).mul_(keep.narrow(0, t0 * B, n * B));
      dx = std::get<0>(conv_backward(dp_cut, xs, w_in, {true, false, false}));
    }
    if (grad_x.defined()) {
      grad_x.narrow(0, t0 * B, n * B).copy_(dx);
    } else {
      grad_x = dx;
    }
    accumulate(grad_w_in, gw);
    accumulate(grad_bias, gb);
  }
  return {grad_x.view(x.sizes()), grad_w_in, grad_bias};
}

void accumulate_lagged_weight_grad(Tensor& grad_w, const Tensor& dY, const Tensor& states, const Tensor& s0,
                                   int64_t t0, int64_t n, const Tensor& w) {
  const int64_t B = dY.size(1), Co = dY.size(2), H = dY.size(3), W = dY.size(4), C = s0.size(1);
  const int64_t first = t0 == 0 ? 1 : 0;  // steps whose previous state is states[t-1]
  if (t0 == 0) accumulate(grad_w, std::get<1>(conv_backward(dY[0], s0, w, {false, true, false})));
  if (n > first) {
    const Tensor dY_flat = dY.narrow(0, first, n - first).reshape({(n - first) * B, Co, H, W});
    accumulate(grad_w, std::get<1>(conv_backward(dY_flat, states.narrow(0, t0 + first - 1, n - first).view({-1, C, H, W}),
                                                 w, {false, true, false})));
  }
}

Tensor previous_states(const Tensor& states, const Tensor& s0, int64_t t0, int64_t n) {
  if (t0 > 0) return states.narrow(0, t0 - 1, n);
  return n == 1 ? s0.unsqueeze(0) : at::cat({s0.unsqueeze(0), states.narrow(0, 0, n - 1)});
}

}  // namespace deeprnn
