// CPU kernels of the CBM ops: the fused per-step epilogues (at::parallel_for over the batch, one pass over
// memory, activation and merge chosen at compile time) plugged into the device-generic recurrence.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>

#include "../cbm.h"

namespace deeprnn {
namespace {

using at::Tensor;

template <typename T>
inline T sigmoid(T z) {
  return T(1) / (T(1) + std::exp(-z));
}

template <typename T, int64_t ACT>
inline T act_r_fn(T z) {
  if constexpr (ACT == kActRRelu) return z > T(0) ? z : T(0);
  if constexpr (ACT == kActRTanh) return std::tanh(z);
  return z;
}

// act_r' written in terms of the activation's output r.
template <typename T, int64_t ACT>
inline T act_r_grad(T r) {
  if constexpr (ACT == kActRRelu) return r > T(0) ? T(1) : T(0);
  if constexpr (ACT == kActRTanh) return T(1) - r * r;
  return T(1);
}

template <typename T, int64_t ACT>
inline T act_t_fn(T z) {
  if constexpr (ACT == kActTRelu) return z > T(0) ? z : T(0);
  return sigmoid(z);
}

// act_t' written in terms of the activation's output c.
template <typename T, int64_t ACT>
inline T act_t_grad(T c) {
  if constexpr (ACT == kActTRelu) return c > T(0) ? T(1) : T(0);
  return c * (T(1) - c);
}

// Calls fn(b, begin, end) over the (B, C*H*W) index space in parallel chunks.
template <typename F>
void parallel_over(const Tensor& like, F fn) {
  const int64_t B = like.size(0), inner = like[0].numel();
  at::parallel_for(0, B * inner, at::internal::GRAIN_SIZE, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end;) {
      const int64_t b = i / inner, j = i % inner;
      const int64_t stop = std::min(inner, j + (end - i));
      fn(b, j, stop);
      i += stop - j;
    }
  });
}

template <typename scalar_t, int64_t ACT_R, int64_t ACT_T, int64_t MERGE>
void forward_step(const Tensor& p_r, const Tensor& p_x, const Tensor& rec, const Tensor& r, const Tensor& c,
                  const Tensor& o) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t *pr = p_r.const_data_ptr<scalar_t>(), *px = p_x.const_data_ptr<scalar_t>(),
                 *rc = rec.const_data_ptr<scalar_t>();
  scalar_t *rp = r.mutable_data_ptr<scalar_t>(), *cp = c.mutable_data_ptr<scalar_t>(),
           *op = o.mutable_data_ptr<scalar_t>();
  const int64_t sp = p_r.stride(0), s = c.stride(0);
  parallel_over(c, [&](int64_t b, int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; ++j) {
      const acc_t rv = act_r_fn<acc_t, ACT_R>(acc_t(pr[b * sp + j]));
      const acc_t cv = act_t_fn<acc_t, ACT_T>(acc_t(px[b * sp + j]) + acc_t(rc[b * s + j]));
      rp[b * s + j] = rv;
      cp[b * s + j] = cv;
      op[b * s + j] = MERGE == kMergeMul ? rv * cv : rv + cv;
    }
  });
}

template <typename scalar_t, int64_t ACT_R, int64_t ACT_T, int64_t MERGE>
void backward_step(const Tensor& grad_o, const Tensor& grad_c, const Tensor& rec, const Tensor& r, const Tensor& c,
                   const Tensor& dG, const Tensor& dP_r) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t *go = grad_o.const_data_ptr<scalar_t>(), *gc = grad_c.const_data_ptr<scalar_t>(),
                 *rp = r.const_data_ptr<scalar_t>(), *cp = c.const_data_ptr<scalar_t>();
  const scalar_t* rc = rec.defined() ? rec.const_data_ptr<scalar_t>() : nullptr;
  scalar_t *dg = dG.mutable_data_ptr<scalar_t>(), *dpr = dP_r.mutable_data_ptr<scalar_t>();
  const int64_t s = c.stride(0), sd = dG.stride(0);
  parallel_over(c, [&](int64_t b, int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; ++j) {
      const int64_t i = b * s + j;
      const acc_t g = acc_t(go[i]), rv = acc_t(rp[i]), cv = acc_t(cp[i]);
      acc_t dc = acc_t(gc[i]) + (MERGE == kMergeMul ? g * rv : g);
      if (rc != nullptr) dc += acc_t(rc[i]);
      dg[b * sd + j] = dc * act_t_grad<acc_t, ACT_T>(cv);
      dpr[b * sd + j] = (MERGE == kMergeMul ? g * cv : g) * act_r_grad<acc_t, ACT_R>(rv);
    }
  });
}

// Turns the runtime option codes into template arguments.
template <typename F>
void dispatch_options(Options opt, F fn) {
  auto with_merge = [&](auto act_r, auto act_t) {
    if (opt.merge == kMergeMul) {
      fn(act_r, act_t, std::integral_constant<int64_t, kMergeMul>{});
    } else {
      fn(act_r, act_t, std::integral_constant<int64_t, kMergeAdd>{});
    }
  };
  auto with_act_t = [&](auto act_r) {
    if (opt.act_t == kActTSigmoid) {
      with_merge(act_r, std::integral_constant<int64_t, kActTSigmoid>{});
    } else {
      with_merge(act_r, std::integral_constant<int64_t, kActTRelu>{});
    }
  };
  switch (opt.act_r) {
    case kActRRelu: with_act_t(std::integral_constant<int64_t, kActRRelu>{}); break;
    case kActRTanh: with_act_t(std::integral_constant<int64_t, kActRTanh>{}); break;
    default: with_act_t(std::integral_constant<int64_t, kActRIdentity>{}); break;
  }
}

void forward_epilogue_cpu(const Tensor& p_r, const Tensor& p_x, const Tensor& rec, const Tensor& r, const Tensor& c,
                          const Tensor& o, Options opt) {
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, c.scalar_type(), "cbm_forward_cpu", [&] {
    dispatch_options(opt, [&](auto ar, auto at_, auto m) {
      forward_step<scalar_t, decltype(ar)::value, decltype(at_)::value, decltype(m)::value>(p_r, p_x, rec, r, c, o);
    });
  });
}

void backward_epilogue_cpu(const Tensor& grad_o, const Tensor& grad_c, const Tensor& rec, const Tensor& r,
                           const Tensor& c, const Tensor& dG, const Tensor& dP_r, Options opt) {
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, c.scalar_type(), "cbm_backward_cpu", [&] {
    dispatch_options(opt, [&](auto ar, auto at_, auto m) {
      backward_step<scalar_t, decltype(ar)::value, decltype(at_)::value, decltype(m)::value>(grad_o, grad_c, rec, r,
                                                                                           c, dG, dP_r);
    });
  });
}

constexpr StepKernels kCpuKernels{forward_epilogue_cpu, backward_epilogue_cpu};

std::tuple<Tensor, Tensor, Tensor> cbm_forward_cpu(const Tensor& x, const Tensor& weight_r,
                                                   const std::optional<Tensor>& bias_r, const Tensor& weight_t,
                                                   const std::optional<Tensor>& bias_t, const Tensor& c0,
                                                   const std::optional<Tensor>& /*td_mask: backward only*/,
                                                   int64_t act_r, int64_t act_t, int64_t merge) {
  return cbm_forward_impl(x, weight_r, bias_r, weight_t, bias_t, c0, {act_r, act_t, merge}, kCpuKernels);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> cbm_backward_cpu(
    const Tensor& grad_o, const Tensor& grad_c, const Tensor& x, const Tensor& weight_r, const Tensor& weight_t,
    const Tensor& c0, const Tensor& r, const Tensor& c, const std::optional<Tensor>& td_mask, int64_t act_r,
    int64_t act_t, int64_t merge) {
  return cbm_backward_impl(grad_o, grad_c, x, weight_r, weight_t, c0, r, c, td_mask, {act_r, act_t, merge},
                           kCpuKernels);
}

}  // namespace

TORCH_LIBRARY_IMPL(deeprnn, CPU, m) {
  m.impl("cbm_forward", &cbm_forward_cpu);
  m.impl("cbm_backward", &cbm_backward_cpu);
}

}  // namespace deeprnn
