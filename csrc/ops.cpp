// Schemas of the deeprnn:: custom ops and the Python module stub. Importing deeprnn_cuda._C registers
// them; the kernels are registered per device in csrc/cpu/ and csrc/cuda/, fake kernels and autograd in
// deeprnn_cuda/_native.py.
#include <Python.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <string>

// setup.py writes this header into its build folder: the toolkit, SIMD and threading decisions, as JSON. Builds
// that do not (CMake) record nothing.
#if __has_include("deeprnn_build_info.h")
#include "deeprnn_build_info.h"
#else
#define DEEPRNN_BUILD_INFO "{}"
#endif

extern "C" {
// An empty module: `from . import _C` only loads the shared library, whose static initializers register
// the ops (the pattern of pytorch/extension-cpp; no pybind11 needed).
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

namespace deeprnn {

// csrc/cpu/cbm_cpu.cpp: sets the CPU kernels' conv_chunk_elements of every cell (csrc/cpu/conv_chunk.h; <= 0: one chunk)
// and returns the previous value. A testing aid: tiny shapes then reach every chunk branch of the driver.
int64_t set_cpu_conv_chunk_elements(int64_t elements);

#ifdef DEEPRNN_WITH_CUDA
int64_t persistent_launches();  // csrc/cuda/cbm_persistent_cuda.cpp
int64_t graph_replays();        // csrc/cuda/cbm_cuda.cpp
#endif

// How many times the persistent CUDA kernels ran in this process (0 without CUDA): lets tests tell them from
// the per-step loop they fall back to.
int64_t cuda_persistent_launches() {
#ifdef DEEPRNN_WITH_CUDA
  return persistent_launches();
#else
  return 0;
#endif
}

// How many times the native op replayed one of its own CUDA graphs (DEEPRNN_CUDA_GRAPHS=1; 0 without CUDA): lets
// tests tell a replay from a silent fall-back to the eager loop.
int64_t cuda_graph_replays() {
#ifdef DEEPRNN_WITH_CUDA
  return graph_replays();
#else
  return 0;
#endif
}

bool cuda_compiled() {
#ifdef DEEPRNN_WITH_CUDA
  return true;
#else
  return false;
#endif
}

std::string build_info() { return DEEPRNN_BUILD_INFO; }

// Whether at::parallel_for, as compiled into this library (the CPU epilogues), can run on several threads:
// under torch's OpenMP backend only code compiled with OpenMP gets the parallel branch (_build_config.py).
bool cpu_kernels_parallel() {
#ifdef INTRA_OP_PARALLEL
  return true;
#else
  return false;
#endif
}

TORCH_LIBRARY(deeprnn, m) {
  m.def(
      "cbm_forward(Tensor x, Tensor weight_r, Tensor? bias_r, Tensor weight_t, Tensor? bias_t, Tensor c0, "
      "Tensor? td_mask, int act_r, int act_t, int merge) -> (Tensor o, Tensor c, Tensor r)");
  m.def(
      "cbm_backward(Tensor grad_o, Tensor grad_c, Tensor x, Tensor weight_r, Tensor weight_t, Tensor c0, "
      "Tensor r, Tensor c, Tensor? td_mask, int act_r, int act_t, int merge) -> (Tensor grad_x, "
      "Tensor grad_weight_r, Tensor grad_bias_r, Tensor grad_weight_t, Tensor grad_bias_t, Tensor grad_c0)");
  // The forward without what only backward needs (r), for torch.no_grad() / inference_mode; all_states=False
  // returns only the final c, (1, B, C, H, W).
  m.def(
      "cbm_inference(Tensor x, Tensor weight_r, Tensor? bias_r, Tensor weight_t, Tensor? bias_t, Tensor c0, "
      "int act_r, int act_t, int merge, bool all_states=True) -> (Tensor o, Tensor c)");
  // ConvLSTM and ConvGRU (csrc/cells.h): forward ops return the gates for backward; the *_inference ops don't.
  m.def(
      "convlstm_forward(Tensor x, Tensor weight, Tensor? bias, Tensor h0, Tensor c0) -> "
      "(Tensor h, Tensor c, Tensor gates)");
  m.def(
      "convlstm_inference(Tensor x, Tensor weight, Tensor? bias, Tensor h0, Tensor c0, bool all_states=True) -> "
      "(Tensor h, Tensor c)");
  m.def(
      "convlstm_backward(Tensor grad_h, Tensor grad_c, Tensor x, Tensor weight, Tensor h0, Tensor c0, Tensor h, "
      "Tensor c, Tensor gates) -> (Tensor grad_x, Tensor grad_weight, Tensor grad_bias, Tensor grad_h0, "
      "Tensor grad_c0)");
  m.def(
      "convgru_forward(Tensor x, Tensor weight_x, Tensor? bias_x, Tensor weight_h, Tensor? bias_h, Tensor h0) -> "
      "(Tensor h, Tensor gates)");
  m.def(
      "convgru_inference(Tensor x, Tensor weight_x, Tensor? bias_x, Tensor weight_h, Tensor? bias_h, Tensor h0) -> "
      "Tensor h");
  m.def(
      "convgru_backward(Tensor grad_h, Tensor x, Tensor weight_x, Tensor weight_h, Tensor h0, Tensor h, "
      "Tensor gates) -> (Tensor grad_x, Tensor grad_weight_x, Tensor grad_bias_x, Tensor grad_weight_h, "
      "Tensor grad_bias_h, Tensor grad_h0)");
  m.def("cuda_compiled() -> bool", &cuda_compiled);
  m.def("build_info() -> str", &build_info);
  m.def("cpu_kernels_parallel() -> bool", &cpu_kernels_parallel);
  m.def("cuda_persistent_launches() -> int", &cuda_persistent_launches);
  m.def("cuda_graph_replays() -> int", &cuda_graph_replays);
  // Testing aid: the CPU driver's chunk size (csrc/cbm.h), so tiny shapes run several chunks.
  m.def("_set_cpu_conv_chunk_elements(int elements) -> int", &set_cpu_conv_chunk_elements);
}

}  // namespace deeprnn
