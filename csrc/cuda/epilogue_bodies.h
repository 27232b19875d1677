// The per-step epilogue kernels' work, written once for the GPU and the host: what one thread does for one index of
// the kernel's index space (a VEC-wide pack of CBM elements, one element of a cell), the choice of the vector width
// and the option dispatch. The CUDA kernels (cbm_kernels.cu, cells_kernels.cu) walk that index space with a
// grid-stride loop; the host executor (csrc/cpu/cuda_emulation.cpp) walks the same indices in order, so CI runs every
// line of the kernels' math, packing, strides and number formats on CPU tensors. Torch-free.
#pragma once

#include <cstdint>
#include <type_traits>

#include "cbm_math.h"
#include "kernel_args.h"

namespace deeprnn {
namespace cuda_kernels {
namespace bodies {

using namespace cbm_math;  // option codes, number formats, activations (shared with the persistent kernels)
// The option codes by name here, over csrc/cbm.h's enum of the same names where both are seen (the host executor).
using cbm_math::kActRIdentity, cbm_math::kActRRelu, cbm_math::kActRTanh, cbm_math::kActTSigmoid, cbm_math::kActTRelu,
    cbm_math::kMergeMul, cbm_math::kMergeAdd;

#if defined(__CUDACC__)
#define DEEPRNN_UNROLL _Pragma("unroll")
#else
#define DEEPRNN_UNROLL
#endif

template <typename S, int N>
struct alignas(sizeof(S) * N) Pack {
  S v[N];
};

template <typename S, int VEC>
DEEPRNN_HD Pack<S, VEC> load_pack(const void* base, int64_t offset) {
  return *reinterpret_cast<const Pack<S, VEC>*>(static_cast<const S*>(base) + offset);
}

template <typename S, int VEC>
DEEPRNN_HD void store_pack(void* base, int64_t offset, const Pack<S, VEC>& p) {
  *reinterpret_cast<Pack<S, VEC>*>(static_cast<S*>(base) + offset) = p;
}

// Elements per 16-byte pack of storage type S.
template <typename Tr>
constexpr int kVec = 16 / int(sizeof(typename Tr::storage));

// ---------------------------------------------------------------------------------------------------------------
// CBM (docs/design.md section 1):
// forward:  G = P_x + rec;  c = act_t(G);  r = act_r(P_r);  o = merge(r, c)
// backward: dc = dO * dmerge/dc + dC + rec;  dG = dc * act_t'(c);  dP_r = dO * dmerge/dr * act_r'(r)

// Pack i of B * inner / VEC.
template <typename Tr, int VEC, int ACT_R, int ACT_T, int MERGE>
DEEPRNN_HD void cbm_forward_at(const ForwardArgs& a, int64_t i) {
  using S = typename Tr::storage;
  using A = typename Tr::acc;
  const int64_t nv = a.inner / VEC;
  const int64_t b = i / nv;
  const int64_t j = (i - b * nv) * VEC;
  const auto pr = load_pack<S, VEC>(a.p_r, b * a.s_pr + j);
  const auto px = load_pack<S, VEC>(a.p_x, b * a.s_px + j);
  const auto rc = load_pack<S, VEC>(a.rec, b * a.s_rec + j);
  Pack<S, VEC> r, c, o;
DEEPRNN_UNROLL
  for (int k = 0; k < VEC; ++k) {
    const A rv = act_r_fn<ACT_R>(Tr::load(pr.v[k]));
    const A cv = act_t_fn<ACT_T>(Tr::load(px.v[k]) + Tr::load(rc.v[k]));
    r.v[k] = Tr::store(rv);
    c.v[k] = Tr::store(cv);
    o.v[k] = Tr::store(MERGE == kMergeMul ? rv * cv : rv + cv);
  }
  store_pack<S, VEC>(a.r, b * a.s_r + j, r);
  store_pack<S, VEC>(a.c, b * a.s_c + j, c);
  store_pack<S, VEC>(a.o, b * a.s_o + j, o);
}

template <typename Tr, int VEC, int ACT_R, int ACT_T, int MERGE>
DEEPRNN_HD void cbm_backward_at(const BackwardArgs& a, int64_t i) {
  using S = typename Tr::storage;
  using A = typename Tr::acc;
  const int64_t nv = a.inner / VEC;
  const int64_t b = i / nv;
  const int64_t j = (i - b * nv) * VEC;
  const bool has_rec = a.rec != nullptr;  // uniform over the grid
  const auto go = load_pack<S, VEC>(a.grad_o, b * a.s_go + j);
  const auto gc = load_pack<S, VEC>(a.grad_c, b * a.s_gc + j);
  const auto rp = load_pack<S, VEC>(a.r, b * a.s_r + j);
  const auto cp = load_pack<S, VEC>(a.c, b * a.s_c + j);
  Pack<S, VEC> rc{};
  if (has_rec) rc = load_pack<S, VEC>(a.rec, b * a.s_rec + j);
  Pack<S, VEC> dg, dpr;
DEEPRNN_UNROLL
  for (int k = 0; k < VEC; ++k) {
    const A g = Tr::load(go.v[k]), rv = Tr::load(rp.v[k]), cv = Tr::load(cp.v[k]);
    A dc = Tr::load(gc.v[k]) + (MERGE == kMergeMul ? g * rv : g);
    if (has_rec) dc += Tr::load(rc.v[k]);
    dg.v[k] = Tr::store(dc * act_t_grad<ACT_T>(cv));
    dpr.v[k] = Tr::store((MERGE == kMergeMul ? g * cv : g) * act_r_grad<ACT_R>(rv));
  }
  store_pack<S, VEC>(a.dG, b * a.s_dG + j, dg);
  store_pack<S, VEC>(a.dP_r, b * a.s_dPr + j, dpr);
}

inline bool aligned16(const void* p) { return p == nullptr || reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Whether every pointer is 16-byte aligned and every batch stride and the inner size are whole packs: then each
// index moves kVec<Tr> elements per tensor, else one.
template <typename Tr>
bool vectorized(const ForwardArgs& a) {
  constexpr int V = kVec<Tr>;
  return a.inner % V == 0 && a.s_pr % V == 0 && a.s_px % V == 0 && a.s_rec % V == 0 && a.s_r % V == 0 &&
         a.s_c % V == 0 && a.s_o % V == 0 && aligned16(a.p_r) && aligned16(a.p_x) && aligned16(a.rec) &&
         aligned16(a.r) && aligned16(a.c) && aligned16(a.o);
}

template <typename Tr>
bool vectorized(const BackwardArgs& a) {
  constexpr int V = kVec<Tr>;
  return a.inner % V == 0 && a.s_go % V == 0 && a.s_gc % V == 0 && a.s_rec % V == 0 && a.s_r % V == 0 &&
         a.s_c % V == 0 && a.s_dG % V == 0 && a.s_dPr % V == 0 && aligned16(a.grad_o) && aligned16(a.grad_c) &&
         aligned16(a.rec) && aligned16(a.r) && aligned16(a.c) && aligned16(a.dG) && aligned16(a.dP_r);
}

template <int V>
using IC = std::integral_constant<int, V>;

// Runtime option codes -> template arguments: fn(act_r, act_t, merge) with integral constants.
template <typename F>
void dispatch_options(int act_r, int act_t, int merge, F&& fn) {
  auto with_merge = [&](auto ar, auto at) {
    if (merge == kMergeAdd) {
      fn(ar, at, IC<kMergeAdd>{});
    } else {
      fn(ar, at, IC<kMergeMul>{});
    }
  };
  auto with_act_t = [&](auto ar) {
    if (act_t == kActTRelu) {
      with_merge(ar, IC<kActTRelu>{});
    } else {
      with_merge(ar, IC<kActTSigmoid>{});
    }
  };
  switch (act_r) {
    case kActRRelu: with_act_t(IC<kActRRelu>{}); break;
    case kActRTanh: with_act_t(IC<kActRTanh>{}); break;
    default: with_act_t(IC<kActRIdentity>{}); break;
  }
}

// dtype code -> number format: fn(F32{} | F64{} | F16{} | BF16{}).
template <typename F>
void dispatch_dtype(DType dtype, F&& fn) {
  switch (dtype) {
    case DType::kDouble: fn(F64{}); break;
    case DType::kHalf: fn(F16{}); break;
    case DType::kBFloat16: fn(BF16{}); break;
    default: fn(F32{}); break;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// ConvLSTM and ConvGRU (docs/design.md section 7): load(k) reads operand k, store(k, v) writes it (outputs first, as in
// kernel_args.h). Everything is loaded before anything is stored: outputs may alias inputs.

template <typename A>
DEEPRNN_HD A sigmoid_(A z) {
  return act_t_fn<kActTSigmoid>(z);
}

template <CellEpilogue E>
struct Body;

// The forward with the gates (training) or without them (inference, kLstmForwardInference).
template <bool GATES>
struct LstmForward {
  // With gates: 0-3 gates i, f, o, g | 4 c | 5 h | 6-9 p | 10-13 rec | 14 c_prev.  Without: the same less 0-3.
  template <typename A, typename L, typename S>
  static DEEPRNN_HD void run(L load_gated, S store_gated) {
    constexpr int k0 = GATES ? 0 : -4;  // operand k of the gated layout is k + k0 here
    const auto load = [&](int k) { return load_gated(k + k0); };
    const A i = sigmoid_(load(6) + load(10)), f = sigmoid_(load(7) + load(11));
    const A o = sigmoid_(load(8) + load(12)), g = tanh_(load(9) + load(13));
    const A c = f * load(14) + i * g;
    if constexpr (GATES) store_gated(0, i), store_gated(1, f), store_gated(2, o), store_gated(3, g);
    store_gated(4 + k0, c), store_gated(5 + k0, o * tanh_(c));
  }
};

template <>
struct Body<CellEpilogue::kLstmForward> : LstmForward<true> {};

template <>
struct Body<CellEpilogue::kLstmForwardInference> : LstmForward<false> {};

template <>
struct Body<CellEpilogue::kLstmBackward> {
  // 0-3 dA i, f, o, g | 4 dc_prev | 5 grad_h | 6 grad_c | 7 dh_next | 8 dc_next | 9-12 gates | 13 c | 14 c_prev
  template <typename A, typename L, typename S>
  static DEEPRNN_HD void run(L load, S store) {
    const A i = load(9), f = load(10), o = load(11), g = load(12), tc = tanh_(load(13)), cp = load(14);
    const A dh = load(5) + load(7);
    const A dc = load(6) + load(8) + dh * o * (A(1) - tc * tc);
    store(0, dc * g * i * (A(1) - i));
    store(1, dc * cp * f * (A(1) - f));
    store(2, dh * tc * o * (A(1) - o));
    store(3, dc * i * (A(1) - g * g));
    store(4, dc * f);
  }
};

template <>
struct Body<CellEpilogue::kGruForwardZr> {
  // 0 z | 1 r | 2 rh | 3 p_z | 4 p_r | 5 u_z | 6 u_r | 7 h_prev
  template <typename A, typename L, typename S>
  static DEEPRNN_HD void run(L load, S store) {
    const A z = sigmoid_(load(3) + load(5)), r = sigmoid_(load(4) + load(6)), rh = r * load(7);
    store(0, z), store(1, r), store(2, rh);
  }
};

template <>
struct Body<CellEpilogue::kGruForwardN> {
  // 0 n | 1 h | 2 p_n | 3 v | 4 z | 5 h_prev
  template <typename A, typename L, typename S>
  static DEEPRNN_HD void run(L load, S store) {
    const A n = tanh_(load(2) + load(3)), z = load(4), h = n + z * (load(5) - n);
    store(0, n), store(1, h);
  }
};

template <>
struct Body<CellEpilogue::kGruBackwardZn> {
  // 0 dA_z | 1 dA_n | 2 dh_acc | 3 grad_h | 4 dh_next | 5 rec_next | 6 z | 7 n | 8 h_prev
  template <typename A, typename L, typename S>
  static DEEPRNN_HD void run(L load, S store) {
    const A dh = load(3) + load(4) + load(5), z = load(6), n = load(7), hp = load(8);
    const A da_z = dh * (hp - n) * z * (A(1) - z), da_n = dh * (A(1) - z) * (A(1) - n * n);
    store(0, da_z), store(1, da_n), store(2, dh * z);
  }
};

template <>
struct Body<CellEpilogue::kGruBackwardR> {
  // 0 dA_r | 1 dh_acc (read and written) | 2 d_rh | 3 r | 4 h_prev
  template <typename A, typename L, typename S>
  static DEEPRNN_HD void run(L load, S store) {
    const A d = load(2), r = load(3), acc = load(1);
    const A da_r = d * load(4) * r * (A(1) - r);
    store(0, da_r), store(1, acc + d * r);
  }
};

// Element e of B * inner.
template <typename Tr, CellEpilogue E>
DEEPRNN_HD void cell_at(const CellArgs& a, int64_t e) {
  using S = typename Tr::storage;
  using A = typename Tr::acc;
  const int64_t b = e / a.inner, j = e - b * a.inner;
  const auto load = [&](int k) { return Tr::load(static_cast<const S*>(a.ptr[k])[b * a.stride[k] + j]); };
  const auto store = [&](int k, A v) { static_cast<S*>(a.ptr[k])[b * a.stride[k] + j] = Tr::store(v); };
  Body<E>::template run<A>(load, store);
}

// Epilogue code -> compile-time epilogue: fn(integral constant of E).
template <typename F>
void dispatch_epilogue(CellEpilogue epilogue, F&& fn) {
  using E = CellEpilogue;
  switch (epilogue) {
    case E::kLstmForward: fn(std::integral_constant<E, E::kLstmForward>{}); break;
    case E::kLstmForwardInference: fn(std::integral_constant<E, E::kLstmForwardInference>{}); break;
    case E::kLstmBackward: fn(std::integral_constant<E, E::kLstmBackward>{}); break;
    case E::kGruForwardZr: fn(std::integral_constant<E, E::kGruForwardZr>{}); break;
    case E::kGruForwardN: fn(std::integral_constant<E, E::kGruForwardN>{}); break;
    case E::kGruBackwardZn: fn(std::integral_constant<E, E::kGruBackwardZn>{}); break;
    case E::kGruBackwardR: fn(std::integral_constant<E, E::kGruBackwardR>{}); break;
  }
}

}  // namespace bodies
}  // namespace cuda_kernels
}  // namespace deeprnn
