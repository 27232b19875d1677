// The CPU kernels' time chunking, shared by every cell: StepKernels::conv_chunk_elements (csrc/cbm.h) and its
// cells' twins take the current value of this knob.
#pragma once

#include <atomic>
#include <cstdint>

namespace deeprnn {

// Elements per input-projection convolution (input plus output channels, times pixels, times images). oneDNN runs
// NCHW batches of a few 2^18-element images faster per image than one batch of all T*B (up to 2x slower at 2^21
// and more), and the backward's chunk buffers, which are sized by it, then stay below what the reference keeps
// (benchmarks/RESULTS.md: peak memory and the cell tables).
inline constexpr int64_t kDefaultCpuConvChunkElements = int64_t(1) << 18;

// The value in force; tests lower it (the op deeprnn::_set_cpu_conv_chunk_elements) to reach every chunk branch.
inline std::atomic<int64_t> g_cpu_conv_chunk_elements{kDefaultCpuConvChunkElements};

}  // namespace deeprnn
