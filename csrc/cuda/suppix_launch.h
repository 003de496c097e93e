// Launchers of the superpixel kernels (suppix.cu) for the CUDA glue (suppix.cpp).
// Light on purpose: no ATen, so nvcc never parses torch headers.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "../suppix_core.h"
#include "launch.h"

namespace snnspx {
namespace cuda {

// Shapes of one call: x/grad_x [T, B, C, P], y/grad_y [T, B, C, K], label maps [L, Bl, P]
// with L in {1, T} and Bl in {1, B}.
struct SupPixShape {
  int64_t T, B, C, P, K, L, Bl;
};

// Segment reduction. order: int32 [L, Bl, P], each label map's pixel indices stably
// sorted by label (so ascending within a superpixel); offsets: int32 [L, Bl, K + 1],
// superpixel k of a map is order[offsets[k] .. offsets[k + 1]). One warp reduces one
// (t, b, c, k) segment with a fixed lane assignment and a fixed shuffle tree: the
// same bits on every run, no atomics.
// y: [T, B, C, K] of `dtype`; aux: int32 [T, B, C, K] for Max (argmax) and AvgSpike (m),
// unused (may be null) for Sum and Avg.
void suppix_pool(DType dtype, SupPixMode mode, const void* x, const int32_t* order, const int32_t* offsets,
                 void* y, int32_t* aux, const SupPixShape& s, cudaStream_t stream);

// out[t, b, c, p] = f(src[t, b, c, labels[p]]), 0 where the label is outside [0, K):
// Sum: the value; Avg: / aux[l, b, k] (counts [L, Bl, K]); AvgSpike: / aux[t, b, c, k];
// Max: the value where aux[t, b, c, k] == p, else 0. Labels are int64 when labels64.
// Serves the pooling backward and unpooling. One write per output element.
void suppix_gather(DType dtype, SupPixMode mode, const void* src, const void* labels, bool labels64,
                   const int32_t* aux, void* out, const SupPixShape& s, cudaStream_t stream);

}  // namespace cuda
}  // namespace snnspx
