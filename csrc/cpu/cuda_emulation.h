// The CUDA path on CPU tensors, a testing aid: the CUDA step-kernel tables (their configuration and host decisions,
// csrc/step_tables.h) with the CUDA kernels' bodies (csrc/cuda/epilogue_bodies.h) run by a host executor. While it is
// switched on (the op deeprnn::_set_cpu_emulates_cuda) every CPU op of every cell uses these tables instead of the
// CPU ones, so the driver takes the branches only CUDA reaches (one projection chunk, the whole-sequence hooks) and
// the kernel bodies see the driver's real operands.
#pragma once

#include <atomic>
#include <cstdint>
#include <vector>

#include "../cbm.h"
#include "../cells.h"

namespace deeprnn {

inline std::atomic<bool> g_cpu_emulates_cuda{false};

StepKernels cuda_emulation_cbm_kernels();
LstmStepKernels cuda_emulation_lstm_kernels();
GruStepKernels cuda_emulation_gru_kernels();

}  // namespace deeprnn
