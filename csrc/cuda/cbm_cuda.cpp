// CUDA kernels of the CBM ops, registered for the CUDA (and AutocastCUDA) dispatch keys.
//
// The math is the device-generic driver of csrc/cbm_recurrence.cpp (cuDNN via ATen for the time-batched input
// convolution and the per-step C -> C recurrent convolution) with the fused step epilogues of cbm_kernels.cu,
// all on the current stream with no host synchronisation in the loop; or, where enabled, the persistent kernels
// that run all steps in one launch (csrc/cuda/cbm_persistent_cuda.cpp, DEEPRNN_CUDA_PERSISTENT).
//
// Optional CUDA graphs (DEEPRNN_CUDA_GRAPHS=1, off by default until verified on a GPU): the whole op (input
// convolution, T-step loop, and in backward the batched weight gradients) is captured once per
// (direction, device, stream, shapes, dtype, options, cuDNN flags) on fixed-address input buffers; a call copies
// its inputs into those buffers, replays the graph on the current stream and returns copies of the graph's
// outputs. See GraphCache below for the rules (warm-up, size gate, LRU eviction, never while capturing).
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <c10/cuda/CUDAEvent.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <atomic>
#include <cstdlib>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

#include "../cbm.h"
#include "cbm_kernels.h"
#include "cbm_persistent_cuda.h"
#include "../step_tables.h"

namespace deeprnn {
namespace {

using at::Tensor;
namespace ck = cuda_kernels;

// The step epilogues' launcher for the shared table code (csrc/step_tables.h), on the current stream.
struct CudaLaunch {
  static void cbm_forward(ck::DType dtype, Options opt, const ck::ForwardArgs& a) {
    ck::launch_forward(dtype, int(opt.act_r), int(opt.act_t), int(opt.merge), a, c10::cuda::getCurrentCUDAStream());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  static void cbm_backward(ck::DType dtype, Options opt, const ck::BackwardArgs& a) {
    ck::launch_backward(dtype, int(opt.act_r), int(opt.act_t), int(opt.merge), a, c10::cuda::getCurrentCUDAStream());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

const StepKernels kCudaKernels = step_tables::cbm_table<CudaLaunch>(forward_sequence_cuda, backward_sequence_cuda);

// ---------------------------------------------------------------------------------------------------------------
// CUDA graphs.

int64_t env_int(const char* name, int64_t fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  try {
    return std::stoll(v);
  } catch (...) {
    return fallback;
  }
}

bool graphs_requested() { return env_int("DEEPRNN_CUDA_GRAPHS", 0) == 1; }

std::atomic<int64_t> g_graph_replays{0};  // replays of a captured graph (tests check the graph really ran)

// A CUDA graph of one whole op call on fixed-address inputs.
struct GraphEntry {
  std::unique_ptr<at::cuda::CUDAGraph> graph;  // null until captured
  std::vector<Tensor> static_in;               // the inputs the graph reads (undefined for None)
  std::vector<Tensor> static_out;              // the outputs each replay writes (in the graph's private pool)
  cudaStream_t stream = nullptr;               // the stream it replays on (part of the key)
  int64_t calls = 0;
  bool failed = false;  // capture failed once: always run eagerly for this key
};

using GraphFn = std::function<std::vector<Tensor>(const std::vector<Tensor>&)>;

// Process-wide LRU of captured graphs. Rules:
//  * keyed on everything that changes the captured work: direction, device, current stream, every input's
//    sizes and dtype (and which optional inputs are present), the option codes, and the cuDNN/TF32/determinism
//    flags that steer algorithm choice. Data pointers are not in the key: inputs are copied in.
//  * the first DEEPRNN_CUDA_GRAPHS_WARMUP (default 1) calls of a key run eagerly (cuDNN picks and caches its
//    algorithms, libraries initialise); the next one captures on a side stream, then every call replays.
//  * never used while the current stream is being captured (the eager loop is then captured by the caller),
//    and only when T*B*C*H*W <= DEEPRNN_CUDA_GRAPHS_MAX_NUMEL (default 2^24): for big images launches do not
//    dominate and the extra input/output copies would cost more than they save.
//  * at most DEEPRNN_CUDA_GRAPHS_CACHE (default 8) graphs; evicting one first synchronises its stream so no
//    replay or output copy still reads its memory. The cache is leaked at exit on purpose (destroying graphs
//    after the CUDA context is gone crashes).
//  * one mutex serialises graphed calls; copy-in, replay and copy-out are enqueued on the same stream, so a
//    later replay of the same graph (same stream, by the key) is ordered after the earlier copies.
class GraphCache {
 public:
  static GraphCache& get() {
    static GraphCache* cache = new GraphCache();  // leaked on purpose
    return *cache;
  }

  // Runs fn(inputs) through the cached graph for key; returns fresh output tensors.
  std::vector<Tensor> run(const std::string& key, const std::vector<Tensor>& inputs, const GraphFn& fn) {
    std::lock_guard<std::mutex> lock(mu_);
    std::shared_ptr<GraphEntry> e = lookup(key);
    if (e->failed || e->calls++ < std::max<int64_t>(0, env_int("DEEPRNN_CUDA_GRAPHS_WARMUP", 1))) {
      return fn(inputs);
    }
    const auto cur = c10::cuda::getCurrentCUDAStream();
    if (!e->graph) {
      e->stream = cur.stream();
      e->static_in.clear();
      for (const Tensor& t : inputs) {
        e->static_in.push_back(t.defined() ? t.clone(at::MemoryFormat::Contiguous) : Tensor());
      }
      if (!capture(*e, fn)) {
        e->failed = true;
        e->static_in.clear();
        TORCH_WARN_ONCE("deeprnn: CUDA graph capture of the CBM op failed; running without graphs for this shape");
        return fn(inputs);
      }
    } else {
      for (size_t i = 0; i < inputs.size(); ++i) {
        if (inputs[i].defined()) e->static_in[i].copy_(inputs[i], /*non_blocking=*/true);
      }
    }
    e->graph->replay();
    g_graph_replays.fetch_add(1, std::memory_order_relaxed);
    std::vector<Tensor> out;
    out.reserve(e->static_out.size());
    for (const Tensor& t : e->static_out) out.push_back(t.clone());
    return out;
  }

 private:
  std::shared_ptr<GraphEntry> lookup(const std::string& key) {
    auto it = index_.find(key);
    if (it != index_.end()) {
      lru_.splice(lru_.begin(), lru_, it->second);
      return it->second->second;
    }
    lru_.emplace_front(key, std::make_shared<GraphEntry>());
    index_[key] = lru_.begin();
    const auto capacity = static_cast<size_t>(std::max<int64_t>(1, env_int("DEEPRNN_CUDA_GRAPHS_CACHE", 8)));
    while (lru_.size() > capacity) {
      auto& victim = lru_.back().second;
      if (victim->graph && victim->stream != nullptr) C10_CUDA_CHECK(cudaStreamSynchronize(victim->stream));
      index_.erase(lru_.back().first);
      lru_.pop_back();
    }
    return lru_.front().second;
  }

  // Captures fn(static_in) on a side stream; false (and the stream left usable) when capture fails.
  static bool capture(GraphEntry& e, const GraphFn& fn) {
    const auto cur = c10::cuda::getCurrentCUDAStream();
    const auto side = c10::cuda::getStreamFromPool(/*isHighPriority=*/false, cur.device_index());
    c10::cuda::CUDAEvent ready;
    ready.record(cur);  // the static inputs were written on cur
    ready.block(side);
    auto graph = std::make_unique<at::cuda::CUDAGraph>();
    bool ok = true;
    {
      const c10::cuda::CUDAStreamGuard on_side(side);
      graph->capture_begin();
      try {
        e.static_out = fn(e.static_in);
      } catch (const std::exception&) {
        ok = false;
      }
      try {
        graph->capture_end();
      } catch (const std::exception&) {
        ok = false;
      }
    }
    (void)cudaGetLastError();  // clear a sticky capture error, if any
    c10::cuda::CUDAEvent done;
    done.record(side);
    done.block(cur);
    if (!ok) {
      e.static_out.clear();
      return false;
    }
    e.graph = std::move(graph);
    return true;
  }

  std::mutex mu_;
  std::list<std::pair<std::string, std::shared_ptr<GraphEntry>>> lru_;
  std::unordered_map<std::string, std::list<std::pair<std::string, std::shared_ptr<GraphEntry>>>::iterator> index_;
};

bool use_graphs(const Tensor& x, int64_t C) {
  if (!graphs_requested()) return false;
  if (c10::cuda::currentStreamCaptureStatusMayInitCtx() != c10::cuda::CaptureStatus::None) return false;
  const int64_t numel = x.size(0) * x.size(1) * C * x.size(3) * x.size(4);
  return numel > 0 && numel <= env_int("DEEPRNN_CUDA_GRAPHS_MAX_NUMEL", int64_t(1) << 24);
}

std::string graph_key(const char* direction, const std::vector<Tensor>& inputs, Options opt) {
  std::ostringstream k;
  const auto cur = c10::cuda::getCurrentCUDAStream();
  const auto& ctx = at::globalContext();
  k << direction << "|dev" << int(cur.device_index()) << "|s" << reinterpret_cast<uintptr_t>(cur.stream()) << "|o"
    << opt.act_r << opt.act_t << opt.merge << "|f" << ctx.allowTF32CuDNN() << ctx.deterministicCuDNN()
    << ctx.benchmarkCuDNN() << ctx.deterministicAlgorithms() << ctx.userEnabledCuDNN();
  for (const Tensor& t : inputs) {
    if (!t.defined()) {
      k << "|-";
    } else {
      k << "|" << t.scalar_type() << t.sizes();
    }
  }
  return k.str();
}

std::optional<Tensor> opt_tensor(const Tensor& t) { return t.defined() ? std::optional<Tensor>(t) : std::nullopt; }

Tensor or_undefined(const std::optional<Tensor>& t) { return t.has_value() ? *t : Tensor(); }

// ---------------------------------------------------------------------------------------------------------------
// The ops.

std::tuple<Tensor, Tensor, Tensor> cbm_forward_cuda(const Tensor& x, const Tensor& weight_r,
                                                    const std::optional<Tensor>& bias_r, const Tensor& weight_t,
                                                    const std::optional<Tensor>& bias_t, const Tensor& c0,
                                                    const std::optional<Tensor>& td_mask, int64_t act_r,
                                                    int64_t act_t, int64_t merge) {
  const Tensor br = or_undefined(bias_r), bt = or_undefined(bias_t);
  const Options opt{act_r, act_t, merge};
  check_forward_args(x, weight_r, bias_r, weight_t, bias_t, c0, opt);  // also: every tensor on x's device
  check_td_mask(x, td_mask);  // used in backward only, but a bad mask fails where it is passed
  const c10::cuda::CUDAGuard guard(x.device());
  // The internal convolutions run in the op's dtype even when called inside an autocast region (the
  // AutocastCUDA kernel below has already cast the inputs).
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::DispatchKey::AutocastCUDA);
  if (use_graphs(x, weight_r.size(0))) {
    const std::vector<Tensor> inputs{x, weight_r, br, weight_t, bt, c0};
    const auto out = GraphCache::get().run(graph_key("fwd", inputs, opt), inputs, [opt](const std::vector<Tensor>& in) {
      auto [o, c, r] = cbm_forward_impl(in[0], in[1], opt_tensor(in[2]), in[3], opt_tensor(in[4]), in[5], opt,
                                        kCudaKernels);
      return std::vector<Tensor>{o, c, r};
    });
    return {out[0], out[1], out[2]};
  }
  return cbm_forward_impl(x, weight_r, bias_r, weight_t, bias_t, c0, opt, kCudaKernels);
}

// No CUDA graphs here: the inference op is new and unmeasured on a GPU (NEVER RUN ON A GPU).
std::tuple<Tensor, Tensor> cbm_inference_cuda(const Tensor& x, const Tensor& weight_r,
                                              const std::optional<Tensor>& bias_r, const Tensor& weight_t,
                                              const std::optional<Tensor>& bias_t, const Tensor& c0, int64_t act_r,
                                              int64_t act_t, int64_t merge, bool all_states) {
  check_forward_args(x, weight_r, bias_r, weight_t, bias_t, c0, {act_r, act_t, merge});  // every tensor on x's device
  const c10::cuda::CUDAGuard guard(x.device());
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::DispatchKey::AutocastCUDA);
  return cbm_inference_impl(x, weight_r, bias_r, weight_t, bias_t, c0, {act_r, act_t, merge}, all_states,
                            kCudaKernels);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> cbm_backward_cuda(
    const Tensor& grad_o, const Tensor& grad_c, const Tensor& x, const Tensor& weight_r, const Tensor& weight_t,
    const Tensor& c0, const Tensor& r, const Tensor& c, const std::optional<Tensor>& td_mask, int64_t act_r,
    int64_t act_t, int64_t merge) {
  const Tensor td = or_undefined(td_mask);
  const c10::cuda::CUDAGuard guard(x.device());
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::DispatchKey::AutocastCUDA);  // backward inside autocast
  const Options opt{act_r, act_t, merge};
  check_backward_args(grad_o, grad_c, x, weight_r, weight_t, c0, r, c, td_mask, opt);  // never inside a capture
  if (use_graphs(x, weight_r.size(0))) {
    const std::vector<Tensor> inputs{grad_o, grad_c, x, weight_r, weight_t, c0, r, c, td};
    const auto out = GraphCache::get().run(graph_key("bwd", inputs, opt), inputs, [opt](const std::vector<Tensor>& in) {
      auto [gx, gwr, gbr, gwt, gbt, gc0] =
          cbm_backward_impl(in[0], in[1], in[2], in[3], in[4], in[5], in[6], in[7], opt_tensor(in[8]), opt,
                            kCudaKernels);
      return std::vector<Tensor>{gx, gwr, gbr, gwt, gbt, gc0};
    });
    return {out[0], out[1], out[2], out[3], out[4], out[5]};
  }
  return cbm_backward_impl(grad_o, grad_c, x, weight_r, weight_t, c0, r, c, td_mask, opt, kCudaKernels);
}

// Autocast: the CBM layer is convolution work, so under torch.autocast("cuda") it runs in the autocast dtype
// (float16 or bfloat16), like aten::conv2d. float64 calls are left alone (autocast never touches double).
std::tuple<Tensor, Tensor, Tensor> cbm_forward_autocast_cuda(const Tensor& x, const Tensor& weight_r,
                                                             const std::optional<Tensor>& bias_r,
                                                             const Tensor& weight_t,
                                                             const std::optional<Tensor>& bias_t, const Tensor& c0,
                                                             const std::optional<Tensor>& td_mask, int64_t act_r,
                                                             int64_t act_t, int64_t merge) {
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::DispatchKey::AutocastCUDA);
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("deeprnn::cbm_forward", "")
                       .typed<std::tuple<Tensor, Tensor, Tensor>(
                           const Tensor&, const Tensor&, const std::optional<Tensor>&, const Tensor&,
                           const std::optional<Tensor>&, const Tensor&, const std::optional<Tensor>&, int64_t,
                           int64_t, int64_t)>();
  bool any_double = false;
  for (const Tensor* t : {&x, &weight_r, &weight_t, &c0}) any_double |= t->scalar_type() == at::kDouble;
  if (any_double) return op.call(x, weight_r, bias_r, weight_t, bias_t, c0, td_mask, act_r, act_t, merge);
  const auto dt = at::autocast::get_autocast_dtype(at::kCUDA);
  const auto cast = [dt](const Tensor& t) { return at::autocast::cached_cast(dt, t, c10::DeviceType::CUDA); };
  const auto cast_opt = [dt](const std::optional<Tensor>& t) {
    return at::autocast::cached_cast(dt, t, c10::DeviceType::CUDA);
  };
  return op.call(cast(x), cast(weight_r), cast_opt(bias_r), cast(weight_t), cast_opt(bias_t), cast(c0), td_mask,
                 act_r, act_t, merge);
}

}  // namespace

int64_t graph_replays() { return g_graph_replays.load(std::memory_order_relaxed); }

TORCH_LIBRARY_IMPL(deeprnn, CUDA, m) {
  m.impl("cbm_forward", &cbm_forward_cuda);
  m.impl("cbm_inference", &cbm_inference_cuda);
  m.impl("cbm_backward", &cbm_backward_cuda);
}

TORCH_LIBRARY_IMPL(deeprnn, AutocastCUDA, m) { m.impl("cbm_forward", &cbm_forward_autocast_cuda); }

}  // namespace deeprnn
