// Kernel choice of the CPU superpixel and fused ops: one function per op picks a strategy
// from the inputs and the CPU's instructions (see ../strategy.h for the `strategy`
// argument). Every default here is what CI runs.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#include "../strategy.h"
#include "../suppix_core.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define SNNSPX_CPU_X86 1
#endif

namespace snnspx {
namespace cpu {

// Channels of one AVX2 pooling group (8 float32 lanes).
constexpr int64_t kGroup = 8;
// Largest K whose table the AVX-512 lookup keeps in registers.
constexpr int64_t kLookupMaxK = 256;

inline bool has_avx2() {
#ifdef SNNSPX_CPU_X86
  static const bool has = __builtin_cpu_supports("avx2");
  return has;
#else
  return false;
#endif
}

inline bool has_avx512() {
#ifdef SNNSPX_CPU_X86
  static const bool has = __builtin_cpu_supports("avx512f");
  return has;
#else
  return false;
#endif
}

// suppix_pool: "scalar" (one plane at a time) or "avx2" (float32, 8 channels of a label
// map at once; channels beyond the last group of 8 take the scalar loop).
enum class PoolStrategy : int { Scalar = 0, Avx2 = 1 };
constexpr StrategyNames<2> kPoolStrategies{"scalar", "avx2"};

inline const char* pool_rejects(PoolStrategy s, at::ScalarType dtype, int64_t C, int64_t P) {
  if (s == PoolStrategy::Scalar) return nullptr;
  if (!has_avx2()) return "needs a CPU with AVX2";
  if (dtype != at::kFloat) return "needs float32";
  if (C < kGroup || P == 0) return "needs at least 8 channels and a pixel";
  return nullptr;
}

inline PoolStrategy suppix_pool_strategy(at::ScalarType dtype, int64_t C, int64_t P) {
  return pool_rejects(PoolStrategy::Avx2, dtype, C, P) == nullptr ? PoolStrategy::Avx2 : PoolStrategy::Scalar;
}

// The gathers (suppix_pool_backward, suppix_unpool): "scalar" or "avx512" (a float32
// table lookup in registers for 0 < K <= 256; not mode max, which writes one pixel per
// superpixel).
enum class GatherStrategy : int { Scalar = 0, Avx512 = 1 };
constexpr StrategyNames<2> kGatherStrategies{"scalar", "avx512"};

inline const char* gather_rejects(GatherStrategy s, at::ScalarType dtype, PoolMode mode, int64_t K) {
  if (s == GatherStrategy::Scalar) return nullptr;
  if (!has_avx512()) return "needs a CPU with AVX-512F";
  if (dtype != at::kFloat) return "needs float32";
  if (mode == PoolMode::Max) return "not for mode max";
  if (K <= 0 || K > kLookupMaxK) return "needs 0 < K <= 256";
  return nullptr;
}

inline GatherStrategy suppix_gather_strategy(at::ScalarType dtype, PoolMode mode, int64_t K) {
  return gather_rejects(GatherStrategy::Avx512, dtype, mode, K) == nullptr ? GatherStrategy::Avx512
                                                                           : GatherStrategy::Scalar;
}

// The fused ops (srm_suppix_pool, srm_suppix_pool_fwd, srm_suppix_pool_bwd) have one CPU kernel each.
enum class FusedStrategy : int { Scalar = 0 };
constexpr StrategyNames<1> kFusedStrategies{"scalar"};

inline const char* fused_rejects(FusedStrategy) { return nullptr; }
inline FusedStrategy srm_suppix_pool_strategy() { return FusedStrategy::Scalar; }

}  // namespace cpu
}  // namespace snnspx
