// CPU epilogues of the ConvLSTM and ConvGRU cells (csrc/cells.h): one fused SIMD pass per epilogue over the step's
// operands (gates are channel slices of the step's (B, nC, H, W) buffers), and the ops' CPU registrations.
#include "epilogue.h"  // first: it sets CPU_CAPABILITY before any ATen vector header

#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <type_traits>

#include "../cells.h"
#include "conv_chunk.h"
#include "cuda_emulation.h"

namespace deeprnn {
namespace {

using at::Tensor;
using namespace cpu_epilogue;

// Gate k (channels [kC, (k+1)C)) of a (B, nC, H, W) step buffer.
Tensor gate(const Tensor& t, int64_t k, int64_t C) { return t.narrow(1, k * C, C); }

// Runs `body` (a generic lambda over load/store) as one fused pass over `operands`, outputs first.
template <int N, typename Body>
void fused(const std::array<Tensor, N>& operands, int num_outputs, Body body) {
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, operands[0].scalar_type(), "deeprnn_cell_epilogue_cpu", [&] {
    for_each_row<scalar_t, N>(operands, num_outputs,
                              [&](const Row<N>& row, int64_t n) { map_row<scalar_t, N>(row, n, body); });
  });
}

void lstm_forward(const Tensor& p, const Tensor& rec, const Tensor& c_prev, const Tensor& gates, const Tensor& c,
                  const Tensor& h) {
  const int64_t C = c.size(1);
  // Operands (after the gates i, f, o, g when they are stored, at 0-3): c | h | p i, f, o, g | rec i, f, o, g | c_prev
  const auto body = [](auto kGatesSlots) {
    constexpr int k = decltype(kGatesSlots)::value;
    return [](auto load, auto store) {
      const auto i = sigmoid_(load(k + 2) + load(k + 6)), f = sigmoid_(load(k + 3) + load(k + 7));
      const auto o = sigmoid_(load(k + 4) + load(k + 8)), g = tanh_(load(k + 5) + load(k + 9));
      const auto cv = f * load(k + 10) + i * g;
      if constexpr (k > 0) store(0, i), store(1, f), store(2, o), store(3, g);
      store(k, cv), store(k + 1, o * tanh_(cv));
    };
  };
  if (!gates.defined()) {  // inference: c and h only
    fused<11>({c, h, gate(p, 0, C), gate(p, 1, C), gate(p, 2, C), gate(p, 3, C), gate(rec, 0, C), gate(rec, 1, C),
               gate(rec, 2, C), gate(rec, 3, C), c_prev},
              2, body(std::integral_constant<int, 0>{}));
    return;
  }
  fused<15>({gate(gates, 0, C), gate(gates, 1, C), gate(gates, 2, C), gate(gates, 3, C), c, h, gate(p, 0, C),
             gate(p, 1, C), gate(p, 2, C), gate(p, 3, C), gate(rec, 0, C), gate(rec, 1, C), gate(rec, 2, C),
             gate(rec, 3, C), c_prev},
            6, body(std::integral_constant<int, 4>{}));
}

void lstm_backward(const Tensor& grad_h, const Tensor& grad_c, const Tensor& dh_next, const Tensor& dc_next,
                   const Tensor& gates, const Tensor& c, const Tensor& c_prev, const Tensor& dA,
                   const Tensor& dc_prev) {
  const int64_t C = c.size(1);
  // 0-3 dA i, f, o, g | 4 dc_prev | 5 grad_h | 6 grad_c | 7 dh_next | 8 dc_next | 9-12 gates | 13 c | 14 c_prev
  fused<15>({gate(dA, 0, C), gate(dA, 1, C), gate(dA, 2, C), gate(dA, 3, C), dc_prev, grad_h, grad_c, dh_next,
             dc_next, gate(gates, 0, C), gate(gates, 1, C), gate(gates, 2, C), gate(gates, 3, C), c, c_prev},
            5, [](auto load, auto store) {
              using V = decltype(load(0));
              const auto i = load(9), f = load(10), o = load(11), g = load(12), tc = tanh_(load(13));
              const auto dh = load(5) + load(7);
              const auto dc = load(6) + load(8) + dh * o * (V(1) - tc * tc);
              const auto cp = load(14);
              store(0, dc * g * i * (V(1) - i));
              store(1, dc * cp * f * (V(1) - f));
              store(2, dh * tc * o * (V(1) - o));
              store(3, dc * i * (V(1) - g * g));
              store(4, dc * f);
            });
}

void gru_forward_zr(const Tensor& p, const Tensor& u, const Tensor& h_prev, const Tensor& gates, const Tensor& rh) {
  const int64_t C = h_prev.size(1);
  // 0 z | 1 r | 2 rh | 3 p_z | 4 p_r | 5 u_z | 6 u_r | 7 h_prev
  fused<8>({gate(gates, 0, C), gate(gates, 1, C), rh, gate(p, 0, C), gate(p, 1, C), gate(u, 0, C), gate(u, 1, C),
            h_prev},
           3, [](auto load, auto store) {
             const auto z = sigmoid_(load(3) + load(5)), r = sigmoid_(load(4) + load(6));
             const auto rh = r * load(7);
             store(0, z), store(1, r), store(2, rh);
           });
}

void gru_forward_n(const Tensor& p, const Tensor& v, const Tensor& h_prev, const Tensor& gates, const Tensor& h) {
  const int64_t C = h_prev.size(1);
  // 0 n | 1 h | 2 p_n | 3 v | 4 z | 5 h_prev
  fused<6>({gate(gates, 2, C), h, gate(p, 2, C), v, gate(gates, 0, C), h_prev}, 2,
           [](auto load, auto store) {
             const auto n = tanh_(load(2) + load(3)), z = load(4);
             const auto hv = n + z * (load(5) - n);
             store(0, n), store(1, hv);
           });
}

void gru_backward_zn(const Tensor& grad_h, const Tensor& dh_next, const Tensor& rec_next, const Tensor& gates,
                     const Tensor& h_prev, const Tensor& dA, const Tensor& dh_acc) {
  const int64_t C = h_prev.size(1);
  // 0 dA_z | 1 dA_n | 2 dh_acc | 3 grad_h | 4 dh_next | 5 rec_next | 6 z | 7 n | 8 h_prev
  fused<9>({gate(dA, 0, C), gate(dA, 2, C), dh_acc, grad_h, dh_next, rec_next, gate(gates, 0, C), gate(gates, 2, C),
            h_prev},
           3, [](auto load, auto store) {
             using V = decltype(load(0));
             const auto dh = load(3) + load(4) + load(5);
             const auto z = load(6), n = load(7);
             const auto da_z = dh * (load(8) - n) * z * (V(1) - z);
             const auto da_n = dh * (V(1) - z) * (V(1) - n * n);
             store(0, da_z), store(1, da_n), store(2, dh * z);
           });
}

void gru_backward_r(const Tensor& d_rh, const Tensor& gates, const Tensor& h_prev, const Tensor& dA,
                    const Tensor& dh_acc) {
  const int64_t C = h_prev.size(1);
  // 0 dA_r | 1 dh_acc (read and written) | 2 d_rh | 3 r | 4 h_prev
  fused<5>({gate(dA, 1, C), dh_acc, d_rh, gate(gates, 1, C), h_prev}, 2,
           [](auto load, auto store) {
             using V = decltype(load(0));
             const auto d = load(2), r = load(3);
             const auto da_r = d * load(4) * r * (V(1) - r);
             const auto acc = load(1) + d * r;
             store(0, da_r), store(1, acc);
           });
}

LstmStepKernels lstm_cpu() {
  if (g_cpu_emulates_cuda) return cuda_emulation_lstm_kernels();
  return {lstm_forward, lstm_backward, g_cpu_conv_chunk_elements.load()};
}
GruStepKernels gru_cpu() {
  if (g_cpu_emulates_cuda) return cuda_emulation_gru_kernels();
  return {gru_forward_zr, gru_forward_n, gru_backward_zn, gru_backward_r, g_cpu_conv_chunk_elements.load()};
}

std::tuple<Tensor, Tensor, Tensor> convlstm_forward_cpu(const Tensor& x, const Tensor& weight,
                                                        const std::optional<Tensor>& bias, const Tensor& h0,
                                                        const Tensor& c0) {
  return convlstm_forward_impl(x, weight, bias, h0, c0, /*save_gates=*/true, /*all_states=*/true, lstm_cpu());
}

std::tuple<Tensor, Tensor> convlstm_inference_cpu(const Tensor& x, const Tensor& weight,
                                                  const std::optional<Tensor>& bias, const Tensor& h0,
                                                  const Tensor& c0, bool all_states) {
  auto [h, c, gates] = convlstm_forward_impl(x, weight, bias, h0, c0, /*save_gates=*/false, all_states, lstm_cpu());
  return {h, c};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> convlstm_backward_cpu(const Tensor& grad_h, const Tensor& grad_c,
                                                                         const Tensor& x, const Tensor& weight,
                                                                         const Tensor& h0, const Tensor& c0,
                                                                         const Tensor& h, const Tensor& c,
                                                                         const Tensor& gates) {
  return convlstm_backward_impl(grad_h, grad_c, x, weight, h0, c0, h, c, gates, lstm_cpu());
}

std::tuple<Tensor, Tensor> convgru_forward_cpu(const Tensor& x, const Tensor& weight_x,
                                               const std::optional<Tensor>& bias_x, const Tensor& weight_h,
                                               const std::optional<Tensor>& bias_h, const Tensor& h0) {
  return convgru_forward_impl(x, weight_x, bias_x, weight_h, bias_h, h0, /*save_gates=*/true, gru_cpu());
}

Tensor convgru_inference_cpu(const Tensor& x, const Tensor& weight_x, const std::optional<Tensor>& bias_x,
                             const Tensor& weight_h, const std::optional<Tensor>& bias_h, const Tensor& h0) {
  return std::get<0>(convgru_forward_impl(x, weight_x, bias_x, weight_h, bias_h, h0, /*save_gates=*/false, gru_cpu()));
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> convgru_backward_cpu(
    const Tensor& grad_h, const Tensor& x, const Tensor& weight_x, const Tensor& weight_h, const Tensor& h0,
    const Tensor& h, const Tensor& gates) {
  return convgru_backward_impl(grad_h, x, weight_x, weight_h, h0, h, gates, gru_cpu());
}

}  // namespace

TORCH_LIBRARY_IMPL(deeprnn, CPU, m) {
  m.impl("convlstm_forward", &convlstm_forward_cpu);
  m.impl("convlstm_inference", &convlstm_inference_cpu);
  m.impl("convlstm_backward", &convlstm_backward_cpu);
  m.impl("convgru_forward", &convgru_forward_cpu);
  m.impl("convgru_inference", &convgru_inference_cpu);
  m.impl("convgru_backward", &convgru_backward_cpu);
}

}  // namespace deeprnn
