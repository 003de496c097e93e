// Launchers of the window pooling kernels (pool2d.cu) for the CUDA glue (pool2d.cpp). Light
// on purpose: no ATen, so nvcc never parses torch headers.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "launch.h"

namespace snnspx {
namespace cuda {

// x: P contiguous planes of H x W; windows kh x kw with stride (kh, kw), OH = H / kh,
// OW = W / kw (floor mode), at most 2^24 pixels each. y: [P, OH, OW] of `dtype`, as x. Each
// window is summed in float (double for Double) in row-major order from 0, divided by kh * kw
// and rounded once. count: [P, OH, OW], each window's non-zero inputs (NaN counts, -0 does
// not), int32_t where count_int32, else uint8_t.
void spike_avg_pool2d_forward(DType dtype, const void* x, void* y, void* count, bool count_int32, int64_t P, int64_t H,
                              int64_t W, int64_t kh, int64_t kw, cudaStream_t stream);

// grad_y: [P, OH, OW] and grad_x: [P, H, W] of `dtype`, count: [P, OH, OW] as the forward
// writes it. Every pixel of a window gets grad_y / n (n its count, the division in float,
// double for Double, rounded once), 0 where n = 0 and in the rows and columns that no window
// covers.
void spike_avg_pool2d_backward(DType dtype, const void* grad_y, const void* count, bool count_int32, void* grad_x,
                               int64_t P, int64_t H, int64_t W, int64_t kh, int64_t kw, cudaStream_t stream);

}  // namespace cuda
}  // namespace snnspx
