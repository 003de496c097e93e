// Host-side helpers shared by the CUDA registrations (csrc/cuda/*.cpp).
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>

#include <cstdlib>
#include <cstring>

#include "launch.h"

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

// SNNSPX_EXPERIMENTAL_CUDA=1 (exactly "1", read at every call, so a program or a
// test can switch it): the experimental kernels of docs/build.md where they apply.
inline bool experimental_cuda() {
  const char* v = std::getenv("SNNSPX_EXPERIMENTAL_CUDA");
  return v != nullptr && std::strcmp(v, "1") == 0;
}

// Whether an op may read a value back to the host now: not while the current stream
// is captured into a CUDA graph (torch.cuda.graph, torch.compile's "reduce-overhead"
// mode), where a read-back is an error. The label range check is skipped then; the
// kernels ignore labels >= K in any case.
inline bool can_read_back() {
  return c10::cuda::currentStreamCaptureStatusMayInitCtx() == c10::cuda::CaptureStatus::None;
}

inline void check_cuda_tensor(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor, got one on ", t.device());
}

}  // namespace cuda
}  // namespace snnspx
