// Host-side helpers shared by the CUDA registrations (csrc/cuda/*.cpp).
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <limits>
#include <map>
#include <mutex>
#include <tuple>

#include "../srm_core.h"
#include "../suppix_glue.h"
#include "launch.h"
#include "suppix_launch.h"

namespace snnspx {
namespace cuda {

// The launchers' element type for a tensor dtype.
inline DType launch_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return DType::Float;
    case at::kDouble: return DType::Double;
    case at::kHalf: return DType::Half;
    case at::kBFloat16: return DType::BFloat16;
    default: TORCH_CHECK(false, "snnspx CUDA kernels take float32, float64, float16 or bfloat16, got ", t);
  }
}

// Whether an op may read a value back to the host now: not while the current stream
// is captured into a CUDA graph (torch.cuda.graph, torch.compile's "reduce-overhead"
// mode), where a read-back is an error. The label range check is skipped then; the
// kernels ignore labels >= K in any case.
inline bool can_read_back() {
  return c10::cuda::currentStreamCaptureStatusMayInitCtx() == c10::cuda::CaptureStatus::None;
}

// The label range check (check_labels) of a CUDA op, without a stream-wide sync:
// start() takes the largest label as a device tensor (queued before the op's main
// kernels), copies it into pinned host memory and records an event right behind the
// copy; verify(), called after the main kernels are queued, waits for that event only.
// The host thus returns while the main kernels still run (the next call's host work
// overlaps them), and the verdict still comes before the op returns. The kernels skip
// labels >= K, so they are safe to run before it; on failure the outputs are dropped.
class DeviceLabelCheck {
 public:
  explicit DeviceLabelCheck(int64_t K) : K_(K) {}
  DeviceLabelCheck(const DeviceLabelCheck&) = delete;
  DeviceLabelCheck& operator=(const DeviceLabelCheck&) = delete;
  ~DeviceLabelCheck() {
    if (event_ != nullptr) cudaEventDestroy(event_);  // no throw from a destructor
  }
  // The check of `labels` by one max reduction (nothing when disabled or empty).
  DeviceLabelCheck(const at::Tensor& labels, int64_t K, bool enabled) : K_(K) {
    if (enabled && labels.numel() > 0) start(labels.max());
  }
  // top: a one-element integer tensor on the current device, the largest label.
  void start(const at::Tensor& top) {
    host_ = at::empty({1}, top.options().device(at::kCPU).pinned_memory(true));
    host_.copy_(top.reshape({1}), /*non_blocking=*/true);
    if (event_ == nullptr) C10_CUDA_CHECK(cudaEventCreateWithFlags(&event_, cudaEventDisableTiming));
    C10_CUDA_CHECK(cudaEventRecord(event_, c10::cuda::getCurrentCUDAStream()));
    armed_ = true;
  }
  void verify() {
    if (!armed_) return;
    armed_ = false;
    C10_CUDA_CHECK(cudaEventSynchronize(event_));
    const int64_t top = host_.scalar_type() == at::kInt ? int64_t(host_.data_ptr<int32_t>()[0])
                                                        : host_.data_ptr<int64_t>()[0];
    check_suppix_label_top(top, K_);
  }

 private:
  int64_t K_;
  bool armed_ = false;
  at::Tensor host_;
  cudaEvent_t event_ = nullptr;
};

// The SRM backward's kernel tables [epsw | epst] (2 * max(T, 1) entries, in the dtype
// of `like`: the accumulation type), on `like`'s device, which must be the current one.
// They are computed on the host by the CPU backend's own code (srm_core.h: pow in double,
// rounded once) and copied over: the GPU's pow may differ from the host's in the last bit,
// and float64 gradients would then differ from the CPU's and the reference's.
//
// The copy is blocking and made once per device, dtype, T and time constants: the result
// is cached in memory of its own (cudaMalloc, never freed, never written again), so no
// stream can read it early, and a CUDA graph that captured a read of it stays valid. (A
// block of PyTorch's caching allocator would not do: under torch.compile's
// "reduce-overhead" it may belong to a graph's private pool and be handed out again.)
// While a graph is being captured no host copy may be made, so a table not yet cached is
// computed on the device instead (within about 2 ulp of the
// host's in float64) and not cached. Past kMaxCachedBytes of tables nothing more is cached:
// each call then makes its tables with a blocking copy (one warning).
inline at::Tensor srm_tables_cuda(const at::Tensor& like, int64_t T, double tau_m, double tau_s, double tau_grad) {
  constexpr int64_t kMaxCachedBytes = int64_t(64) << 20;
  using Key = std::tuple<int, int, int64_t, double, double, double>;
  static std::mutex mutex;
  static int64_t cached_bytes = 0;
  // Never destroyed: nothing is freed at exit, when the CUDA runtime may be gone.
  static auto* cache = new std::map<Key, at::Tensor>();
  const Key key{like.get_device(), static_cast<int>(like.scalar_type()), T, tau_m, tau_s, tau_grad};
  {
    std::lock_guard<std::mutex> lock(mutex);
    const auto it = cache->find(key);
    if (it != cache->end()) return it->second;
  }
  const int64_t n = 2 * std::max<int64_t>(T, 1);
  TORCH_INTERNAL_ASSERT(like.scalar_type() == at::kDouble || like.scalar_type() == at::kFloat);
  if (!can_read_back()) {
    at::Tensor dev = at::empty({n}, like.options());
    srm_tables(launch_dtype(like.scalar_type()), dev.data_ptr(), T, tau_m, tau_s, tau_grad,
               c10::cuda::getCurrentCUDAStream());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return dev;
  }
  at::Tensor host = at::empty({n}, like.options().device(at::kCPU));
  if (host.scalar_type() == at::kDouble) {
    fill_srm_tables<double>(host.data_ptr<double>(), T, tau_m, tau_s, tau_grad);
  } else {
    fill_srm_tables<float>(host.data_ptr<float>(), T, tau_m, tau_s, tau_grad);
  }
  const int64_t bytes = n * static_cast<int64_t>(host.element_size());
  std::lock_guard<std::mutex> lock(mutex);
  const auto it = cache->find(key);  // another thread may have made it meanwhile
  if (it != cache->end()) return it->second;
  if (cached_bytes + bytes > kMaxCachedBytes) {
    TORCH_WARN_ONCE("snnspx: more than ", kMaxCachedBytes >> 20, " MB of SRM backward tables (one per T and set of "
                    "time constants) are cached; further ones are made on every call, with a host copy each");
    return host.to(like.device(), /*non_blocking=*/false);
  }
  void* ptr = nullptr;
  C10_CUDA_CHECK(cudaMalloc(&ptr, static_cast<size_t>(bytes)));
  at::Tensor dev = at::from_blob(ptr, {n}, [](void*) {}, like.options());
  dev.copy_(host, /*non_blocking=*/false);
  cached_bytes += bytes;
  cache->emplace(key, dev);
  return dev;
}

inline void check_cuda_tensor(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor, got one on ", t.device());
}

}  // namespace cuda
}  // namespace snnspx
