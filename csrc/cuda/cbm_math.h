// The element math of the CBM kernels, one definition for the step kernels (cbm_kernels.cu), the persistent
// kernels (persistent_tile.h) and their host emulation (tests/csrc/persistent_emulation.cpp): option codes,
// number formats (storage type S in memory, accumulate type A for the math) and the activations with their
// derivatives. Torch-free; compiles as host C++ or under nvcc.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define DEEPRNN_HD __host__ __device__ __forceinline__
#include <cuda_fp16.h>
#else
#define DEEPRNN_HD inline
#endif

namespace deeprnn {
namespace cbm_math {

// Option codes: csrc/cbm.h, deeprnn_cuda/_checks.py.
constexpr int kActRIdentity = 0, kActRRelu = 1, kActRTanh = 2;
constexpr int kActTSigmoid = 0, kActTRelu = 1;
constexpr int kMergeMul = 0, kMergeAdd = 1;

struct F32 {
  using storage = float;
  using acc = float;
  static DEEPRNN_HD acc load(storage v) { return v; }
  static DEEPRNN_HD storage store(acc v) { return v; }
};

struct F64 {
  using storage = double;
  using acc = double;
  static DEEPRNN_HD acc load(storage v) { return v; }
  static DEEPRNN_HD storage store(acc v) { return v; }
};

// bfloat16 is the top half of a float32: the bit form is exact on host and device (round to nearest even, as
// __float2bfloat16_rn; NaN stays NaN), so the host emulation computes what the GPU computes.
struct BF16 {
  using storage = unsigned short;
  using acc = float;
  static DEEPRNN_HD acc load(storage v) {
    const uint32_t bits = uint32_t(v) << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
  }
  static DEEPRNN_HD storage store(acc v) {
    uint32_t bits;
    memcpy(&bits, &v, 4);
    if ((bits & 0x7f800000u) == 0x7f800000u && (bits & 0x007fffffu) != 0) return storage((bits >> 16) | 0x40);
    bits += 0x7fffu + ((bits >> 16) & 1u);
    return storage(bits >> 16);
  }
};

// float16: the GPU converts with its intrinsics; the host (the epilogues' host executor, csrc/cpu/cuda_emulation.cpp)
// with the same IEEE rules in bit form (round to nearest even, subnormals kept, overflow to infinity, NaN stays NaN).
struct F16 {
  using storage = unsigned short;
  using acc = float;
  static DEEPRNN_HD acc load(storage v) {
#if defined(__CUDA_ARCH__)
    return __half2float(__ushort_as_half(v));
#else
    const uint32_t sign = uint32_t(v & 0x8000u) << 16, exponent = (v >> 10) & 0x1fu, mantissa = v & 0x3ffu;
    if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24, exact in float
      const float f = float(mantissa) * 5.9604644775390625e-8f;
      return sign ? -f : f;
    }
    const uint32_t bits =
        sign | (exponent == 0x1fu ? 0x7f800000u | (mantissa << 13) : ((exponent + 112u) << 23) | (mantissa << 13));
    float f;
    memcpy(&f, &bits, 4);
    return f;
#endif
  }
  static DEEPRNN_HD storage store(acc v) {
#if defined(__CUDA_ARCH__)
    return __half_as_ushort(__float2half_rn(v));
#else
    uint32_t bits;
    memcpy(&bits, &v, 4);
    const uint32_t sign = (bits >> 16) & 0x8000u, mag = bits & 0x7fffffffu;
    if (mag > 0x7f800000u) return storage(sign | 0x7e00u);    // NaN
    if (mag >= 0x477ff000u) return storage(sign | 0x7c00u);  // rounds to infinity (>= 65520)
    if (mag < 0x38800000u) {                                  // below 2^-14: a subnormal half or zero
      // Adding 0.5 lines the half's last mantissa bit up with float's, so the FPU rounds to nearest even.
      float f;
      memcpy(&f, &mag, 4);
      f += 0.5f;
      uint32_t r;
      memcpy(&r, &f, 4);
      return storage(sign | (r - 0x3f000000u));
    }
    const uint32_t odd = (mag >> 13) & 1u;
    return storage(sign | ((mag + 0xc8000fffu + odd) >> 13));  // rebias the exponent by -112, round to even
#endif
  }
};

template <typename A>
DEEPRNN_HD A exp_(A z) {
#if defined(__CUDA_ARCH__)
  if constexpr (sizeof(A) == 4) {
    return expf(z);
  } else {
    return exp(z);
  }
#else
  return std::exp(z);
#endif
}

template <typename A>
DEEPRNN_HD A tanh_(A z) {
#if defined(__CUDA_ARCH__)
  if constexpr (sizeof(A) == 4) {
    return tanhf(z);
  } else {
    return tanh(z);
  }
#else
  return std::tanh(z);
#endif
}

// Compile-time option (the step kernels are templated on it) ...
template <int ACT, typename A>
DEEPRNN_HD A act_r_fn(A z) {
  if constexpr (ACT == kActRRelu) return z > A(0) ? z : A(0);
  if constexpr (ACT == kActRTanh) return tanh_(z);
  return z;
}

// act_r' from the activation's output r.
template <int ACT, typename A>
DEEPRNN_HD A act_r_grad(A r) {
  if constexpr (ACT == kActRRelu) return r > A(0) ? A(1) : A(0);
  if constexpr (ACT == kActRTanh) return A(1) - r * r;
  return A(1);
}

template <int ACT, typename A>
DEEPRNN_HD A act_t_fn(A z) {
  if constexpr (ACT == kActTRelu) return z > A(0) ? z : A(0);
  return A(1) / (A(1) + exp_(-z));
}

// act_t' from the activation's output c.
template <int ACT, typename A>
DEEPRNN_HD A act_t_grad(A c) {
  if constexpr (ACT == kActTRelu) return c > A(0) ? A(1) : A(0);
  return c * (A(1) - c);
}

// ... and run-time option (the persistent kernels' epilogues, negligible beside their convolution).
template <typename A>
DEEPRNN_HD A act_r_fn(int act, A z) {
  return act == kActRRelu ? act_r_fn<kActRRelu>(z) : act == kActRTanh ? act_r_fn<kActRTanh>(z) : z;
}
template <typename A>
DEEPRNN_HD A act_r_grad(int act, A r) {
  return act == kActRRelu ? act_r_grad<kActRRelu>(r) : act == kActRTanh ? act_r_grad<kActRTanh>(r) : A(1);
}
template <typename A>
DEEPRNN_HD A act_t_fn(int act, A z) {
  return act == kActTRelu ? act_t_fn<kActTRelu>(z) : act_t_fn<kActTSigmoid>(z);
}
template <typename A>
DEEPRNN_HD A act_t_grad(int act, A c) {
  return act == kActTRelu ? act_t_grad<kActTRelu>(c) : act_t_grad<kActTSigmoid>(c);
}

}  // namespace cbm_math
}  // namespace deeprnn
