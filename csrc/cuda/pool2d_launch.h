// Launchers of the window pooling kernels (pool2d.cu) for the CUDA glue (pool2d.cpp). Light
// on purpose: no ATen, so nvcc never parses torch headers.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "launch.h"

namespace snnspx {
namespace cuda {

// x: P contiguous planes of H x W; windows kh x kw with stride (kh, kw), OH = H / kh,
// OW = W / kw (floor mode). y: [P, OH, OW], both of `dtype`. Each window is summed in float
// (double for Double) in row-major order from 0, divided by kh * kw and rounded once.
void spike_avg_pool2d_forward(DType dtype, const void* x, void* y, int64_t P, int64_t H, int64_t W, int64_t kh,
                              int64_t kw, cudaStream_t stream);

// grad_y: [P, OH, OW], x and grad_x: [P, H, W], all of `dtype`. Every pixel of a window gets
// grad_y / n (n its window's non-zero inputs, the division in float, double for Double, rounded
// once), 0 where n = 0 and in the rows and columns that no window covers.
void spike_avg_pool2d_backward(DType dtype, const void* grad_y, const void* x, void* grad_x, int64_t P, int64_t H,
                               int64_t W, int64_t kh, int64_t kw, cudaStream_t stream);

}  // namespace cuda
}  // namespace snnspx
