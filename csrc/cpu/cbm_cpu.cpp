// CPU kernels of the CBM ops: the fused per-step epilogues (at::parallel_for over the batch, one SIMD pass
// over memory, activation and merge chosen at compile time) plugged into the device-generic recurrence.

// ATen's Vectorized<T> is compiled for the instruction set named by CPU_CAPABILITY: AVX2+FMA when this file
// is built with them (setup.py enables them on hosts that have them), else ATen's portable implementation.
#if !defined(CPU_CAPABILITY)
#if defined(__AVX2__) && defined(__FMA__)
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#else
#define CPU_CAPABILITY DEFAULT
#endif
#endif

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <cmath>
#include <type_traits>

#include "../cbm.h"

namespace deeprnn {
namespace {

using at::Tensor;
template <typename T>
using Vec = at::vec::Vectorized<T>;

// The element math below is written once for scalars and for SIMD vectors; these are the primitives.
inline float exp_(float z) { return std::exp(z); }
inline double exp_(double z) { return std::exp(z); }
template <typename T>
inline Vec<T> exp_(const Vec<T>& z) { return z.exp(); }
inline float tanh_(float z) { return std::tanh(z); }
inline double tanh_(double z) { return std::tanh(z); }
template <typename T>
inline Vec<T> tanh_(const Vec<T>& z) { return z.tanh(); }
template <typename T>
inline T relu_(T z) { return z > T(0) ? z : T(0); }
template <typename T>
inline Vec<T> relu_(const Vec<T>& z) { return at::vec::clamp_min(z, Vec<T>(0)); }
template <typename T>
inline T positive_(T z) { return z > T(0) ? T(1) : T(0); }
template <typename T>
inline Vec<T> positive_(const Vec<T>& z) { return z.gt(Vec<T>(0)); }

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

// float and double take the SIMD path; reduced-precision types are converted element by element.
template <typename T>
constexpr bool kSimd = std::is_same_v<T, float> || std::is_same_v<T, double>;

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
void forward_span(const scalar_t* pr, const scalar_t* px, const scalar_t* rc, scalar_t* r, scalar_t* c, scalar_t* o,
                  int64_t n) {
  int64_t j = 0;
  if constexpr (kSimd<scalar_t>) {
    using V = Vec<scalar_t>;
    for (; j + V::size() <= n; j += V::size()) {
      const V rv = act_r_fn<ACT_R>(V::loadu(pr + j));
      const V cv = act_t_fn<ACT_T>(V::loadu(px + j) + V::loadu(rc + j));
      rv.store(r + j);
      cv.store(c + j);
      merge_fn<MERGE>(rv, cv).store(o + j);
    }
  }
  using acc_t = at::opmath_type<scalar_t>;
  for (; j < n; ++j) {
    const acc_t rv = act_r_fn<ACT_R>(acc_t(pr[j]));
    const acc_t cv = act_t_fn<ACT_T>(acc_t(px[j]) + acc_t(rc[j]));
    r[j] = rv;
    c[j] = cv;
    o[j] = merge_fn<MERGE>(rv, cv);
  }
}

template <typename scalar_t, int64_t ACT_R, int64_t ACT_T, int64_t MERGE, bool HAS_REC>
void backward_span(const scalar_t* go, const scalar_t* gc, const scalar_t* rc, const scalar_t* r, const scalar_t* c,
                   scalar_t* dg, scalar_t* dpr, int64_t n) {
  auto step = [&](auto g, auto dc_ext, auto rec, auto rv, auto cv) {
    using V = decltype(g);
    V dc = dc_ext + (MERGE == kMergeMul ? g * rv : g);
    if constexpr (HAS_REC) dc = dc + rec;
    return std::make_pair(dc * act_t_grad<ACT_T>(cv), (MERGE == kMergeMul ? g * cv : g) * act_r_grad<ACT_R>(rv));
  };
  int64_t j = 0;
  if constexpr (kSimd<scalar_t>) {
    using V = Vec<scalar_t>;
    for (; j + V::size() <= n; j += V::size()) {
      const auto [dG, dPr] = step(V::loadu(go + j), V::loadu(gc + j), HAS_REC ? V::loadu(rc + j) : V(0),
                                  V::loadu(r + j), V::loadu(c + j));
      dG.store(dg + j);
      dPr.store(dpr + j);
    }
  }
  using acc_t = at::opmath_type<scalar_t>;
  for (; j < n; ++j) {
    const auto [dG, dPr] = step(acc_t(go[j]), acc_t(gc[j]), HAS_REC ? acc_t(rc[j]) : acc_t(0), acc_t(r[j]),
                                acc_t(c[j]));
    dg[j] = dG;
    dpr[j] = dPr;
  }
}

template <typename scalar_t, int64_t ACT_R, int64_t ACT_T, int64_t MERGE>
void forward_step(const Tensor& p_r, const Tensor& p_x, const Tensor& rec, const Tensor& r, const Tensor& c,
                  const Tensor& o) {
  const scalar_t *pr = p_r.const_data_ptr<scalar_t>(), *px = p_x.const_data_ptr<scalar_t>(),
                 *rc = rec.const_data_ptr<scalar_t>();
  scalar_t *rp = r.mutable_data_ptr<scalar_t>(), *cp = c.mutable_data_ptr<scalar_t>(),
           *op = o.mutable_data_ptr<scalar_t>();
  const int64_t sp = p_r.stride(0), s = c.stride(0);
  parallel_over(c, [&](int64_t b, int64_t j0, int64_t j1) {
    forward_span<scalar_t, ACT_R, ACT_T, MERGE>(pr + b * sp + j0, px + b * sp + j0, rc + b * s + j0, rp + b * s + j0,
                                                cp + b * s + j0, op + b * s + j0, j1 - j0);
  });
}

template <typename scalar_t, int64_t ACT_R, int64_t ACT_T, int64_t MERGE>
void backward_step(const Tensor& grad_o, const Tensor& grad_c, const Tensor& rec, const Tensor& r, const Tensor& c,
                   const Tensor& dG, const Tensor& dP_r) {
  const scalar_t *go = grad_o.const_data_ptr<scalar_t>(), *gc = grad_c.const_data_ptr<scalar_t>(),
                 *rp = r.const_data_ptr<scalar_t>(), *cp = c.const_data_ptr<scalar_t>();
  const scalar_t* rc = rec.defined() ? rec.const_data_ptr<scalar_t>() : nullptr;
  scalar_t *dg = dG.mutable_data_ptr<scalar_t>(), *dpr = dP_r.mutable_data_ptr<scalar_t>();
  const int64_t s = c.stride(0), sd = dG.stride(0);
  parallel_over(c, [&](int64_t b, int64_t j0, int64_t j1) {
    const int64_t i = b * s + j0, id = b * sd + j0;
    if (rc != nullptr) {
      backward_span<scalar_t, ACT_R, ACT_T, MERGE, true>(go + i, gc + i, rc + i, rp + i, cp + i, dg + id, dpr + id,
                                                         j1 - j0);
    } else {
      backward_span<scalar_t, ACT_R, ACT_T, MERGE, false>(go + i, gc + i, nullptr, rp + i, cp + i, dg + id, dpr + id,
                                                          j1 - j0);
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

constexpr StepKernels kCpuKernels{forward_epilogue_cpu, backward_epilogue_cpu, /*input_chunk_images=*/16};

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
