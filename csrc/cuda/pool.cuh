// Pieces shared by the superpixel kernel files (pool_*.cu, gather.cu, count.cu).
#pragma once

#include <algorithm>
#include <cstdint>

#include "common.cuh"
#include "suppix_launch.h"

namespace snnspx {
namespace cuda {

constexpr int kPoolThreads = 256;
constexpr int kPoolWarps = kPoolThreads / 32;
constexpr int64_t kMaxGridBlocks = int64_t(1) << 30;
// No-sort pooling ("nosort", "nosort_quad"): at most kPoolWarps warps per block, one per
// kNoSortRun pixels; fewer warps for small planes. Its rows must fit the default dynamic
// shared memory.
constexpr int kNoSortUnroll = 4;
constexpr int64_t kNoSortRun = 32 * kNoSortUnroll;
constexpr int64_t kNoSortMaxSmem = 48 * 1024;

template <typename acc_t> __device__ __forceinline__ acc_t neg_inf();
template <> __device__ __forceinline__ float neg_inf<float>() { return -__int_as_float(0x7f800000); }
template <> __device__ __forceinline__ double neg_inf<double>() {
  return -__longlong_as_double(0x7ff0000000000000LL);
}

extern __shared__ __align__(16) unsigned char suppix_smem[];

// Warps per block of the no-sort kernels for a plane of P pixels.
inline int nosort_warps(int64_t P) {
  return static_cast<int>(std::min<int64_t>(kPoolWarps, std::max<int64_t>(1, (P + kNoSortRun - 1) / kNoSortRun)));
}

inline int64_t nosort_smem_bytes(int64_t acc_bytes, PoolMode mode, int64_t P, int64_t K) {
  const bool idx = mode == PoolMode::Max || mode == PoolMode::AvgSpike;
  return int64_t(nosort_warps(P)) * K * (acc_bytes + (idx ? int64_t(sizeof(int32_t)) : 0));
}

}  // namespace cuda
}  // namespace snnspx
