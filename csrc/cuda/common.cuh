// Device helpers shared by the CUDA kernel files: the launchers' type dispatch, the
// accumulation type, the element conversions (half/bfloat16 through intrinsics, since
// PyTorch builds with __CUDA_NO_HALF_CONVERSIONS__) and vector access (Quad).
// Light on purpose: CUDA headers, ../srm_core.h and launch.h only.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "../srm_core.h"
#include "launch.h"

namespace snnspx {
namespace cuda {

// The launchers' run-time dispatch: f(Tag<T>{}) with T the element type of `dtype` (float,
// double, __half, __nv_bfloat16) or of the labels (int64_t, int32_t); f reads the type
// as typename decltype(tag)::type.
template <typename T>
struct Tag {
  using type = T;
};

template <typename F>
decltype(auto) with_scalar(DType dtype, F&& f) {
  switch (dtype) {
    case DType::Double: return f(Tag<double>{});
    case DType::Half: return f(Tag<__half>{});
    case DType::BFloat16: return f(Tag<__nv_bfloat16>{});
    case DType::Float: break;
  }
  return f(Tag<float>{});
}

template <typename F>
decltype(auto) with_label(bool labels64, F&& f) {
  if (labels64) return f(Tag<int64_t>{});
  return f(Tag<int32_t>{});
}

template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

template <typename acc_t, typename scalar_t>
__device__ __forceinline__ acc_t to_acc(scalar_t v) { return static_cast<acc_t>(v); }
template <> __device__ __forceinline__ float to_acc<float, __half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_acc<float, __nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ scalar_t from_acc(acc_t v) { return static_cast<scalar_t>(v); }
template <> __device__ __forceinline__ __half from_acc<__half, float>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16, float>(float v) {
  return __float2bfloat16_rn(v);
}

// Four consecutive elements, for one vector load or store (16 bytes for float and
// int32). A pointer to one must be aligned to its size (quad_aligned).
template <typename T>
struct alignas(4 * sizeof(T)) Quad {
  T v[4];
};

template <typename T>
inline bool quad_aligned(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % sizeof(Quad<T>) == 0;
}

constexpr unsigned kFullMask = 0xffffffffu;

// A streaming store of a Quad (evict-first, like __stcs for outputs that are not read
// again soon): one 8- or 16-byte store, two 16-byte stores for a 32-byte Quad.
template <typename T>
__device__ __forceinline__ void store_quad_cs(Quad<T>* p, const Quad<T>& q) {
  static_assert(sizeof(Quad<T>) == 8 || sizeof(Quad<T>) == 16 || sizeof(Quad<T>) == 32, "Quad size");
  if constexpr (sizeof(Quad<T>) == 8) {
    __stcs(reinterpret_cast<float2*>(p), *reinterpret_cast<const float2*>(&q));
  } else if constexpr (sizeof(Quad<T>) == 16) {
    __stcs(reinterpret_cast<float4*>(p), *reinterpret_cast<const float4*>(&q));
  } else {
    __stcs(reinterpret_cast<float4*>(p), reinterpret_cast<const float4*>(&q)[0]);
    __stcs(reinterpret_cast<float4*>(p) + 1, reinterpret_cast<const float4*>(&q)[1]);
  }
}

}  // namespace cuda
}  // namespace snnspx
