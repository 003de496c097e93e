// CUDA kernels of superpixel pooling (SPEC §5). No float atomics anywhere, so
// every result has the same bits on every run:
//  * pooling walks segments: the glue sorts each label map's pixels by label once
//    (stable, so a superpixel's pixels stay in ascending order); a block takes one
//    (t, b) and a run of channels, stages each [P] plane in shared memory with
//    coalesced loads, and each warp reduces whole superpixels of it with a fixed
//    lane assignment and a fixed xor-shuffle tree;
//  * the backward and unpooling are gathers: one thread writes each output pixel
//    from its superpixel's value (max: only at the argmax pixel).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>

#include "common.cuh"
#include "suppix_launch.h"

namespace snnspx {
namespace cuda {
namespace {

constexpr int kPoolThreads = 256;
constexpr int kPoolWarps = kPoolThreads / 32;
constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kGatherThreads = 256;
constexpr int kGatherItems = 4;
constexpr int64_t kGatherTile = int64_t(kGatherThreads) * kGatherItems;
// Planes up to this many bytes are staged in (dynamic) shared memory; larger ones
// are read through the cache straight from global memory.
constexpr int64_t kMaxStageBytes = 48 * 1024;
// Pooling blocks wanted in flight: with fewer (t, b, c) planes than this, one block per plane.
constexpr int64_t kPoolBlocksWanted = 4096;

template <typename acc_t> __device__ __forceinline__ acc_t neg_inf();
template <> __device__ __forceinline__ float neg_inf<float>() { return -__int_as_float(0x7f800000); }
template <> __device__ __forceinline__ double neg_inf<double>() {
  return -__longlong_as_double(0x7ff0000000000000LL);
}

extern __shared__ __align__(16) unsigned char suppix_smem[];

// grid.x = T * B * chunks; block = kPoolThreads. Block (t, b, chunk) pools channels
// [chunk * per_chunk, min(C, (chunk + 1) * per_chunk)) of step t, image b.
template <typename scalar_t, SupPixMode kMode, bool kStaged>
__global__ void __launch_bounds__(kPoolThreads)
suppix_pool_kernel(const scalar_t* __restrict__ x, const int32_t* __restrict__ order,
                   const int32_t* __restrict__ offsets, scalar_t* __restrict__ y, int32_t* __restrict__ aux,
                   SupPixShape s, int64_t chunks, int64_t per_chunk) {
  using acc_t = typename Acc<scalar_t>::type;
  const int64_t tb = blockIdx.x / chunks;
  const int64_t chunk = blockIdx.x - tb * chunks;
  const int64_t b = tb % s.B, t = tb / s.B;
  const int64_t map = (s.L == 1 ? 0 : t) * s.Bl + (s.Bl == 1 ? 0 : b);
  const int32_t* ord = order + map * s.P;
  const int32_t* off = offsets + map * (s.K + 1);
  const int64_t c0 = chunk * per_chunk;
  const int64_t c1 = c0 + per_chunk < s.C ? c0 + per_chunk : s.C;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  scalar_t* staged = reinterpret_cast<scalar_t*>(suppix_smem);

  for (int64_t c = c0; c < c1; ++c) {
    const int64_t plane = tb * s.C + c;
    const scalar_t* xp = x + plane * s.P;
    const scalar_t* src = xp;
    if (kStaged) {
      __syncthreads();  // every warp is done with the previous plane
      for (int64_t i = threadIdx.x; i < s.P; i += kPoolThreads) staged[i] = xp[i];
      __syncthreads();
      src = staged;
    }
    scalar_t* yp = y + plane * s.K;
    for (int64_t k = warp; k < s.K; k += kPoolWarps) {
      const int32_t begin = off[k], end = off[k + 1];
      if (kMode == SupPixMode::Max) {
        acc_t best = neg_inf<acc_t>();
        int32_t arg = kNoPixel;
        for (int32_t i = begin + lane; i < end; i += 32) {
          const int32_t p = ord[i];
          const acc_t v = to_acc<acc_t>(src[p]);
          if (max_prefer<acc_t>(v, p, best, arg)) best = v, arg = p;
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
          const acc_t ob = __shfl_xor_sync(kFullMask, best, o);
          const int32_t oa = __shfl_xor_sync(kFullMask, arg, o);
          if (max_prefer<acc_t>(ob, oa, best, arg)) best = ob, arg = oa;
        }
        if (lane == 0) {
          const bool empty = arg == kNoPixel;
          yp[k] = from_acc<scalar_t, acc_t>(empty ? acc_t(0) : best);
          aux[plane * s.K + k] = empty ? -1 : arg;
        }
      } else {
        acc_t sum = acc_t(0);
        int32_t nonzero = 0;
        for (int32_t i = begin + lane; i < end; i += 32) {
          const acc_t v = to_acc<acc_t>(src[ord[i]]);
          sum += v;
          if (kMode == SupPixMode::AvgSpike) nonzero += (v != acc_t(0));
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
          sum += __shfl_xor_sync(kFullMask, sum, o);
          if (kMode == SupPixMode::AvgSpike) nonzero += __shfl_xor_sync(kFullMask, nonzero, o);
        }
        if (lane == 0) {
          const int32_t n = end - begin;
          acc_t v = sum;
          if (kMode != SupPixMode::Sum) v = n > 0 ? sum / static_cast<acc_t>(n) : acc_t(0);
          yp[k] = from_acc<scalar_t, acc_t>(v);
          if (kMode == SupPixMode::AvgSpike) aux[plane * s.K + k] = nonzero;
        }
      }
    }
  }
}

// grid.x = T * B * C * chunks, chunks = ceil(P / kGatherTile); block = kGatherThreads.
template <typename scalar_t, typename label_t, SupPixMode kMode>
__global__ void __launch_bounds__(kGatherThreads)
suppix_gather_kernel(const scalar_t* __restrict__ src, const label_t* __restrict__ labels,
                     const int32_t* __restrict__ aux, scalar_t* __restrict__ out, SupPixShape s, int64_t chunks) {
  using acc_t = typename Acc<scalar_t>::type;
  const int64_t plane = blockIdx.x / chunks;
  const int64_t chunk = blockIdx.x - plane * chunks;
  const int64_t tb = plane / s.C;
  const int64_t b = tb % s.B, t = tb / s.B;
  const int64_t map = (s.L == 1 ? 0 : t) * s.Bl + (s.Bl == 1 ? 0 : b);
  const label_t* lab = labels + map * s.P;
  const scalar_t* g = src + plane * s.K;
  scalar_t* o = out + plane * s.P;
  const int64_t p0 = chunk * kGatherTile + threadIdx.x;
#pragma unroll
  for (int j = 0; j < kGatherItems; ++j) {
    const int64_t p = p0 + int64_t(j) * kGatherThreads;
    if (p >= s.P) break;
    const int64_t k = superpixel_of(lab[p], s.K);
    acc_t v = acc_t(0);
    if (k >= 0) {
      const acc_t gv = to_acc<acc_t>(g[k]);
      if (kMode == SupPixMode::Sum) {
        v = gv;
      } else if (kMode == SupPixMode::Max) {
        v = aux[plane * s.K + k] == p ? gv : acc_t(0);
      } else {
        const int32_t n = kMode == SupPixMode::Avg ? aux[map * s.K + k] : aux[plane * s.K + k];
        v = n > 0 ? gv / static_cast<acc_t>(n) : acc_t(0);
      }
    }
    o[p] = from_acc<scalar_t, acc_t>(v);
  }
}

template <typename scalar_t, SupPixMode kMode>
void pool_typed(const void* x, const int32_t* order, const int32_t* offsets, void* y, int32_t* aux,
                const SupPixShape& s, cudaStream_t stream) {
  const int64_t planes = s.T * s.B * s.C;
  if (planes == 0 || s.K == 0) return;
  const int64_t per_chunk = std::max<int64_t>(1, std::min<int64_t>(s.C, planes / kPoolBlocksWanted));
  const int64_t chunks = (s.C + per_chunk - 1) / per_chunk;
  const unsigned int blocks = static_cast<unsigned int>(s.T * s.B * chunks);
  const auto* xp = static_cast<const scalar_t*>(x);
  auto* yp = static_cast<scalar_t*>(y);
  const int64_t stage_bytes = s.P * static_cast<int64_t>(sizeof(scalar_t));
  if (stage_bytes <= kMaxStageBytes) {
    suppix_pool_kernel<scalar_t, kMode, true><<<blocks, kPoolThreads, static_cast<size_t>(stage_bytes), stream>>>(
        xp, order, offsets, yp, aux, s, chunks, per_chunk);
  } else {
    suppix_pool_kernel<scalar_t, kMode, false><<<blocks, kPoolThreads, 0, stream>>>(xp, order, offsets, yp, aux, s,
                                                                                    chunks, per_chunk);
  }
}

template <typename scalar_t>
void pool_mode(SupPixMode mode, const void* x, const int32_t* order, const int32_t* offsets, void* y, int32_t* aux,
               const SupPixShape& s, cudaStream_t stream) {
  switch (mode) {
    case SupPixMode::Sum: return pool_typed<scalar_t, SupPixMode::Sum>(x, order, offsets, y, aux, s, stream);
    case SupPixMode::Avg: return pool_typed<scalar_t, SupPixMode::Avg>(x, order, offsets, y, aux, s, stream);
    case SupPixMode::Max: return pool_typed<scalar_t, SupPixMode::Max>(x, order, offsets, y, aux, s, stream);
    case SupPixMode::AvgSpike:
      return pool_typed<scalar_t, SupPixMode::AvgSpike>(x, order, offsets, y, aux, s, stream);
  }
}

template <typename scalar_t, typename label_t, SupPixMode kMode>
void gather_typed(const void* src, const void* labels, const int32_t* aux, void* out, const SupPixShape& s,
                  cudaStream_t stream) {
  const int64_t planes = s.T * s.B * s.C;
  if (planes == 0 || s.P == 0) return;
  const int64_t chunks = (s.P + kGatherTile - 1) / kGatherTile;
  const unsigned int blocks = static_cast<unsigned int>(planes * chunks);
  suppix_gather_kernel<scalar_t, label_t, kMode><<<blocks, kGatherThreads, 0, stream>>>(
      static_cast<const scalar_t*>(src), static_cast<const label_t*>(labels), aux, static_cast<scalar_t*>(out), s,
      chunks);
}

template <typename scalar_t, typename label_t>
void gather_mode(SupPixMode mode, const void* src, const void* labels, const int32_t* aux, void* out,
                 const SupPixShape& s, cudaStream_t stream) {
  switch (mode) {
    case SupPixMode::Sum: return gather_typed<scalar_t, label_t, SupPixMode::Sum>(src, labels, aux, out, s, stream);
    case SupPixMode::Avg: return gather_typed<scalar_t, label_t, SupPixMode::Avg>(src, labels, aux, out, s, stream);
    case SupPixMode::Max: return gather_typed<scalar_t, label_t, SupPixMode::Max>(src, labels, aux, out, s, stream);
    case SupPixMode::AvgSpike:
      return gather_typed<scalar_t, label_t, SupPixMode::AvgSpike>(src, labels, aux, out, s, stream);
  }
}

template <typename scalar_t>
void gather_labels(SupPixMode mode, const void* src, const void* labels, bool labels64, const int32_t* aux,
                   void* out, const SupPixShape& s, cudaStream_t stream) {
  if (labels64) return gather_mode<scalar_t, int64_t>(mode, src, labels, aux, out, s, stream);
  return gather_mode<scalar_t, int32_t>(mode, src, labels, aux, out, s, stream);
}

}  // namespace

void suppix_pool(DType dtype, SupPixMode mode, const void* x, const int32_t* order, const int32_t* offsets, void* y,
                 int32_t* aux, const SupPixShape& s, cudaStream_t stream) {
  switch (dtype) {
    case DType::Float: return pool_mode<float>(mode, x, order, offsets, y, aux, s, stream);
    case DType::Double: return pool_mode<double>(mode, x, order, offsets, y, aux, s, stream);
    case DType::Half: return pool_mode<__half>(mode, x, order, offsets, y, aux, s, stream);
    case DType::BFloat16: return pool_mode<__nv_bfloat16>(mode, x, order, offsets, y, aux, s, stream);
  }
}

void suppix_gather(DType dtype, SupPixMode mode, const void* src, const void* labels, bool labels64,
                   const int32_t* aux, void* out, const SupPixShape& s, cudaStream_t stream) {
  switch (dtype) {
    case DType::Float: return gather_labels<float>(mode, src, labels, labels64, aux, out, s, stream);
    case DType::Double: return gather_labels<double>(mode, src, labels, labels64, aux, out, s, stream);
    case DType::Half: return gather_labels<__half>(mode, src, labels, labels64, aux, out, s, stream);
    case DType::BFloat16: return gather_labels<__nv_bfloat16>(mode, src, labels, labels64, aux, out, s, stream);
  }
}

}  // namespace cuda
}  // namespace snnspx
