// The CUDA strategy functions (strategy.h) and the CUDA kernel of snnspx::_strategy.
#include "strategy.h"

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <string>

#include "../suppix_glue.h"
#include "glue.h"

namespace snnspx {
namespace cuda {

const char* pool_rejects(PoolStrategy strategy, DType dtype, PoolMode mode, const SupPixShape& s) {
  if (strategy == PoolStrategy::Sorted) return nullptr;
  if (s.T * s.B * s.C == 0 || s.P == 0 || s.K == 0) return "needs T * B * C, H * W and K above 0";
  if (strategy == PoolStrategy::MaxKey) {
    if (mode != PoolMode::Max) return "mode max only";
    if (dtype == DType::Double) return "not for float64";
    if (!suppix_pool_max_key_fits(s.K)) return "needs K <= 6144";
    return nullptr;
  }
  if (strategy == PoolStrategy::NoSortQuad && mode == PoolMode::Max) return "not for mode max";
  if (!suppix_pool_nosort_fits(dtype, mode, s.P, s.K)) return "its shared-memory rows exceed 48 KiB (K too large)";
  return nullptr;
}

PoolStrategy suppix_pool_strategy(DType dtype, PoolMode mode, const SupPixShape& s) {
  return pool_rejects(PoolStrategy::NoSort, dtype, mode, s) == nullptr ? PoolStrategy::NoSort : PoolStrategy::Sorted;
}

const char* gather_rejects(GatherKernel kernel, const SupPixShape& s, bool labels_aligned, bool out_aligned) {
  if (kernel == GatherKernel::OnePixel) return nullptr;
  if (s.P % 4 != 0) return "needs H * W divisible by 4";
  if (!labels_aligned || !out_aligned) return "needs the labels and the output aligned to 4 elements";
  return nullptr;
}

GatherKernel suppix_gather_strategy(const SupPixShape& s, bool labels_aligned, bool out_aligned) {
  return gather_rejects(GatherKernel::Tiled, s, labels_aligned, out_aligned) == nullptr ? GatherKernel::Tiled
                                                                                        : GatherKernel::OnePixel;
}

const char* fused_forward_rejects(FusedKernel kernel, DType dtype, LabelType lt, const void* x, const void* labels,
                                  const FusedShape& s, bool training) {
  if (fused_forward_applies(kernel, dtype, lt, x, labels, s, training)) return nullptr;
  if (kernel == FusedKernel::Plane) {
    return "its shared-memory histograms (T * K int32, twice that for max in training) exceed 48 KiB";
  }
  return "needs inference, float32/float16/bfloat16, one label map per image, H * W divisible by 4, x and labels "
         "aligned to 4 elements, T, B * C and K above 0, histograms within 48 KiB and enough planes";
}

FusedKernel srm_suppix_pool_strategy(DType dtype, LabelType lt, const void* x, const void* labels,
                                     const FusedShape& s, bool training) {
  for (FusedKernel k : {FusedKernel::Quad, FusedKernel::Plane}) {
    if (fused_forward_applies(k, dtype, lt, x, labels, s, training)) return k;
  }
  return FusedKernel::Atomic;
}

const char* fused_backward_rejects(FusedBackwardKernel kernel, const FusedShape& s) {
  if (kernel == FusedBackwardKernel::Batched && s.layout.L != 1) return "needs one label map for all steps";
  return nullptr;
}

FusedBackwardKernel srm_suppix_pool_bwd_strategy(const FusedShape& s) {
  return s.layout.L == 1 ? FusedBackwardKernel::Batched : FusedBackwardKernel::PerSpike;
}

}  // namespace cuda

namespace {

// A pointer whose alignment the op would see: a non-contiguous tensor is copied to a
// fresh (aligned) block first, which nullptr stands for.
const void* op_pointer(const at::Tensor& t) { return t.is_contiguous() ? t.data_ptr() : nullptr; }

std::string strategy_cuda(c10::string_view op, const at::Tensor& x, const at::Tensor& labels, int64_t K,
                          c10::string_view mode) {
  TORCH_CHECK(x.dim() == 4, "_strategy: x must be the op's first tensor in its canonical 4-d layout, got shape ",
              x.sizes());
  TORCH_CHECK(labels.dim() == 3, "_strategy: labels must be [L, Bl, P], got shape ", labels.sizes());
  c10::cuda::CUDAGuard guard(x.device());
  const auto dtype = cuda::launch_dtype(x.scalar_type());
  const int64_t T = x.size(0), B = x.size(1), C = x.size(2), P = labels.size(2);
  const cuda::SupPixShape s{T, B, C, P, K, labels.size(0), labels.size(1)};
  if (op == "suppix_pool") {
    const PoolMode m = parse_pool_mode(mode, /*allow_avg_spike=*/true);
    return cuda::kPoolStrategies[static_cast<int>(cuda::suppix_pool_strategy(dtype, m, s))];
  }
  if (op == "suppix_pool_backward" || op == "suppix_unpool") {
    const bool aligned = cuda::quad_aligned_bytes(op_pointer(labels), labels.element_size());
    return cuda::kGatherStrategies[static_cast<int>(cuda::suppix_gather_strategy(s, aligned, /*out_aligned=*/true))];
  }
  if (op == "srm_suppix_pool" || op == "srm_suppix_pool_fwd" || op == "srm_suppix_pool_bwd") {
    const PoolMode m = parse_pool_mode(mode, /*allow_avg_spike=*/false);
    const cuda::FusedShape fs{T, B, C, P, K, LabelLayout{labels.size(0), labels.size(1), P}, m};
    if (op == "srm_suppix_pool_bwd") {
      return cuda::kFusedBackwardStrategies[static_cast<int>(cuda::srm_suppix_pool_bwd_strategy(fs))];
    }
    const auto lt = labels.scalar_type() == at::kLong ? cuda::LabelType::Int64 : cuda::LabelType::Int32;
    const auto k = cuda::srm_suppix_pool_strategy(dtype, lt, op_pointer(x), op_pointer(labels), fs,
                                                  /*training=*/op == "srm_suppix_pool_fwd");
    return cuda::kFusedForwardStrategies[static_cast<int>(k)];
  }
  TORCH_CHECK(false, "_strategy: op must be suppix_pool, suppix_pool_backward, suppix_unpool, srm_suppix_pool, "
              "srm_suppix_pool_fwd or srm_suppix_pool_bwd, got '", std::string(op), "'");
}

}  // namespace

TORCH_LIBRARY_IMPL(snnspx, CUDA, m) { m.impl("_strategy", &strategy_cuda); }

}  // namespace snnspx
