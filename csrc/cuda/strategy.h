// Kernel choice of the CUDA superpixel and fused ops: one function per op picks a
// strategy from the inputs (shape, dtype, alignment; see ../strategy.h for the `strategy`
// argument), and one function per op says why a strategy does not apply (nullptr: it
// does). Host code without ATen.
//
// A default is a strategy whose kernels have passed benchmarks/gpu_check.sh on a GPU.
// "nosort_quad", "max_key" and "tiled_reuse" have not yet: they run only when named.
#pragma once

#include <cstdint>

#include "../strategy.h"
#include "fused_launch.h"
#include "suppix_launch.h"

namespace snnspx {
namespace cuda {

// suppix_pool: "sorted" (per-call sort of each label map, a warp per superpixel),
// "nosort" (warp rows in shared memory, one pixel a lane), "nosort_quad" (the same rows,
// 4 pixels a lane; not max), "max_key" (max of float32/float16/bfloat16 by 64-bit keys).
enum class PoolStrategy : int { Sorted = 0, NoSort = 1, NoSortQuad = 2, MaxKey = 3 };
constexpr StrategyNames<4> kPoolStrategies{"sorted", "nosort", "nosort_quad", "max_key"};
const char* pool_rejects(PoolStrategy strategy, DType dtype, PoolMode mode, const SupPixShape& s);
// "nosort" where its rows fit 48 KiB of shared memory, else "sorted".
PoolStrategy suppix_pool_strategy(DType dtype, PoolMode mode, const SupPixShape& s);

// suppix_pool_backward and suppix_unpool, named in GatherKernel's order.
constexpr StrategyNames<3> kGatherStrategies{"one_pixel", "tiled", "tiled_reuse"};
const char* gather_rejects(GatherKernel kernel, const SupPixShape& s, bool labels_aligned, bool out_aligned);
// "tiled" where H * W % 4 == 0 and labels and output are aligned to 4 elements, else "one_pixel".
GatherKernel suppix_gather_strategy(const SupPixShape& s, bool labels_aligned, bool out_aligned);

// srm_suppix_pool (training = false) and srm_suppix_pool_fwd (training = true), named in
// FusedKernel's order.
constexpr StrategyNames<3> kFusedForwardStrategies{"atomic", "plane", "quad"};
const char* fused_forward_rejects(FusedKernel kernel, DType dtype, LabelType lt, const void* x, const void* labels,
                                  const FusedShape& s, bool training);
// The first of "quad", "plane", "atomic" that applies.
FusedKernel srm_suppix_pool_strategy(DType dtype, LabelType lt, const void* x, const void* labels,
                                     const FusedShape& s, bool training);

// srm_suppix_pool_bwd, named in FusedBackwardKernel's order.
constexpr StrategyNames<2> kFusedBackwardStrategies{"per_spike", "batched"};
const char* fused_backward_rejects(FusedBackwardKernel kernel, const FusedShape& s);
// "batched" with one label map for all steps, else "per_spike".
FusedBackwardKernel srm_suppix_pool_bwd_strategy(const FusedShape& s);

}  // namespace cuda
}  // namespace snnspx
