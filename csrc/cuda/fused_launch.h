// Launchers of the fused SRM + superpixel pooling kernels (fused.cu), for the
// CUDA glue (fused.cpp). No ATen here.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "../fused_core.h"
#include "launch.h"

namespace snnspx {
namespace cuda {

enum class LabelType : int { Int32 = 0, Int64 = 1 };

struct FusedShape {
  int64_t T, B, C, P, K;
  LabelLayout layout;
  PoolMode mode;
};

// counts[L, LB, K] (int32) = pixels per superpixel of each label map; labels >= K
// or < 0 are not counted.
void count_labels(LabelType lt, const void* labels, int32_t* counts, const FusedShape& s, cudaStream_t stream);

// y [T, B, C, K] of `dtype`. scratch: int32 [T, B, C, K] (and another for "max"
// when argmax != nullptr). saved: [2, T, B, C, P] accumulation type, or nullptr
// for inference. argmax: int32 [T, B, C, K] or nullptr.
// plane_kernel: use the experimental plane kernel (per-block shared-memory
// histograms) where its histograms fit 48 KB of shared memory; the default
// kernel otherwise. The glue sets it from SNNSPX_EXPERIMENTAL_CUDA. *plane_ran
// (when not null) says whether the plane kernel was launched.

void fused_forward(DType dtype, LabelType lt, const void* x, const void* labels, const int32_t* counts, void* y,
                   void* saved, int32_t* argmax, int32_t* scratch_count, int32_t* scratch_first,
                   const FusedShape& s, double tau_m, double tau_s, double tau_grad, double v_th,
                   double du_inv_clamp, double max_dudt_inv, bool plane_kernel, bool* plane_ran,
                   cudaStream_t stream);

// grad_x [T, B, C, P] from grad_y [T, B, C, K]; tables: workspace of 2*T
// accumulation-type elements.
void fused_backward(DType dtype, LabelType lt, const void* grad_y, const void* saved, const void* labels,
                    const int32_t* counts, const int32_t* argmax, void* tables, void* grad_x, const FusedShape& s,
                    double tau_m, double tau_s, double tau_grad, cudaStream_t stream);

}  // namespace cuda
}  // namespace snnspx
