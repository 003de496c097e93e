// Superpixel pooling pieces shared by the CPU and CUDA kernels, of both pooling and the
// fused SRM + pooling op (docs/maths.md §5, §6).
//
// Host-and-device inline functions only: no ATen, no CUDA runtime, so the .cu
// files can include this without parsing torch headers.
#pragma once

#include <cstdint>
#include <type_traits>

#include "host_device.h"

namespace snnspx {

// The pooling mode of every superpixel op, and what a pooling kernel writes to its
// int32 `aux` output:
//   Sum, Avg:  y = sum (Avg: / n, 0 where n = 0);   aux = n[L, Bl, K]
//   Max:       y = max (0 where n = 0);              aux = argmax[T, B, C, K], -1 where n = 0
//   AvgSpike:  y as Avg;                             aux = m[T, B, C, K], non-zero inputs per superpixel
// The backward/gather kernels read the same codes: Sum -> g[label(p)], Avg -> g / n,
// AvgSpike -> g / m, Max -> g to the argmax pixel only. The fused op takes Sum, Avg
// and Max (its spikes are 0 or 1, so AvgSpike would equal Avg).
enum class PoolMode : int { Sum = 0, Avg = 1, Max = 2, AvgSpike = 3 };

// f(std::integral_constant<PoolMode, mode>{}) for a run-time mode: the one switch of the
// host code that instantiates a kernel per mode.
template <typename F>
decltype(auto) with_pool_mode(PoolMode mode, F&& f) {
  switch (mode) {
    case PoolMode::Sum: return f(std::integral_constant<PoolMode, PoolMode::Sum>{});
    case PoolMode::Avg: return f(std::integral_constant<PoolMode, PoolMode::Avg>{});
    case PoolMode::Max: return f(std::integral_constant<PoolMode, PoolMode::Max>{});
    case PoolMode::AvgSpike: break;
  }
  return f(std::integral_constant<PoolMode, PoolMode::AvgSpike>{});
}

// The label maps of a call, [L, Bl, P]: L = 1 (one map for all steps) or T, Bl = 1
// (one map for the batch) or B, P pixels each.
struct LabelLayout {
  int64_t L, Bl, P;
  // The index of the map that step t of image b reads.
  SNNSPX_HD int64_t map(int64_t t, int64_t b) const { return (L == 1 ? 0 : t) * Bl + (Bl == 1 ? 0 : b); }
  // Offset of that map's first label in the contiguous [L, Bl, P] labels.
  SNNSPX_HD int64_t offset(int64_t t, int64_t b) const { return map(t, b) * P; }
  // Offset of that map's row in the contiguous counts [L, Bl, K].
  SNNSPX_HD int64_t count_row(int64_t t, int64_t b, int64_t K) const { return map(t, b) * K; }
  SNNSPX_HD int64_t maps() const { return L * Bl; }
};

// "No pixel yet" marker of the max reductions: larger than any pixel index.
constexpr int32_t kNoPixel = 0x7fffffff;

// The max reduction's total order on (value, pixel): NaN above everything (it
// propagates, as in torch.amax), and among equal values (or two NaNs) the lower
// pixel index wins. True when (v1, i1) is preferred to (v2, i2). An empty slot
// is (-inf, kNoPixel), so any real pixel, even -inf, is preferred to it.
template <typename acc_t>
SNNSPX_HD bool max_prefer(acc_t v1, int32_t i1, acc_t v2, int32_t i2) {
  const bool n1 = v1 != v1, n2 = v2 != v2;
  if (n1) return !n2 || i1 < i2;
  if (n2) return false;
  return v1 > v2 || (v1 == v2 && i1 < i2);
}

// A pixel's label as a superpixel index in [0, K), or -1 when it is pooled
// nowhere (negative label; a label >= K only reaches a kernel when the caller
// skipped the range check, and is then ignored the same way: never out of bounds).
template <typename label_t>
SNNSPX_HD int64_t superpixel_of(label_t label, int64_t K) {
  const int64_t k = static_cast<int64_t>(label);
  return (k >= 0 && k < K) ? k : int64_t(-1);
}

// The CPU kernels' accumulator slot of a pixel: its superpixel, or the dummy slot
// K (never read) for a pixel pooled nowhere, so their inner loops need no test.
template <typename label_t>
SNNSPX_HD int32_t superpixel_slot(label_t label, int64_t K) {
  const int64_t k = superpixel_of(label, K);
  return static_cast<int32_t>(k < 0 ? K : k);
}

}  // namespace snnspx
