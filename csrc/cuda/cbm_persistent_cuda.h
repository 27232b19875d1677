// The CUDA op's whole-sequence hooks (StepKernels::forward_sequence / backward_sequence): the persistent
// recurrence kernels where they are enabled, can run and (DEEPRNN_CUDA_PERSISTENT=auto) measure faster.
#pragma once

#include <functional>

#include "../cbm.h"

namespace deeprnn {

void forward_sequence_cuda(const ForwardSequence& seq, const std::function<void()>& step_loop);
at::Tensor backward_sequence_cuda(const BackwardSequence& seq, const std::function<at::Tensor()>& step_loop);

// Successful persistent kernel launches in this process (forward and backward).
int64_t persistent_launches();

}  // namespace deeprnn
