// "sorted" superpixel pooling (docs/maths.md §5): the glue sorts each label map's pixels
// by label once (stable, so a superpixel's pixels stay in ascending order); a block takes
// one (t, b) and a run of channels, stages each [P] plane in shared memory with coalesced
// loads, and each warp reduces whole superpixels of it with a fixed lane assignment and a
// fixed xor-shuffle tree. No atomics: the same bits on every run.
#include <algorithm>
#include <cstdint>

#include "pool.cuh"

namespace snnspx {
namespace cuda {
namespace {

// Planes up to this many bytes are staged in (dynamic) shared memory; larger ones
// are read through the cache straight from global memory.
constexpr int64_t kMaxStageBytes = 48 * 1024;
// Pooling blocks wanted in flight: with fewer (t, b, c) planes than this, one block per plane.
constexpr int64_t kPoolBlocksWanted = 4096;

// grid.x = T * B * chunks; block = kPoolThreads. Block (t, b, chunk) pools channels
// [chunk * per_chunk, min(C, (chunk + 1) * per_chunk)) of step t, image b.
template <typename scalar_t, PoolMode kMode, bool kStaged>
__global__ void __launch_bounds__(kPoolThreads)
suppix_pool_kernel(const scalar_t* __restrict__ x, const int32_t* __restrict__ order,
                   const int32_t* __restrict__ offsets, scalar_t* __restrict__ y, int32_t* __restrict__ aux,
                   SupPixShape s, int64_t chunks, int64_t per_chunk) {
  using acc_t = typename Acc<scalar_t>::type;
  const int64_t tb = blockIdx.x / chunks;
  const int64_t chunk = blockIdx.x - tb * chunks;
  const int64_t b = tb % s.B, t = tb / s.B;
  const int64_t map = s.labels().map(t, b);
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
      if (kMode == PoolMode::Max) {
        acc_t best = neg_inf<acc_t>();
        int32_t arg = kNoPixel;
        for (int64_t i = begin + lane; i < end; i += 32) {  // int64: end may be near 2^31
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
        for (int64_t i = begin + lane; i < end; i += 32) {  // int64: end may be near 2^31
          const acc_t v = to_acc<acc_t>(src[ord[i]]);
          sum += v;
          if (kMode == PoolMode::AvgSpike) nonzero += (v != acc_t(0));
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
          sum += __shfl_xor_sync(kFullMask, sum, o);
          if (kMode == PoolMode::AvgSpike) nonzero += __shfl_xor_sync(kFullMask, nonzero, o);
        }
        if (lane == 0) {
          const int32_t n = end - begin;
          acc_t v = sum;
          if (kMode != PoolMode::Sum) v = n > 0 ? sum / static_cast<acc_t>(n) : acc_t(0);
          yp[k] = from_acc<scalar_t, acc_t>(v);
          if (kMode == PoolMode::AvgSpike) aux[plane * s.K + k] = nonzero;
        }
      }
    }
  }
}

template <typename scalar_t, PoolMode kMode>
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

}  // namespace

void suppix_pool_sorted(DType dtype, PoolMode mode, const void* x, const int32_t* order, const int32_t* offsets,
                        void* y, int32_t* aux, const SupPixShape& s, cudaStream_t stream) {
  with_scalar(dtype, [&](auto sc) {
    with_pool_mode(mode, [&](auto m) {
      pool_typed<typename decltype(sc)::type, decltype(m)::value>(x, order, offsets, y, aux, s, stream);
    });
  });
}

}  // namespace cuda
}  // namespace snnspx
