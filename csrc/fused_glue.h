// Argument checks and allocation for the fused SRM + superpixel pooling ops,
// shared by the CPU and CUDA registrations. Host-only (ATen).
#pragma once

#include <ATen/ATen.h>

#include <string>

#include "fused_core.h"
#include "srm_glue.h"
#include "suppix_glue.h"

namespace snnspx {

struct FusedArgs {
  at::Tensor x, labels;  // x [T, B, C, P] contiguous; labels [L, Bl, P] contiguous int32/int64
  int64_t T, B, C, P, K;
  LabelLayout layout;
  PoolMode mode;
};

// Checks labels [L, Bl, P] (L in {1, T}, Bl in {1, B}) against the sizes of x.
inline FusedArgs prepare_fused_sizes(int64_t T, int64_t B, int64_t C, int64_t P, const at::Device& device,
                                     const at::Tensor& labels, int64_t K, c10::string_view mode) {
  TORCH_CHECK(labels.scalar_type() == at::kInt || labels.scalar_type() == at::kLong,
              "labels must be int32 or int64, got ", labels.scalar_type());
  TORCH_CHECK(labels.dim() == 3, "labels must be [L, Bl, P] (the op's flattened form), got ", labels.sizes());
  TORCH_CHECK(labels.device() == device, "labels must be on x's device ", device, ", got ", labels.device());
  FusedArgs a;
  a.T = T, a.B = B, a.C = C, a.P = P, a.K = K;
  TORCH_CHECK(K >= 0, "num_superpixels must be >= 0, got ", K);
  TORCH_CHECK(P < (int64_t(1) << 31) && K < (int64_t(1) << 31), "at most 2^31 - 1 pixels and superpixels");
  TORCH_CHECK_VALUE(T < (int64_t(1) << 31), "srm_suppix_pool takes at most 2^31 - 1 steps (T), got ", T);
  TORCH_CHECK(labels.size(2) == P, "labels must have ", P, " pixels per map (like x), got ", labels.size(2));
  TORCH_CHECK(labels.size(0) == 1 || labels.size(0) == T, "labels must hold 1 or T = ", T,
              " maps along dim 0, got ", labels.size(0));
  TORCH_CHECK(labels.size(1) == 1 || labels.size(1) == B, "labels must hold 1 or B = ", B,
              " maps along dim 1, got ", labels.size(1));
  a.layout = LabelLayout{labels.size(0), labels.size(1), P};
  a.mode = parse_pool_mode(mode, /*allow_avg_spike=*/false);
  a.labels = labels.contiguous();
  return a;
}

// x: [T, B, C, P] currents; labels: [L, Bl, P] with L in {1, T}, Bl in {1, B}.
// The Python wrapper brings [T, B, C, H, W] inputs and every label form to these.
inline FusedArgs prepare_fused(const at::Tensor& x, const at::Tensor& labels, int64_t K, c10::string_view mode) {
  check_float_input(x, "x");
  TORCH_CHECK(x.dim() == 4, "x must be [T, B, C, P] (the op's flattened form), got ", x.sizes());
  FusedArgs a = prepare_fused_sizes(x.size(0), x.size(1), x.size(2), x.size(3), x.device(), labels, K, mode);
  a.x = x.contiguous();
  return a;
}

// The backward's view of the shapes: x [T, B, C, P], the forward's input (the backward
// recomputes the neuron from it), grad_y [T, B, C, K] of x's dtype.
inline FusedArgs prepare_fused_backward(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& labels,
                                        c10::string_view mode) {
  check_float_input(grad_y, "grad_y");
  TORCH_CHECK(grad_y.dim() == 4, "grad_y must be [T, B, C, K], got ", grad_y.sizes());
  FusedArgs a = prepare_fused(x, labels, grad_y.size(3), mode);
  TORCH_CHECK_TYPE(grad_y.scalar_type() == x.scalar_type(), "grad_y must have the dtype of x (",
                   dtype_name(x.scalar_type()), "), got ", dtype_name(grad_y.scalar_type()));
  return a;
}

inline at::Tensor fused_output(const FusedArgs& a) {
  return at::empty({a.T, a.B, a.C, a.K}, a.x.options());
}

// a from prepare_fused_backward.
inline void check_fused_backward(const at::Tensor& grad_y, const at::Tensor& counts, const at::Tensor& argmax,
                                 const FusedArgs& a) {
  TORCH_CHECK(grad_y.sizes() == at::IntArrayRef({a.T, a.B, a.C, a.K}), "grad_y must be [T, B, C, K] = [", a.T,
              ", ", a.B, ", ", a.C, ", ", a.K, "] (the sizes of x and num_superpixels), got ", grad_y.sizes());
  TORCH_CHECK(counts.scalar_type() == at::kInt && counts.sizes() == at::IntArrayRef({a.layout.L, a.layout.Bl, a.K}),
              "counts must be int32 [L, Bl, K], got ", counts.scalar_type(), " ", counts.sizes());
  if (a.mode == PoolMode::Max) {
    TORCH_CHECK(argmax.scalar_type() == at::kInt && argmax.sizes() == at::IntArrayRef({a.T, a.B, a.C, a.K}),
                "argmax must be int32 [T, B, C, K] for mode 'max', got ", argmax.scalar_type(), " ",
                argmax.sizes());
  }
  for (const auto* t : {&a.x, &counts, &argmax}) {
    TORCH_CHECK(t->device() == grad_y.device(), "all tensors must be on grad_y's device ", grad_y.device());
  }
}

}  // namespace snnspx
