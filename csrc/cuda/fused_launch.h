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
// The forward kernels, fastest first where they apply (all give the same bits):
// Quad (inference, one label map per image, P % 4 == 0, aligned), Plane (per-block
// shared-memory histograms of T * K counts within 48 KB), Atomic (any shape; global
// integer atomics and a finishing kernel). legacy (SNNSPX_LEGACY_CUDA=1, set by the
// glue) runs Atomic always. *ran says which kernel counted the spikes.
enum class FusedKernel : int { Atomic = 0, Plane = 1, Quad = 2 };
void fused_forward(DType dtype, LabelType lt, const void* x, const void* labels, const int32_t* counts, void* y,
                   void* saved, int32_t* argmax, int32_t* scratch_count, int32_t* scratch_first,
                   const FusedShape& s, double tau_m, double tau_s, double tau_grad, double v_th,
                   double du_inv_clamp, double max_dudt_inv, bool legacy, FusedKernel* ran, cudaStream_t stream);

// grad_x [T, B, C, P] from grad_y [T, B, C, K]; tables: the SRM kernel tables (see
// srm_backward in launch.h). legacy: load per spike what it needs (the earlier kernel)
// also with one label map for all steps; same values.
void fused_backward(DType dtype, LabelType lt, const void* grad_y, const void* saved, const void* labels,
                    const int32_t* counts, const int32_t* argmax, const void* tables, void* grad_x,
                    const FusedShape& s, bool legacy, cudaStream_t stream);

}  // namespace cuda
}  // namespace snnspx
