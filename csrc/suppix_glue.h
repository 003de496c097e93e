// Argument checks and output allocation of the superpixel ops (docs/maths.md §5), shared
// by the CPU and CUDA registrations. Host-only (ATen); never included by .cu files.
//
// Canonical layouts (the Python wrappers reshape to them; the ops check them):
//   x, grad_x:   [T, B, C, P]   P = H * W pixels, any dtype of float32/float64/float16/bfloat16
//   labels:      [L, Bl, P]     int32 or int64; L in {1, T} (shared over time or per step),
//                               Bl in {1, B} (shared over the batch or per image)
//   y, grad_y:   [T, B, C, K]
//   counts:      [L, Bl, K]     int32
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <limits>
#include <string>

#include "suppix_core.h"

namespace snnspx {

// The one parser of the `mode` argument of the pooling and fused ops. "avg_spike" (avg
// whose backward is the spike form g / m) is a pooling mode only.
inline PoolMode parse_pool_mode(c10::string_view mode, bool allow_avg_spike) {
  if (mode == "sum") return PoolMode::Sum;
  if (mode == "avg") return PoolMode::Avg;
  if (mode == "max") return PoolMode::Max;
  if (allow_avg_spike && mode == "avg_spike") return PoolMode::AvgSpike;
  TORCH_CHECK(false, "mode must be 'sum', 'avg', 'max'", allow_avg_spike ? " or 'avg_spike'" : "", ", got '",
              std::string(mode), "'");
}

struct SupPixDims {
  int64_t T = 0, B = 0, C = 0, P = 0, K = 0, L = 1, Bl = 1;
  int64_t planes() const { return T * B * C; }
  LabelLayout layout() const { return LabelLayout{L, Bl, P}; }
};

inline void check_suppix_float(const at::Tensor& t, const char* name, const char* layout) {
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), name,
              " must be a floating-point tensor (float32, float64, float16 or bfloat16), got ", t.scalar_type());
  TORCH_CHECK(t.dim() == 4, name, " must be ", layout, ", got shape ", t.sizes());
}

// labels [L, Bl, P] against the data dims T, B and (when P >= 0) P.
inline void check_suppix_labels(const at::Tensor& labels, const at::Tensor& data, const char* data_name,
                                int64_t T, int64_t B, int64_t P) {
  TORCH_CHECK(labels.scalar_type() == at::kInt || labels.scalar_type() == at::kLong,
              "labels must be an int32 or int64 tensor, got ", labels.scalar_type());
  TORCH_CHECK(labels.dim() == 3, "labels must be [L, Bl, P] (L = 1 or T, Bl = 1 or B), got shape ", labels.sizes());
  TORCH_CHECK(labels.size(0) == 1 || labels.size(0) == T, "labels.size(0) must be 1 (shared by all steps) or T = ",
              T, ", got ", labels.size(0));
  TORCH_CHECK(labels.size(1) == 1 || labels.size(1) == B, "labels.size(1) must be 1 (shared by the batch) or B = ",
              B, ", got ", labels.size(1));
  TORCH_CHECK(P < 0 || labels.size(2) == P, "labels.size(2) must be the pixel count P = ", P, " of ", data_name,
              ", got ", labels.size(2));
  TORCH_CHECK(labels.size(2) < std::numeric_limits<int32_t>::max(), "at most 2^31 - 2 pixels per image, got ",
              labels.size(2));
  TORCH_CHECK(labels.device() == data.device(), "labels and ", data_name, " must be on the same device, got ",
              labels.device(), " and ", data.device());
}

// The range check's verdict on `top`, the largest label.
inline void check_suppix_label_top(int64_t top, int64_t K) {
  TORCH_CHECK_VALUE(top < K, "labels must be < num_superpixels = ", K, " (negative labels mark ignored pixels), got a label ",
              top);
}

// Every label < K. One max over the label map; on a GPU that is one read-back
// (the Python wrappers say so, and let callers who know their labels skip it).
inline void check_suppix_label_range(const at::Tensor& labels, int64_t K) {
  if (labels.numel() == 0) return;
  check_suppix_label_top(labels.max().item<int64_t>(), K);
}

inline void check_num_superpixels(int64_t K) {
  TORCH_CHECK(K >= 0 && K < std::numeric_limits<int32_t>::max(), "num_superpixels must be in [0, 2^31 - 1), got ", K);
}

struct SupPixPoolArgs {
  at::Tensor x, labels;  // contiguous
  SupPixDims d;
  PoolMode mode;
};

inline SupPixPoolArgs prepare_suppix_pool(const at::Tensor& x, const at::Tensor& labels, int64_t K,
                                          c10::string_view mode, bool check_labels) {
  check_suppix_float(x, "x", "[T, B, C, P]");
  check_num_superpixels(K);
  check_suppix_labels(labels, x, "x", x.size(0), x.size(1), x.size(3));
  if (check_labels) check_suppix_label_range(labels, K);
  SupPixPoolArgs a;
  a.mode = parse_pool_mode(mode, /*allow_avg_spike=*/true);
  a.x = x.contiguous();
  a.labels = labels.contiguous();
  a.d.T = x.size(0), a.d.B = x.size(1), a.d.C = x.size(2), a.d.P = x.size(3), a.d.K = K;
  a.d.L = labels.size(0), a.d.Bl = labels.size(1);
  return a;
}

// The pooling op's outputs: y [T, B, C, K] in x's dtype; aux int32, [L, Bl, K]
// (counts) for sum/avg and [T, B, C, K] for max (argmax) and avg_spike (m).
inline std::pair<at::Tensor, at::Tensor> allocate_suppix_pool(const SupPixPoolArgs& a) {
  const auto& d = a.d;
  at::Tensor y = at::empty({d.T, d.B, d.C, d.K}, a.x.options());
  const auto iopt = a.x.options().dtype(at::kInt);
  at::Tensor aux = (a.mode == PoolMode::Sum || a.mode == PoolMode::Avg) ? at::empty({d.L, d.Bl, d.K}, iopt)
                                                                            : at::empty({d.T, d.B, d.C, d.K}, iopt);
  return {y, aux};
}

struct SupPixGatherArgs {
  at::Tensor src, labels, aux;  // contiguous; aux undefined for Sum
  at::Tensor out;               // [T, B, C, P], by allocate_suppix_gather
  SupPixDims d;
  PoolMode mode;
};

// grad_x[t, b, c, p] (or the unpooled z) from grad_y / y [T, B, C, K].
inline SupPixGatherArgs prepare_suppix_gather(const at::Tensor& src, const char* src_name, const at::Tensor& labels,
                                              const at::Tensor* aux, PoolMode mode) {
  check_suppix_float(src, src_name, "[T, B, C, K]");
  // The kernels index superpixels with int32 (as pooling's num_superpixels check ensures).
  TORCH_CHECK_VALUE(src.size(3) < std::numeric_limits<int32_t>::max(), src_name,
                    ".shape[-1] (the number of superpixels K) must be below 2^31 - 1, got ", src.size(3));
  check_suppix_labels(labels, src, src_name, src.size(0), src.size(1), -1);
  SupPixGatherArgs a;
  a.mode = mode;
  a.d.T = src.size(0), a.d.B = src.size(1), a.d.C = src.size(2), a.d.K = src.size(3);
  a.d.L = labels.size(0), a.d.Bl = labels.size(1), a.d.P = labels.size(2);
  a.src = src.contiguous();
  a.labels = labels.contiguous();
  if (mode != PoolMode::Sum) {
    TORCH_CHECK(aux != nullptr, "internal: aux is required");
    TORCH_CHECK(aux->scalar_type() == at::kInt, "aux must be int32, got ", aux->scalar_type());
    TORCH_CHECK(aux->device() == src.device(), "aux and ", src_name, " must be on the same device, got ",
                aux->device(), " and ", src.device());
    if (mode == PoolMode::Avg) {
      TORCH_CHECK(aux->sizes() == at::IntArrayRef({a.d.L, a.d.Bl, a.d.K}),
                  "aux must be the counts [L, Bl, K] = [", a.d.L, ", ", a.d.Bl, ", ", a.d.K, "] for mode 'avg', got ",
                  aux->sizes());
    } else {
      TORCH_CHECK(aux->sizes() == src.sizes(), "aux must have the shape of ", src_name, " ", src.sizes(),
                  " for mode 'max' (argmax) or 'avg_spike' (non-zero counts), got ", aux->sizes());
    }
    a.aux = aux->contiguous();
  }
  return a;
}

// The gather's output [T, B, C, P], made once the strategy is known (a strategy error
// allocates nothing). Freshly made, so aligned for vector stores.
inline void allocate_suppix_gather(SupPixGatherArgs& a) {
  a.out = at::empty({a.d.T, a.d.B, a.d.C, a.d.P}, a.src.options().memory_format(at::MemoryFormat::Contiguous));
}

}  // namespace snnspx
