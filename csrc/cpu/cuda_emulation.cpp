// Host executor of the CUDA epilogue kernels and the emulated CUDA tables: see cuda_emulation.h.
#include "cuda_emulation.h"

#include <torch/library.h>

#include <string>
#include <type_traits>

#include "../cuda/epilogue_bodies.h"
#include "../step_tables.h"

namespace deeprnn {
namespace {

namespace ck = cuda_kernels;
using namespace ck::bodies;

// What the executor ran since the last read (tests check that both vector widths and the sequence hooks were reached).
struct Counts {
  std::atomic<int64_t> vector_launches{0}, scalar_launches{0}, cell_launches{0}, forward_sequences{0},
      backward_sequences{0};
};
Counts g_counts;

// Walks a kernel's index space in order: what the grid-stride loops of cbm_kernels.cu / cells_kernels.cu do with
// every (block, thread), one index at a time.
struct HostExecutor {
  // Args is ForwardArgs or BackwardArgs: the launcher of either CBM kernel, with the same vector-width decision.
  template <typename Args>
  static void cbm(ck::DType dtype, Options opt, const Args& a) {
    dispatch_dtype(dtype, [&](auto tr) {
      using Tr = decltype(tr);
      const bool vec = vectorized<Tr>(a);
      (vec ? g_counts.vector_launches : g_counts.scalar_launches)++;
      dispatch_options(int(opt.act_r), int(opt.act_t), int(opt.merge), [&](auto ar, auto at, auto mg) {
        const auto walk = [&](auto width) {
          constexpr int VEC = decltype(width)::value, AR = decltype(ar)::value, AT = decltype(at)::value,
                        MG = decltype(mg)::value;
          for (int64_t i = 0; i < a.B * (a.inner / VEC); ++i) {
            if constexpr (std::is_same_v<Args, ck::ForwardArgs>) {
              cbm_forward_at<Tr, VEC, AR, AT, MG>(a, i);
            } else {
              cbm_backward_at<Tr, VEC, AR, AT, MG>(a, i);
            }
          }
        };
        if (vec) {
          walk(IC<kVec<Tr>>{});
        } else {
          walk(IC<1>{});
        }
      });
    });
  }
  static void cbm_forward(ck::DType dtype, Options opt, const ck::ForwardArgs& a) { cbm(dtype, opt, a); }
  static void cbm_backward(ck::DType dtype, Options opt, const ck::BackwardArgs& a) { cbm(dtype, opt, a); }

  static void cell(ck::DType dtype, ck::CellEpilogue epilogue, const ck::CellArgs& a) {
    g_counts.cell_launches++;
    dispatch_dtype(dtype, [&](auto tr) {
      dispatch_epilogue(epilogue, [&](auto e) {
        for (int64_t i = 0; i < a.B * a.inner; ++i) cell_at<decltype(tr), decltype(e)::value>(a, i);
      });
    });
  }
};

// The CUDA hooks with the persistent kernels off (their default): the per-step loop.
void forward_sequence_host(const ForwardSequence&, const std::function<void()>& step_loop) {
  g_counts.forward_sequences++;
  step_loop();
}

at::Tensor backward_sequence_host(const BackwardSequence&, const std::function<at::Tensor()>& step_loop) {
  g_counts.backward_sequences++;
  return step_loop();
}

bool set_cpu_emulates_cuda(bool on) { return g_cpu_emulates_cuda.exchange(on); }

// (vector launches, scalar launches, cell launches, forward sequences, backward sequences) since the last call.
std::vector<int64_t> cuda_emulation_counts() {
  return {g_counts.vector_launches.exchange(0), g_counts.scalar_launches.exchange(0),
          g_counts.cell_launches.exchange(0), g_counts.forward_sequences.exchange(0),
          g_counts.backward_sequences.exchange(0)};
}

// One step of the emulated tables on the caller's tensors, whatever their layout (testing aid): `outputs` are
// written in place (the in-out ones too: dc for lstm_backward, gates for gru_forward_n, dh_acc for the GRU backward),
// `inputs` and `options` as listed per step below, each the table function's arguments in order.
void cuda_emulation_step(c10::string_view step, at::TensorList outputs, const c10::List<std::optional<at::Tensor>>& in,
                         at::IntArrayRef options) {
  const auto input = [&](size_t k) -> at::Tensor {
    TORCH_CHECK_VALUE(k < in.size(), "_cuda_emulation_step ", step, ": too few inputs");
    const std::optional<at::Tensor> t = in.get(k);
    return t.has_value() ? *t : at::Tensor();
  };
  const auto output = [&](size_t k) -> const at::Tensor& {
    TORCH_CHECK_VALUE(k < outputs.size(), "_cuda_emulation_step ", step, ": too few outputs");
    return outputs[k];
  };
  const std::string name(step);
  if (name == "cbm_forward" || name == "cbm_backward") {
    TORCH_CHECK_VALUE(options.size() == 3, "_cuda_emulation_step: options must be (act_r, act_t, merge)");
    const StepKernels k = cuda_emulation_cbm_kernels();
    const Options opt{options[0], options[1], options[2]};
    if (name == "cbm_forward") {  // inputs p_r, p_x, rec; outputs r, c, o
      k.forward(input(0), input(1), input(2), output(0), output(1), output(2), opt);
    } else {  // inputs grad_o, grad_c, rec (None at the last step), r, c; outputs dG, dP_r
      k.backward(input(0), input(1), input(2), input(3), input(4), output(0), output(1), opt);
    }
    return;
  }
  const LstmStepKernels lstm = cuda_emulation_lstm_kernels();
  const GruStepKernels gru = cuda_emulation_gru_kernels();
  if (name == "lstm_forward") {  // inputs p, rec, c_prev; outputs [gates,] c, h (no gates: inference)
    const bool gates = outputs.size() == 3;
    lstm.forward(input(0), input(1), input(2), gates ? output(0) : at::Tensor(), output(gates ? 1 : 0),
                 output(gates ? 2 : 1));
  } else if (name == "lstm_backward") {  // inputs grad_h, grad_c, dh_next, gates, c, c_prev; outputs dA, dc (in-out)
    lstm.backward(input(0), input(1), input(2), output(1), input(3), input(4), input(5), output(0), output(1));
  } else if (name == "gru_forward_zr") {  // inputs p, u, h_prev; outputs gates, rh
    gru.forward_zr(input(0), input(1), input(2), output(0), output(1));
  } else if (name == "gru_forward_n") {  // inputs p, v, h_prev; outputs gates (z read, n written), h
    gru.forward_n(input(0), input(1), input(2), output(0), output(1));
  } else if (name == "gru_backward_zn") {  // inputs grad_h, rec_next, gates, h_prev; outputs dA, dh_acc (in-out)
    gru.backward_zn(input(0), output(1), input(1), input(2), input(3), output(0), output(1));
  } else if (name == "gru_backward_r") {  // inputs d_rh, gates, h_prev; outputs dA, dh_acc (in-out)
    gru.backward_r(input(0), input(1), input(2), output(0), output(1));
  } else {
    TORCH_CHECK_VALUE(false, "_cuda_emulation_step: unknown step ", step);
  }
}

}  // namespace

StepKernels cuda_emulation_cbm_kernels() {
  return step_tables::cbm_table<HostExecutor>(forward_sequence_host, backward_sequence_host);
}
LstmStepKernels cuda_emulation_lstm_kernels() { return step_tables::lstm_table<HostExecutor>(); }
GruStepKernels cuda_emulation_gru_kernels() { return step_tables::gru_table<HostExecutor>(); }

TORCH_LIBRARY_FRAGMENT(deeprnn, m) {
  // Testing aids (cuda_emulation.h): the CPU ops run the CUDA tables with a host executor of the CUDA kernels.
  m.def("_set_cpu_emulates_cuda(bool on) -> bool", &set_cpu_emulates_cuda);
  m.def("_cuda_emulation_counts() -> int[]", &cuda_emulation_counts);
  m.def("_cuda_emulation_step(str step, Tensor(a!)[] outputs, Tensor?[] inputs, int[] options) -> ()",
        &cuda_emulation_step);
}

}  // namespace deeprnn
