// Choosing between the per-step loop and the persistent kernels (csrc/cuda/cbm_persistent_*.cu) for the CUDA op.
//
// DEEPRNN_CUDA_PERSISTENT (read on every call):
//   unset / "0"  the per-step loop (the default until the persistent kernels are verified on a GPU);
//   "1"          the persistent kernels wherever they can run (else the loop);
//   "auto"       per shape: the first eager call times both on the call's own data (CUDA events, one warm-up,
//                then the mean of 3 runs each), caches the faster, and every later call runs it. The measured
//                choice that runs last is the winner, so the call's results are the winner's. While a stream is
//                being captured nothing is measured: a cached choice is used, else the loop.
// The persistent kernels can run when the device supports cooperative launches, the layer's K x 32 slice of the
// recurrent weights fits in shared memory (e.g. C <= 256 at 3x3 in bf16, C <= 128 in float32) and one block per
// 32-channel slice fits on the device at once. A failed launch falls back to the loop (warning once).
#include "cbm_persistent_cuda.h"

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAStream.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <mutex>
#include <sstream>
#include <string>
#include <unordered_map>

#include "cbm_persistent.h"
#include "../step_tables.h"

namespace deeprnn {
namespace {

using at::Tensor;
namespace pk = persistent;

enum class Mode { kOff, kOn, kAuto };

std::atomic<int64_t> g_launches{0};  // successful persistent launches (tests check the kernels really ran)

Mode mode() {
  const char* v = std::getenv("DEEPRNN_CUDA_PERSISTENT");
  if (v == nullptr || *v == '\0' || std::strcmp(v, "0") == 0) return Mode::kOff;
  if (std::strcmp(v, "auto") == 0) return Mode::kAuto;
  if (std::strcmp(v, "1") == 0) return Mode::kOn;
  TORCH_WARN_ONCE("deeprnn: DEEPRNN_CUDA_PERSISTENT must be 0, 1 or auto, got '", v, "'; using 0");
  return Mode::kOff;
}

// The kernels index one step's state with 32-bit ints (offsets across steps are 64-bit).
std::optional<pk::Problem> problem_of(const Tensor& c, const Tensor& w_tc, Options opt) {
  // The driver never passes an empty problem (csrc/cbm_recurrence.cpp returns first); refuse one anyway, since
  // the work split divides by and launches with these sizes.
  if (c.dim() != 5 || c.numel() == 0 || w_tc.dim() != 4 || w_tc.size(-1) < 1) return std::nullopt;
  const int64_t B = c.size(1), C = c.size(2), H = c.size(3), W = c.size(4), KS = w_tc.size(-1);
  const int64_t limit = std::numeric_limits<int32_t>::max() / 64;
  if (c.size(0) > limit || B * C * H * W > limit || KS * KS * C * pk::kBN > limit) return std::nullopt;
  return pk::Problem{int(c.size(0)), int(B), int(C), int(H), int(W), int(KS),
                     int(opt.act_r),  int(opt.act_t), int(opt.merge)};
}

bool allow_tf32() { return at::globalContext().allowTF32CuDNN(); }  // the recurrent conv is a convolution

// True for (T, B, C, H, W) views whose (C, H, W) blocks are contiguous and whose steps are evenly spaced images.
bool image_strided(const Tensor& t) {
  const int64_t HW = t.size(3) * t.size(4);
  return t.stride(4) == 1 && t.stride(3) == t.size(4) && t.stride(2) == HW && t.stride(0) == t.size(1) * t.stride(1);
}

// How the backward epilogue reads a gradient (persistent_tile.h strided_layout); nullopt when it needs a copy.
std::optional<pk::Strided> strided(const Tensor& g) {
  pk::Strided view{};
  if (!pk::strided_layout(g.const_data_ptr(), g.sizes().data(), g.strides().data(), &view)) return std::nullopt;
  return view;
}

// strided(g), or, when g's layout needs a copy, strided() of a contiguous copy kept alive in `copy` (a contiguous
// tensor always has a strided_layout, whatever the strides of its size-1 dims).
pk::Strided strided_or_copy(const Tensor& g, Tensor& copy) {
  if (const auto view = strided(g)) return *view;
  copy = g.clone(at::MemoryFormat::Contiguous);
  const auto view = strided(copy);
  TORCH_INTERNAL_ASSERT(view.has_value(), "a contiguous gradient must have a strided layout");
  return *view;
}

// Per-shape choices of the auto mode: key -> persistent faster.
class Choices {
 public:
  static Choices& get() {
    static Choices* choices = new Choices();  // leaked on purpose, like the graph cache
    return *choices;
  }
  std::optional<bool> find(const std::string& key) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = map_.find(key);
    return it == map_.end() ? std::nullopt : std::optional<bool>(it->second);
  }
  void put(const std::string& key, bool persistent) {
    std::lock_guard<std::mutex> lock(mu_);
    map_[key] = persistent;
  }

 private:
  std::mutex mu_;
  std::unordered_map<std::string, bool> map_;
};

std::string choice_key(const char* direction, const pk::Problem& p, at::ScalarType st, const pk::Plan& plan) {
  std::ostringstream k;
  k << direction << "|dev" << int(c10::cuda::current_device()) << "|" << st << "|" << p.T << "," << p.B << ","
    << p.C << "," << p.H << "," << p.W << "," << p.KS << "|mma" << plan.mma;
  return k.str();
}

// Mean milliseconds of fn on the current stream after one warm-up run.
float time_ms(const std::function<void()>& fn) {
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  fn();
  cudaEvent_t start, stop;
  C10_CUDA_CHECK(cudaEventCreate(&start));
  C10_CUDA_CHECK(cudaEventCreate(&stop));
  constexpr int kRuns = 3;
  C10_CUDA_CHECK(cudaEventRecord(start, stream));
  for (int i = 0; i < kRuns; ++i) fn();
  C10_CUDA_CHECK(cudaEventRecord(stop, stream));
  C10_CUDA_CHECK(cudaEventSynchronize(stop));
  float ms = 0.0f;
  C10_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
  C10_CUDA_CHECK(cudaEventDestroy(start));
  C10_CUDA_CHECK(cudaEventDestroy(stop));
  return ms / kRuns;
}

bool capturing() { return c10::cuda::currentStreamCaptureStatusMayInitCtx() != c10::cuda::CaptureStatus::None; }

// Runs the persistent kernel (returns false after a failed launch, with the CUDA error cleared) or the loop.
struct Runner {
  std::function<cudaError_t()> launch;
  std::function<void()> step_loop;

  bool persistent() const {
    const cudaError_t status = launch();
    if (status == cudaSuccess) {
      g_launches.fetch_add(1, std::memory_order_relaxed);
      return true;
    }
    (void)cudaGetLastError();
    TORCH_WARN_ONCE("deeprnn: persistent CBM kernel launch failed (", cudaGetErrorString(status),
                    "); using the per-step loop");
    return false;
  }

  void run(Mode m, const std::string& key) const {
    if (m == Mode::kOn) {
      if (!persistent()) step_loop();
      return;
    }
    if (const auto cached = Choices::get().find(key)) {
      if (!*cached || !persistent()) step_loop();
      return;
    }
    if (capturing()) {
      step_loop();
      return;
    }
    const float loop_ms = time_ms(step_loop);
    bool ok = true;
    const float persistent_ms = time_ms([&] { ok = ok && persistent(); });
    const bool faster = ok && persistent_ms < loop_ms;
    Choices::get().put(key, faster);
    if (!faster) step_loop();  // the winner's results are the call's results
  }
};

}  // namespace

int64_t persistent_launches() { return g_launches.load(std::memory_order_relaxed); }

void forward_sequence_cuda(const ForwardSequence& s, const std::function<void()>& step_loop) {
  const Mode m = mode();
  if (m == Mode::kOff) {
    step_loop();
    return;
  }
  const auto dt = step_tables::kernel_dtype(s.c.scalar_type());
  const auto p = problem_of(s.c, s.w_tc, s.opt);
  pk::Plan plan;
  if (!dt || !p || !image_strided(s.p_r) || !image_strided(s.p_x) ||
      s.p_r.stride(1) != s.p_x.stride(1) || !s.c.is_contiguous() || !s.r.is_contiguous() || !s.o.is_contiguous() ||
      !pk::plan_forward(*dt, allow_tf32(), *p, &plan)) {
    step_loop();
    return;
  }
  const Tensor wp = s.w_tc.permute({2, 3, 1, 0}).contiguous();  // [tap][C_in][C_out]
  const pk::ForwardArgs args{s.p_r.const_data_ptr(), s.p_x.const_data_ptr(), s.p_r.stride(1), wp.const_data_ptr(),
                             s.c0.const_data_ptr(),  s.r.mutable_data_ptr(), s.c.mutable_data_ptr(),
                             s.o.mutable_data_ptr()};
  const Runner runner{[&] { return pk::launch_forward(*dt, plan, *p, args, c10::cuda::getCurrentCUDAStream()); },
                      step_loop};
  runner.run(m, m == Mode::kAuto ? choice_key("fwd", *p, s.c.scalar_type(), plan) : std::string());
}

Tensor backward_sequence_cuda(const BackwardSequence& s, const std::function<Tensor()>& step_loop) {
  const Mode m = mode();
  if (m == Mode::kOff) return step_loop();
  const auto dt = step_tables::kernel_dtype(s.c.scalar_type());
  const auto p = problem_of(s.c, s.w_tc, s.opt);
  pk::Plan plan;
  if (!dt || !p || !image_strided(s.dG) || !image_strided(s.dP_r) ||
      s.dG.stride(1) != s.dP_r.stride(1) || !pk::plan_backward(*dt, allow_tf32(), *p, &plan)) {
    return step_loop();
  }
  const Tensor wp = s.w_tc.permute({2, 3, 0, 1}).contiguous();  // [tap][C_out][C_in]: the transposed convolution
  const Tensor r = s.r.contiguous(), c = s.c.contiguous();
  Tensor grad_o_copy, grad_c_copy;  // contiguous copies of gradients whose layout the kernel cannot read
  const pk::Strided grad_o = strided_or_copy(s.grad_o, grad_o_copy), grad_c = strided_or_copy(s.grad_c, grad_c_copy);
  const Tensor dc0 = at::empty_like(s.c0, at::MemoryFormat::Contiguous);
  const pk::BackwardArgs args{grad_o,
                              grad_c,
                              r.const_data_ptr(),
                              c.const_data_ptr(),
                              wp.const_data_ptr(),
                              s.dG.mutable_data_ptr(),
                              s.dP_r.mutable_data_ptr(),
                              s.dG.stride(1),
                              dc0.mutable_data_ptr()};
  Tensor result;  // grad_c0 from whichever ran last
  const Runner runner{[&] {
                        result = dc0;
                        return pk::launch_backward(*dt, plan, *p, args, c10::cuda::getCurrentCUDAStream());
                      },
                      [&] { result = step_loop(); }};
  runner.run(m, m == Mode::kAuto ? choice_key("bwd", *p, s.c.scalar_type(), plan) : std::string());
  return result;
}

}  // namespace deeprnn
