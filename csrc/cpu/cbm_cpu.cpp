// CPU kernels of the CBM ops: the fused per-step epilogues (a TensorIterator over the step's operands, one SIMD
// pass over memory, activation and merge chosen at compile time) plugged into the device-generic recurrence.

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
#include <ATen/TensorIterator.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <atomic>
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

// Operand pointers of one TensorIterator row, advanced along the row by their byte strides.
template <int N>
struct Row {
  char* ptr[N];
  int64_t stride[N];

  Row(char** data, const int64_t* strides) {
    for (int i = 0; i < N; ++i) ptr[i] = data[i], stride[i] = strides[i];
  }
  template <typename T>
  bool contiguous() const {
    for (int i = 0; i < N; ++i) {
      if (stride[i] != int64_t(sizeof(T))) return false;
    }
    return true;
  }
  template <typename T>
  T* at(int i, int64_t j) const {
    return reinterpret_cast<T*>(ptr[i] + j * stride[i]);
  }
};

// True when every batch entry's (C, H, W) block is contiguous, whatever the batch stride.
bool inner_contiguous(const Tensor& t) {
  return t.dim() == 4 && t.stride(3) == 1 && t.stride(2) == t.size(3) && t.stride(1) == t.size(2) * t.size(3);
}

// Runs loop(row, n) over every element of `operands` (all (B, C, H, W), outputs first). Small steps run as one
// row per batch entry right here: they would not be split over threads anyway, and building a TensorIterator
// costs more than the step. Larger ones go through TensorIterator::for_each, which runs in parallel on ATen's
// own thread pool (for_each lives in libtorch, so this file needs no OpenMP of its own).
template <typename scalar_t, int N, typename F>
void for_each_row(const std::array<Tensor, N>& operands, int num_outputs, F loop) {
  const Tensor& like = operands[0];
  const bool small = like.numel() < at::internal::GRAIN_SIZE;
  if (small && std::all_of(operands.begin(), operands.end(), inner_contiguous)) {
    int64_t unit[N];
    std::fill_n(unit, N, int64_t(sizeof(scalar_t)));
    const int64_t inner = like.size(1) * like.size(2) * like.size(3);
    for (int64_t b = 0; b < like.size(0); ++b) {
      char* data[N];
      for (int i = 0; i < N; ++i) {
        data[i] = static_cast<char*>(operands[i].data_ptr()) + b * operands[i].stride(0) * int64_t(sizeof(scalar_t));
      }
      loop(Row<N>(data, unit), inner);
    }
    return;
  }
  at::TensorIteratorConfig config;
  config.check_all_same_dtype(true).resize_outputs(false);
  for (int i = 0; i < N; ++i) {
    if (i < num_outputs) {
      config.add_output(operands[i]);
    } else {
      config.add_const_input(operands[i]);
    }
  }
  auto iter = config.build();
  iter.for_each([&](char** data, const int64_t* strides, int64_t n, int64_t rows) {
    for (int64_t k = 0; k < rows; ++k) {
      char* row_data[N];
      for (int i = 0; i < N; ++i) row_data[i] = data[i] + k * strides[N + i];
      loop(Row<N>(row_data, strides), n);
    }
  });
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
    if (row.template contiguous<scalar_t>()) {
      using V = Vec<scalar_t>;
      auto load = [&](int i) { return V::loadu(row.template at<scalar_t>(i, j)); };
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

constexpr int64_t kDefaultConvChunkElements = int64_t(1) << 20;
std::atomic<int64_t> g_conv_chunk_elements{kDefaultConvChunkElements};  // see set_cpu_conv_chunk_elements

StepKernels cpu_kernels() {
  return StepKernels{forward_epilogue_cpu, backward_epilogue_cpu, g_conv_chunk_elements.load()};
}

std::tuple<Tensor, Tensor, Tensor> cbm_forward_cpu(const Tensor& x, const Tensor& weight_r,
                                                   const std::optional<Tensor>& bias_r, const Tensor& weight_t,
                                                   const std::optional<Tensor>& bias_t, const Tensor& c0,
                                                   const std::optional<Tensor>& /*td_mask: backward only*/,
                                                   int64_t act_r, int64_t act_t, int64_t merge) {
  return cbm_forward_impl(x, weight_r, bias_r, weight_t, bias_t, c0, {act_r, act_t, merge}, cpu_kernels());
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> cbm_backward_cpu(
    const Tensor& grad_o, const Tensor& grad_c, const Tensor& x, const Tensor& weight_r, const Tensor& weight_t,
    const Tensor& c0, const Tensor& r, const Tensor& c, const std::optional<Tensor>& td_mask, int64_t act_r,
    int64_t act_t, int64_t merge) {
  return cbm_backward_impl(grad_o, grad_c, x, weight_r, weight_t, c0, r, c, td_mask, {act_r, act_t, merge},
                           cpu_kernels());
}

}  // namespace

int64_t set_cpu_conv_chunk_elements(int64_t elements) { return g_conv_chunk_elements.exchange(elements); }

TORCH_LIBRARY_IMPL(deeprnn, CPU, m) {
  m.impl("cbm_forward", &cbm_forward_cpu);
  m.impl("cbm_backward", &cbm_backward_cpu);
}

}  // namespace deeprnn
