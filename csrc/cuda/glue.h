// Host-side helpers shared by the CUDA registrations (csrc/cuda/*.cpp).
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <mutex>
#include <tuple>

#include "../kernel_counter.h"
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

// SNNSPX_LEGACY_CUDA=1 (exactly "1", read at every call, so a program or a test can
// switch it): the earlier default kernels (sorted pooling, the global-atomic fused
// forward, the per-spike loads of the fused backward, the one-pixel gather) instead of
// the current ones, for comparison (docs/build.md). Both give the same bits where
// docs/build.md says so.
inline bool legacy_cuda() {
  const char* v = std::getenv("SNNSPX_LEGACY_CUDA");
  return v != nullptr && std::strcmp(v, "1") == 0;
}

// Whether an op may read a value back to the host now: not while the current stream
// is captured into a CUDA graph (torch.cuda.graph, torch.compile's "reduce-overhead"
// mode), where a read-back is an error. The label range check is skipped then; the
// kernels ignore labels >= K in any case.
inline bool can_read_back() {
  return c10::cuda::currentStreamCaptureStatusMayInitCtx() == c10::cuda::CaptureStatus::None;
}

// The stream of the label checks on `device` (the current device): one per device, made on
// first use and never destroyed, non-blocking (no implicit sync with the legacy default
// stream). Not one of PyTorch's pool streams, which another thread may be capturing into a
// CUDA graph or keep busy with long work of its own.
inline c10::cuda::CUDAStream label_check_stream(c10::DeviceIndex device) {
  static std::mutex mutex;
  static auto* streams = new std::map<c10::DeviceIndex, cudaStream_t>();  // never destroyed
  std::lock_guard<std::mutex> lock(mutex);
  auto it = streams->find(device);
  if (it == streams->end()) {
    cudaStream_t stream = nullptr;
    C10_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    it = streams->emplace(device, stream).first;
  }
  return c10::cuda::getStreamFromExternal(it->second, device);
}

// The label range check (check_labels) of a CUDA op, without a stream-wide sync:
// start() takes the largest label as a device tensor (queued before the op's main
// kernels), copies it into pinned host memory and records an event right behind the
// copy; verify(), called after the main kernels are queued, waits for that event only.
// The host thus returns while the main kernels still run (the next call's host work
// overlaps them), and the verdict still comes before the op returns. The kernels skip
// labels >= K, so they are safe to run before it; on failure the outputs are dropped.
//
// The copy to the host runs on a side stream (label_check_stream), which first waits for the
// work queued so far on the current stream; for the labels form (unpooling, the fused ops,
// sorted pooling) the count kernel runs there too (the labels' producer is in that queued
// work), and start_on_side serves the no-sort pooling, whose own count kernel already wrote
// the largest label. The op's kernels, queued next on the current stream, do not wait for
// the copy. In the current stream it sat between two calls' kernels: about 18 us a call of
// unpooling on an H200 (stop 11's table, 0.104 ms with the check, 0.086 without), mostly the
// copy's round trip. The tensors the side stream uses live until the verdict (or the
// destructor, which waits for the event), so the caching allocator never hands their blocks
// to the current stream early. SNNSPX_LEGACY_CUDA=1 keeps everything on the current stream.
class DeviceLabelCheck {
 public:
  explicit DeviceLabelCheck(int64_t K) : K_(K) {}
  DeviceLabelCheck(const DeviceLabelCheck&) = delete;
  DeviceLabelCheck& operator=(const DeviceLabelCheck&) = delete;
  ~DeviceLabelCheck() {
    // No throw from a destructor. An op that failed between the check's start and its
    // verdict leaves work on the side stream that still reads lab_ and writes top_.
    if (armed_) cudaEventSynchronize(event_);
    if (event_ != nullptr) cudaEventDestroy(event_);
  }
  // The check of int32/int64 `labels` (nothing when disabled or empty): their largest
  // label by the count kernel of suppix.cu (a few loads per thread over many blocks; an ATen
  // max reduction took 8.6 us on an H200 for 64k labels), into an int64 preset by a byte
  // memset to 0x8080...80: below every label that can fail the check.
  DeviceLabelCheck(const at::Tensor& labels, int64_t K, bool enabled) : K_(K) {
    if (!enabled || labels.numel() == 0) return;
    TORCH_INTERNAL_ASSERT(labels.scalar_type() == at::kInt || labels.scalar_type() == at::kLong);
    lab_ = labels.contiguous();
    TORCH_CHECK(lab_.numel() / 1024 < std::numeric_limits<int32_t>::max(), "at most 2^41 labels, got ", lab_.numel());
    top_ = at::empty({1}, lab_.options().dtype(at::kLong));
    if (legacy_cuda()) {
      count_into_top(c10::cuda::getCurrentCUDAStream());
      start(top_);
      return;
    }
    on_side([this](cudaStream_t side) { count_into_top(side); });
  }
  // The check of `top`, a one-element int64 tensor on the current device holding the largest
  // label, written by work already queued on the current stream (the no-sort pooling's own
  // count kernel): its copy to the host runs on the side stream, so the current stream's next
  // kernels do not wait for it (SNNSPX_LEGACY_CUDA=1: start(top), on the current stream).
  void start_on_side(const at::Tensor& top) {
    if (legacy_cuda()) return start(top);
    top_ = top;
    on_side([](cudaStream_t) {});
  }
  // The copy of `top` (as above) on the current stream.
  void start(const at::Tensor& top) {
    TORCH_INTERNAL_ASSERT(top.scalar_type() == at::kLong && top.numel() == 1);
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
    check_suppix_label_top(host_.data_ptr<int64_t>()[0], K_);
  }

 private:
  // On the side stream, once the work queued so far on the current stream is done: `work`
  // (given the side stream), then start(top_)'s copy and event.
  template <typename Work>
  void on_side(Work&& work) {
    const c10::cuda::CUDAStream current = c10::cuda::getCurrentCUDAStream();
    const c10::cuda::CUDAStream side = label_check_stream(current.device_index());
    cudaEvent_t queued = nullptr;
    C10_CUDA_CHECK(cudaEventCreateWithFlags(&queued, cudaEventDisableTiming));
    const cudaError_t recorded = cudaEventRecord(queued, current);
    const cudaError_t waited = recorded == cudaSuccess ? cudaStreamWaitEvent(side, queued, 0) : recorded;
    cudaEventDestroy(queued);  // allowed once the wait is queued: it keeps the recorded state
    C10_CUDA_CHECK(waited);
    try {
      c10::cuda::CUDAStreamGuard on_side(side);  // start()'s copy and event go to `side` too
      work(side.stream());
      start(top_);
    } catch (...) {
      // Work may be queued on the side stream without an armed event for the destructor to
      // wait for (and a constructor that throws has no destructor): let the side stream
      // finish with lab_ and top_ before they are freed.
      cudaStreamSynchronize(side.stream());
      throw;
    }
  }

  void count_into_top(cudaStream_t stream) {
    C10_CUDA_CHECK(cudaMemsetAsync(top_.data_ptr(), 0x80, sizeof(int64_t), stream));
    suppix_count(lab_.data_ptr(), lab_.scalar_type() == at::kLong, /*counts=*/nullptr, top_.data_ptr<int64_t>(),
                 /*maps=*/1, /*P=*/lab_.numel(), K_, stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  int64_t K_;
  bool armed_ = false;
  at::Tensor lab_, top_;  // read / written by the side stream until the verdict
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
// computed on the device instead (counter "cuda.srm_tables"; within about 2 ulp of the
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
    count_kernel("cuda.srm_tables");
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
