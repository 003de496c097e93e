// Pieces shared by the fused SRM + superpixel pooling kernel files (fused_*.cu).
#pragma once

#include <cstdint>

#include "../fused_core.h"
#include "common.cuh"
#include "fused_launch.h"

namespace snnspx {
namespace cuda {

constexpr int kThreads = 256;
// Steps whose loads a thread issues before it uses the first.
constexpr int kAhead = 4;

inline unsigned int blocks_for(int64_t n) { return static_cast<unsigned int>((n + kThreads - 1) / kThreads); }

}  // namespace cuda
}  // namespace snnspx
