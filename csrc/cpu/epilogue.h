// What the CPU epilogues of every cell share (csrc/cpu/cbm_cpu.cpp, csrc/cpu/cells_cpu.cpp): element math written
// once for scalars and SIMD vectors, and the row walker that runs a fused pass over one step's operands.
#pragma once

// ATen's Vectorized<T> is compiled for the instruction set named by CPU_CAPABILITY: AVX-512 or AVX2+FMA when
// this file is built with them (setup.py enables the best a host has in builds for that host), else ATen's
// portable implementation.
#if !defined(CPU_CAPABILITY)
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512DQ__) && defined(__FMA__)
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
#elif defined(__AVX2__) && defined(__FMA__)
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#else
#define CPU_CAPABILITY DEFAULT
#endif
#endif

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/TensorIterator.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <type_traits>

namespace deeprnn {
namespace cpu_epilogue {

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
// SLEEF's float tanh costs a few of its exps, and the activations are most of every epilogue's work. Away from 0,
// tanh|z| = 1 - 2 / (e^2|z| + 1) is within a few float ulps (inf, NaN and overflow included); near 0 that
// difference cancels (its absolute error, ~1e-7, would be a large relative one: a 15-layer float32 model's weight
// gradients then differ from the reference's by 3e-5), so there |z| < 1/4 takes the odd Taylor series to z^9,
// whose first omitted term is below 2e-9 relative. double keeps SLEEF's tanh, for the 1e-10 comparisons.
inline Vec<float> tanh_(const Vec<float>& z) {
  using V = Vec<float>;
  const V one(1.0f), a = z.abs();
  V far = one - V(2.0f) / ((a + a).exp() + one);
  far = V::blendv(far, V(0.0f) - far, z < V(0.0f));
  const V z2 = z * z;
  V p = at::vec::fmadd(V(62.0f / 2835.0f), z2, V(-17.0f / 315.0f));
  p = at::vec::fmadd(p, z2, V(2.0f / 15.0f));
  p = at::vec::fmadd(p, z2, V(-1.0f / 3.0f));
  const V near = at::vec::fmadd(z * z2, p, z);
  return V::blendv(far, near, a < V(0.25f));
}
inline Vec<double> tanh_(const Vec<double>& z) { return z.tanh(); }
template <typename T>
inline T relu_(T z) { return z > T(0) ? z : T(0); }
template <typename T>
inline Vec<T> relu_(const Vec<T>& z) { return at::vec::clamp_min(z, Vec<T>(0)); }
template <typename T>
inline T positive_(T z) { return z > T(0) ? T(1) : T(0); }
template <typename T>
inline Vec<T> positive_(const Vec<T>& z) { return z.gt(Vec<T>(0)); }

template <typename V>
inline V sigmoid_(V z) { return V(1) / (V(1) + exp_(V(0) - z)); }

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
  // Every operand contiguous or a broadcast scalar (stride 0: a zero or expanded gradient).
  template <typename T>
  bool contiguous_or_broadcast() const {
    for (int i = 0; i < N; ++i) {
      if (stride[i] != int64_t(sizeof(T)) && stride[i] != 0) return false;
    }
    return true;
  }
  template <typename T>
  T* at(int i, int64_t j) const {
    return reinterpret_cast<T*>(ptr[i] + j * stride[i]);
  }
};

// True when every batch entry's (C, H, W) block is contiguous, whatever the batch stride.
inline bool inner_contiguous(const Tensor& t) {
  return t.dim() == 4 && t.stride(3) == 1 && t.stride(2) == t.size(3) && t.stride(1) == t.size(2) * t.size(3);
}

// True for one value expanded to the whole shape (an output gradient autograd left out, given as a broadcast zero).
inline bool broadcast_scalar(const Tensor& t) {
  return t.dim() == 4 && t.stride(0) == 0 && t.stride(1) == 0 && t.stride(2) == 0 && t.stride(3) == 0;
}

// Runs loop(row, n) over every element of `operands` (all (B, C, H, W), outputs first). When every operand's
// per-batch (C, H, W) block is contiguous (every step buffer; the output gradients mostly), the step is cut into
// pieces of kPieceElements within a batch entry, run on ATen's thread pool once the step has kParallelElements:
// the epilogues evaluate a few exps per element, so threads pay off far below ATen's GRAIN_SIZE (32768, tuned for
// one add), and a step of one small image still uses every core. at::parallel_for is a header template: under
// torch's OpenMP backend it is parallel only in code compiled with -fopenmp (setup.py adds it, see
// _build_config.decide_cpu_threads; without it this was a serial loop). Any other layout goes through
// TensorIterator::for_each, which libtorch runs on its threads.
constexpr int64_t kPieceElements = 2048;  // a multiple of every SIMD width
constexpr int64_t kParallelElements = 4096;

template <typename scalar_t, int N, typename F>
void for_each_row(const std::array<Tensor, N>& operands, int num_outputs, F loop) {
  const Tensor& like = operands[0];
  if (std::all_of(operands.begin(), operands.end(),
                  [](const Tensor& t) { return inner_contiguous(t) || broadcast_scalar(t); })) {
    const int64_t B = like.size(0), inner = like.size(1) * like.size(2) * like.size(3);
    const int64_t pieces = std::max<int64_t>(1, (inner + kPieceElements - 1) / kPieceElements);
    int64_t unit[N];  // bytes per element along a row: 0 for a broadcast value
    for (int i = 0; i < N; ++i) unit[i] = broadcast_scalar(operands[i]) ? 0 : int64_t(sizeof(scalar_t));
    const auto run = [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / pieces, j0 = (task % pieces) * kPieceElements;
        char* data[N];
        for (int i = 0; i < N; ++i) {
          data[i] = static_cast<char*>(operands[i].data_ptr()) +
                    b * operands[i].stride(0) * int64_t(sizeof(scalar_t)) + j0 * unit[i];
        }
        loop(Row<N>(data, unit), std::min(kPieceElements, inner - j0));
      }
    };
    if (like.numel() < kParallelElements) {
      run(0, B * pieces);
    } else {
      at::parallel_for(0, B * pieces, 1, run);
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

// Runs f(load, store) over a row: load(i) reads operand i at the current element(s), store(i, v) writes it;
// SIMD vectors where every operand is contiguous or broadcast (float, double), then scalars in the accumulate
// type. f must load everything before it stores: an output may alias an input (an in-place update).
template <typename scalar_t, int N, typename F>
inline void map_row(const Row<N>& row, int64_t n, F f) {
  int64_t j = 0;
  if constexpr (kSimd<scalar_t>) {
    if (row.template contiguous_or_broadcast<scalar_t>()) {
      using V = Vec<scalar_t>;
      for (; j + V::size() <= n; j += V::size()) {
        f([&](int i) {
            const scalar_t* p = row.template at<scalar_t>(i, j);
            return row.stride[i] == 0 ? V(*p) : V::loadu(p);
          },
          [&](int i, const V& v) { v.store(row.template at<scalar_t>(i, j)); });
      }
    }
  }
  using acc_t = at::opmath_type<scalar_t>;
  for (; j < n; ++j) {
    f([&](int i) { return acc_t(*row.template at<scalar_t>(i, j)); },
      [&](int i, acc_t v) { *row.template at<scalar_t>(i, j) = scalar_t(v); });
  }
}

}  // namespace cpu_epilogue
}  // namespace deeprnn
