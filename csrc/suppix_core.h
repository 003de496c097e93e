// Superpixel pooling pieces shared by the CPU and CUDA kernels (docs/maths.md §5).
//
// Host-and-device inline functions only: no ATen, no CUDA runtime, so the .cu
// files can include this without parsing torch headers.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define SNNSPX_SP_HD __host__ __device__ __forceinline__
#else
#define SNNSPX_SP_HD inline
#endif

namespace snnspx {

// What a pooling kernel computes, and what it writes to its int32 `aux` output:
//   Sum, Avg:  y = sum (Avg: / n, 0 where n = 0);   aux = n[L, Bl, K] (written by the glue)
//   Max:       y = max (0 where n = 0);              aux = argmax[T, B, C, K], -1 where n = 0
//   AvgSpike:  y as Avg;                             aux = m[T, B, C, K], non-zero inputs per superpixel
// The backward/gather kernels read the same codes: Sum -> g[label(p)], Avg -> g / n,
// AvgSpike -> g / m, Max -> g to the argmax pixel only.
enum class SupPixMode : int { Sum = 0, Avg = 1, Max = 2, AvgSpike = 3 };

// "No pixel yet" marker of the max reductions: larger than any pixel index.
constexpr int32_t kNoPixel = 0x7fffffff;

// The max reduction's total order on (value, pixel): NaN above everything (it
// propagates, as in torch.amax), and among equal values (or two NaNs) the lower
// pixel index wins. True when (v1, i1) is preferred to (v2, i2). An empty slot
// is (-inf, kNoPixel), so any real pixel, even -inf, is preferred to it.
template <typename acc_t>
SNNSPX_SP_HD bool max_prefer(acc_t v1, int32_t i1, acc_t v2, int32_t i2) {
  const bool n1 = v1 != v1, n2 = v2 != v2;
  if (n1) return !n2 || i1 < i2;
  if (n2) return false;
  return v1 > v2 || (v1 == v2 && i1 < i2);
}

// A pixel's label as a superpixel index in [0, K), or -1 when it is pooled
// nowhere (negative label; a label >= K only reaches a kernel when the caller
// skipped the range check, and is then ignored the same way: never out of bounds).
template <typename label_t>
SNNSPX_SP_HD int64_t superpixel_of(label_t label, int64_t K) {
  const int64_t k = static_cast<int64_t>(label);
  return (k >= 0 && k < K) ? k : int64_t(-1);
}

// The CPU kernels' accumulator slot of a pixel: its superpixel, or the dummy slot
// K (never read) for a pixel pooled nowhere, so their inner loops need no test.
template <typename label_t>
SNNSPX_SP_HD int32_t superpixel_slot(label_t label, int64_t K) {
  const int64_t k = superpixel_of(label, K);
  return static_cast<int32_t>(k < 0 ? K : k);
}

}  // namespace snnspx
