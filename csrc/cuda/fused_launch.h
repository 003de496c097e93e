// Launchers of the fused SRM + superpixel pooling kernels (fused_forward.cu,
// fused_backward.cu), for the CUDA glue (fused.cpp, strategy.cpp). No ATen here.
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
  PoolMode mode;  // Sum, Avg or Max
};

// The forward kernels (fused_forward.cu says how each works); all give the same bits.
//   Atomic: any shape; global integer atomics and a finishing kernel.
//   Plane:  per-block shared-memory histograms of T * K counts (twice that for max in
//           training), within 48 KiB.
//   Quad:   inference of float32/float16/bfloat16 with one label map per image (L == 1),
//           P % 4 == 0, x and labels aligned to 4 elements, T, B * C, K > 0, and planes
//           that the plane kernel would not split.
enum class FusedKernel : int { Atomic = 0, Plane = 1, Quad = 2 };

// Whether `kernel` can run this forward (training: the srm_suppix_pool_fwd form, which
// writes the argmax for "max").
bool fused_forward_applies(FusedKernel kernel, DType dtype, LabelType lt, const void* x, const void* labels,
                           const FusedShape& s, bool training);

// y [T, B, C, K] of `dtype` by `kernel`. counts: int32 [L, Bl, K] pixels per superpixel.
// scratch_count: int32 [T, B, C, K] (scratch_first another for "max" when argmax !=
// nullptr). argmax: int32 [T, B, C, K] (training, "max") or nullptr. Nothing per
// neuron-step is written: the backward recomputes the neuron from x. False, having done
// nothing, where `kernel` does not apply (fused_forward_applies).
bool fused_forward(DType dtype, LabelType lt, const void* x, const void* labels, const int32_t* counts, void* y,
                   int32_t* argmax, int32_t* scratch_count, int32_t* scratch_first, const FusedShape& s,
                   double tau_m, double tau_s, double tau_grad, double v_th, FusedKernel kernel,
                   cudaStream_t stream);

// The backward kernels: one thread per neuron walks the steps backwards, 4 at a time.
//   PerSpike: loads per spike what it needs (dut factor, dL/dy, argmax, count); any labels.
//   Batched:  one label map for all steps (L == 1): reads the pixel's superpixel and size
//             once, and each chunk's loads in one batch. Same values.
enum class FusedBackwardKernel : int { PerSpike = 0, Batched = 1 };

// grad_x [T, B, C, P] from grad_y [T, B, C, K]; saved: [2, T, B, C, P] accumulation type,
// the neuron's factors (srm_forward's packed form in launch.h, recomputed from x by the
// glue); tables: the SRM kernel tables (see srm_backward in launch.h).
void fused_backward(DType dtype, LabelType lt, const void* grad_y, const void* saved, const void* labels,
                    const int32_t* counts, const int32_t* argmax, const void* tables, void* grad_x,
                    const FusedShape& s, FusedBackwardKernel kernel, cudaStream_t stream);

}  // namespace cuda
}  // namespace snnspx
