// CPU kernels of the CBM ops: the fused per-step epilogues (a TensorIterator over the step's operands, one SIMD
// pass over memory, activation and merge chosen at compile time) plugged into the device-generic recurrence.
// The SIMD primitives and the row walker are shared with the other cells (epilogue.h).

#include "epilogue.h"  // first: it sets CPU_CAPABILITY before any ATen vector header

#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "../cbm.h"
#include "conv_chunk.h"
#include "cuda_emulation.h"

namespace deeprnn {
namespace {

using at::Tensor;
using namespace cpu_epilogue;

template <int64_t ACT, typename V>
inline V act_r_fn(V z) {
  if constexpr (ACT == kActRRelu) return relu_(z);
  if constexpr (ACT == kActRTanh) return tanh_(z);
  return z;
}

// act_r' written in terms of the activation's output r.
template <int64_t ACT, typename V>
inline V act_r_grad(V r) {
  if constexpr (ACT == kActRRelu) return positive_(r);
  if constexpr (ACT == kActRTanh) return V(1) - r * r;
  return V(1);
}

template <int64_t ACT, typename V>
inline V act_t_fn(V z) {
  if constexpr (ACT == kActTRelu) return relu_(z);
  return V(1) / (V(1) + exp_(V(0) - z));
}

// act_t' written in terms of the activation's output c.
template <int64_t ACT, typename V>
inline V act_t_grad(V c) {
  if constexpr (ACT == kActTRelu) return positive_(c);
  return c * (V(1) - c);
}

template <int64_t MERGE, typename V>
inline V merge_fn(V r, V c) {
  if constexpr (MERGE == kMergeMul) return r * c;
  return r + c;
}

// Operands, outputs first: r, c, o, p_r, p_x, rec.
template <typename scalar_t, int64_t ACT_R, int64_t ACT_T, int64_t MERGE>
void forward_row(const Row<6>& row, int64_t n) {
  int64_t j = 0;
  if constexpr (kSimd<scalar_t>) {
    if (row.contiguous<scalar_t>()) {
      using V = Vec<scalar_t>;
      for (; j + V::size() <= n; j += V::size()) {
        const V rv = act_r_fn<ACT_R>(V::loadu(row.at<scalar_t>(3, j)));
        const V cv = act_t_fn<ACT_T>(V::loadu(row.at<scalar_t>(4, j)) + V::loadu(row.at<scalar_t>(5, j)));
        rv.store(row.at<scalar_t>(0, j));
        cv.store(row.at<scalar_t>(1, j));
        merge_fn<MERGE>(rv, cv).store(row.at<scalar_t>(2, j));
      }
    }
  }
  using acc_t = at::opmath_type<scalar_t>;
  for (; j < n; ++j) {
    const acc_t rv = act_r_fn<ACT_R>(acc_t(*row.at<scalar_t>(3, j)));
    const acc_t cv = act_t_fn<ACT_T>(acc_t(*row.at<scalar_t>(4, j)) + acc_t(*row.at<scalar_t>(5, j)));
    *row.at<scalar_t>(0, j) = rv;
    *row.at<scalar_t>(1, j) = cv;
    *row.at<scalar_t>(2, j) = merge_fn<MERGE>(rv, cv);
  }
}

// Operands, outputs first: dG, dP_r, grad_o, grad_c, r, c[, rec].
template <typename scalar_t, int64_t ACT_R, int64_t ACT_T, int64_t MERGE, int N>
void backward_row(const Row<N>& row, int64_t n) {
  constexpr bool kHasRec = N == 7;
  auto step = [](auto g, auto dc_ext, auto rec, auto rv, auto cv) {
    auto dc = dc_ext + (MERGE == kMergeMul ? g * rv : g);
    if constexpr (kHasRec) dc = dc + rec;
    return std::make_pair(dc * act_t_grad<ACT_T>(cv), (MERGE == kMergeMul ? g * cv : g) * act_r_grad<ACT_R>(rv));
  };
  int64_t j = 0;
  if constexpr (kSimd<scalar_t>) {
    if (row.template contiguous_or_broadcast<scalar_t>()) {  // the output gradients may be broadcast zeros
      using V = Vec<scalar_t>;
      auto load = [&](int i) {
        const scalar_t* p = row.template at<scalar_t>(i, j);
        return row.stride[i] == 0 ? V(*p) : V::loadu(p);
      };
      for (; j + V::size() <= n; j += V::size()) {
        const auto [dG, dPr] = step(load(2), load(3), kHasRec ? load(N - 1) : V(0), load(4), load(5));
        dG.store(row.template at<scalar_t>(0, j));
        dPr.store(row.template at<scalar_t>(1, j));
      }
    }
  }
  using acc_t = at::opmath_type<scalar_t>;
  for (; j < n; ++j) {
    auto load = [&](int i) { return acc_t(*row.template at<scalar_t>(i, j)); };
    const auto [dG, dPr] = step(load(2), load(3), kHasRec ? load(N - 1) : acc_t(0), load(4), load(5));
    *row.template at<scalar_t>(0, j) = dG;
    *row.template at<scalar_t>(1, j) = dPr;
  }
}

template <typename scalar_t, int64_t ACT_R, int64_t ACT_T, int64_t MERGE>
void forward_step(const Tensor& p_r, const Tensor& p_x, const Tensor& rec, const Tensor& r, const Tensor& c,
                  const Tensor& o) {
  for_each_row<scalar_t, 6>({r, c, o, p_r, p_x, rec}, 3, forward_row<scalar_t, ACT_R, ACT_T, MERGE>);
}

template <typename scalar_t, int64_t ACT_R, int64_t ACT_T, int64_t MERGE>
void backward_step(const Tensor& grad_o, const Tensor& grad_c, const Tensor& rec, const Tensor& r, const Tensor& c,
                   const Tensor& dG, const Tensor& dP_r) {
  if (rec.defined()) {
    for_each_row<scalar_t, 7>({dG, dP_r, grad_o, grad_c, r, c, rec}, 2, backward_row<scalar_t, ACT_R, ACT_T, MERGE, 7>);
  } else {
    for_each_row<scalar_t, 6>({dG, dP_r, grad_o, grad_c, r, c}, 2, backward_row<scalar_t, ACT_R, ACT_T, MERGE, 6>);
  }
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

StepKernels cpu_kernels() {
  if (g_cpu_emulates_cuda) return cuda_emulation_cbm_kernels();
  return StepKernels{forward_epilogue_cpu, backward_epilogue_cpu, g_cpu_conv_chunk_elements.load()};
}

std::tuple<Tensor, Tensor, Tensor> cbm_forward_cpu(const Tensor& x, const Tensor& weight_r,
                                                   const std::optional<Tensor>& bias_r, const Tensor& weight_t,
                                                   const std::optional<Tensor>& bias_t, const Tensor& c0,
                                                   const std::optional<Tensor>& td_mask, int64_t act_r,
                                                   int64_t act_t, int64_t merge) {
  const Options opt{act_r, act_t, merge};
  check_forward_args(x, weight_r, bias_r, weight_t, bias_t, c0, opt);
  check_td_mask(x, td_mask);  // used in backward only, but a bad mask fails where it is passed
  return cbm_forward_impl(x, weight_r, bias_r, weight_t, bias_t, c0, opt, cpu_kernels());
}

std::tuple<Tensor, Tensor> cbm_inference_cpu(const Tensor& x, const Tensor& weight_r,
                                             const std::optional<Tensor>& bias_r, const Tensor& weight_t,
                                             const std::optional<Tensor>& bias_t, const Tensor& c0, int64_t act_r,
                                             int64_t act_t, int64_t merge, bool all_states) {
  return cbm_inference_impl(x, weight_r, bias_r, weight_t, bias_t, c0, {act_r, act_t, merge}, all_states,
                            cpu_kernels());
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> cbm_backward_cpu(
    const Tensor& grad_o, const Tensor& grad_c, const Tensor& x, const Tensor& weight_r, const Tensor& weight_t,
    const Tensor& c0, const Tensor& r, const Tensor& c, const std::optional<Tensor>& td_mask, int64_t act_r,
    int64_t act_t, int64_t merge) {
  return cbm_backward_impl(grad_o, grad_c, x, weight_r, weight_t, c0, r, c, td_mask, {act_r, act_t, merge},
                           cpu_kernels());
}

}  // namespace

int64_t set_cpu_conv_chunk_elements(int64_t elements) { return g_cpu_conv_chunk_elements.exchange(elements); }

TORCH_LIBRARY_IMPL(deeprnn, CPU, m) {
  m.impl("cbm_forward", &cbm_forward_cpu);
  m.impl("cbm_inference", &cbm_inference_cpu);
  m.impl("cbm_backward", &cbm_backward_cpu);
}

}  // namespace deeprnn
