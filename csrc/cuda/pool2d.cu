// CUDA kernels of the spike-count window pooling (snnspx/functional/pool2d.py). Forward: one
// thread per output value, which sums its window and counts its non-zero inputs. Backward: one
// thread per window of the ceil-mode grid, so that every input pixel is written by exactly one
// thread: a full window writes its share g / n (n its stored count) to its kh x kw pixels, a
// partial one (the rows and columns that no floor-mode window covers) zeros; no input is read.
// Grid-stride loops: any number of planes fits the grid. Divisions and additions are the
// correctly rounded intrinsics, so the values equal the CPU kernels' bit for bit.
#include <cstdint>

#include "common.cuh"
#include "pool2d_launch.h"

namespace snnspx {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = int64_t(1) << 20;

__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double add_rn(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ float div_rn(float a, float b) { return __fdiv_rn(a, b); }
__device__ __forceinline__ double div_rn(double a, double b) { return __ddiv_rn(a, b); }

// cnt_t: uint8_t or int32_t (pool2d_launch.h); a window has at most 2^24 pixels (checked).
template <typename scalar_t, typename acc_t, typename cnt_t>
__global__ void __launch_bounds__(kThreads)
pool2d_forward_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ y, cnt_t* __restrict__ count, int64_t P,
                      int64_t H, int64_t W, int64_t kh, int64_t kw, int64_t OH, int64_t OW) {
  const int64_t total = P * OH * OW;
  const acc_t div = static_cast<acc_t>(kh * kw);
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; k < total;
       k += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t ow = k % OW;
    const int64_t oh = (k / OW) % OH;
    const int64_t p = k / (OW * OH);
    const scalar_t* win = x + (p * H + oh * kh) * W + ow * kw;
    acc_t sum = acc_t(0);
    int32_t n = 0;
    for (int64_t i = 0; i < kh; ++i) {
      for (int64_t j = 0; j < kw; ++j) {
        const acc_t v = to_acc<acc_t>(win[i * W + j]);
        sum = add_rn(sum, v);
        n += v != acc_t(0) ? 1 : 0;  // NaN counts, -0 does not
      }
    }
    y[k] = from_acc<scalar_t, acc_t>(div_rn(sum, div));
    count[k] = static_cast<cnt_t>(n);
  }
}

template <typename scalar_t, typename acc_t, typename cnt_t>
__global__ void __launch_bounds__(kThreads)
pool2d_backward_kernel(const scalar_t* __restrict__ g, const cnt_t* __restrict__ count, scalar_t* __restrict__ gx,
                       int64_t P, int64_t H, int64_t W, int64_t kh, int64_t kw, int64_t OH, int64_t OW) {
  // The ceil-mode grid: windows (oh, ow) with oh >= OH or ow >= OW are the partial ones.
  const int64_t CH = (H + kh - 1) / kh, CW = (W + kw - 1) / kw;
  const int64_t total = P * CH * CW;
  const scalar_t zero = from_acc<scalar_t, acc_t>(acc_t(0));
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; k < total;
       k += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t ow = k % CW;
    const int64_t oh = (k / CW) % CH;
    const int64_t p = k / (CW * CH);
    const int64_t base = (p * H + oh * kh) * W + ow * kw;
    if (oh < OH && ow < OW) {
      const int64_t w = (p * OH + oh) * OW + ow;
      const int64_t n = static_cast<int64_t>(count[w]);
      const acc_t gv = to_acc<acc_t>(g[w]);
      const scalar_t v = from_acc<scalar_t, acc_t>(n > 0 ? div_rn(gv, static_cast<acc_t>(n)) : acc_t(0));
      for (int64_t i = 0; i < kh; ++i) {
        for (int64_t j = 0; j < kw; ++j) gx[base + i * W + j] = v;
      }
    } else {
      const int64_t rows = min(kh, H - oh * kh), cols = min(kw, W - ow * kw);
      for (int64_t i = 0; i < rows; ++i) {
        for (int64_t j = 0; j < cols; ++j) gx[base + i * W + j] = zero;
      }
    }
  }
}

inline unsigned int blocks_for(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned int>(b < kMaxBlocks ? b : kMaxBlocks);
}

}  // namespace

// Calls f with a tag of the count type.
template <typename F>
void with_count(bool count_int32, F&& f) {
  if (count_int32) {
    f(int32_t{});
  } else {
    f(uint8_t{});
  }
}

void spike_avg_pool2d_forward(DType dtype, const void* x, void* y, void* count, bool count_int32, int64_t P, int64_t H,
                              int64_t W, int64_t kh, int64_t kw, cudaStream_t stream) {
  const int64_t OH = H / kh, OW = W / kw, total = P * OH * OW;
  if (total == 0) return;
  with_scalar(dtype, [&](auto tag) {
    using scalar_t = typename decltype(tag)::type;
    using acc_t = typename Acc<scalar_t>::type;
    with_count(count_int32, [&](auto cnt_tag) {
      using cnt_t = decltype(cnt_tag);
      pool2d_forward_kernel<scalar_t, acc_t, cnt_t><<<blocks_for(total), kThreads, 0, stream>>>(
          static_cast<const scalar_t*>(x), static_cast<scalar_t*>(y), static_cast<cnt_t*>(count), P, H, W, kh, kw, OH,
          OW);
    });
  });
}

void spike_avg_pool2d_backward(DType dtype, const void* grad_y, const void* count, bool count_int32, void* grad_x,
                               int64_t P, int64_t H, int64_t W, int64_t kh, int64_t kw, cudaStream_t stream) {
  const int64_t total = P * ((H + kh - 1) / kh) * ((W + kw - 1) / kw);
  if (total == 0) return;
  with_scalar(dtype, [&](auto tag) {
    using scalar_t = typename decltype(tag)::type;
    using acc_t = typename Acc<scalar_t>::type;
    with_count(count_int32, [&](auto cnt_tag) {
      using cnt_t = decltype(cnt_tag);
      pool2d_backward_kernel<scalar_t, acc_t, cnt_t><<<blocks_for(total), kThreads, 0, stream>>>(
          static_cast<const scalar_t*>(grad_y), static_cast<const cnt_t*>(count), static_cast<scalar_t*>(grad_x), P,
          H, W, kh, kw, H / kh, W / kw);
    });
  });
}

}  // namespace cuda
}  // namespace snnspx
