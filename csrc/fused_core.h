// Fused SRM + superpixel pooling (docs/maths.md §6): the pieces shared by the CPU and
// CUDA kernels. Host-and-device inline code only (see srm_core.h).
//
// Spikes are 0 or 1, so a superpixel's pooled spikes at one step follow from an
// integer count: sum = count, avg = count / n (0 for an empty superpixel),
// max = (count > 0). Integer counts are exact in any order, which is what makes
// the fused kernels deterministic without sorting pixels.
#pragma once

#include <cstdint>

#include "srm_core.h"
#include "suppix_core.h"

namespace snnspx {

// y[t, b, c, k] from the spike count of that superpixel and its pixel count n.
template <typename acc_t>
SNNSPX_HD acc_t pooled_from_count(PoolMode mode, int32_t count, int32_t n) {
  switch (mode) {
    case PoolMode::Sum: return static_cast<acc_t>(count);
    case PoolMode::Avg: return n > 0 ? static_cast<acc_t>(count) / static_cast<acc_t>(n) : acc_t(0);
    default: return count > 0 ? acc_t(1) : acc_t(0);
  }
}

// dL/dspike of pixel p from g = dL/dy[t, b, c, k] (docs/maths.md §5's backward): sum
// passes g, avg g / n, max g to the argmax pixel (the lowest spiking pixel index)
// only. Pixels with negative labels get 0.
template <typename acc_t>
SNNSPX_HD acc_t pooled_grad(PoolMode mode, acc_t g, int32_t n, int32_t argmax, int32_t p) {
  switch (mode) {
    case PoolMode::Sum: return g;
    case PoolMode::Avg: return n > 0 ? g / static_cast<acc_t>(n) : acc_t(0);
    default: return argmax == p ? g : acc_t(0);
  }
}

}  // namespace snnspx
