// CUDA kernels of superpixel pooling (docs/maths.md §5). No float atomics anywhere, so
// every result has the same bits on every run:
//  * pooling walks segments: the glue sorts each label map's pixels by label once
//    (stable, so a superpixel's pixels stay in ascending order); a block takes one
//    (t, b) and a run of channels, stages each [P] plane in shared memory with
//    coalesced loads, and each warp reduces whole superpixels of it with a fixed
//    lane assignment and a fixed xor-shuffle tree;
//  * the backward and unpooling are gathers: one thread writes each output pixel
//    from its superpixel's value (max: only at the argmax pixel). Where P % 4 == 0
//    and the pointers allow vector access, the tiled gather takes the call: a thread
//    reads the labels of 4 consecutive pixels once and writes them for a run of
//    channels, one vector store per channel.
// The no-sort pooling forward (the default where its rows fit shared memory, chosen
// by the glue), with no per-call sort. A block takes one (t, b, c) plane; each warp walks its own
// contiguous run of pixels 32 at a time and folds each step's lanes into a
// warp-private row of K accumulators in shared memory (lanes with the same label
// are grouped with __match_any_sync and summed by their lowest lane in ascending
// lane order: one writer per row entry, steps in order), then the rows are folded
// in warp order. The pixel counts come from a small integer-atomic count kernel
// (integer sums do not depend on the order).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

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
// No-sort pooling: at most kPoolWarps warps per block, each walking runs of
// kNoSortUnroll * 32 pixels (loads of kNoSortUnroll steps in flight at once); fewer
// warps for small planes. Its rows must fit the default dynamic shared memory.
constexpr int kNoSortUnroll = 4;
constexpr int64_t kNoSortRun = 32 * kNoSortUnroll;
constexpr int64_t kNoSortMaxSmem = 48 * 1024;
constexpr int64_t kMaxGridBlocks = int64_t(1) << 30;
constexpr int kCountThreads = 256;
constexpr int64_t kCountTile = int64_t(kCountThreads) * 32;
constexpr long long kMinLabel = -0x7fffffffffffffffLL - 1;

template <typename acc_t> __device__ __forceinline__ acc_t neg_inf();
template <> __device__ __forceinline__ float neg_inf<float>() { return -__int_as_float(0x7f800000); }
template <> __device__ __forceinline__ double neg_inf<double>() {
  return -__longlong_as_double(0x7ff0000000000000LL);
}

extern __shared__ __align__(16) unsigned char suppix_smem[];

// f(std::integral_constant<SupPixMode, mode>{}) for a run-time mode: one switch for every
// launcher that instantiates a kernel per mode.
template <typename F>
decltype(auto) with_mode(SupPixMode mode, F&& f) {
  switch (mode) {
    case SupPixMode::Sum: return f(std::integral_constant<SupPixMode, SupPixMode::Sum>{});
    case SupPixMode::Avg: return f(std::integral_constant<SupPixMode, SupPixMode::Avg>{});
    case SupPixMode::Max: return f(std::integral_constant<SupPixMode, SupPixMode::Max>{});
    case SupPixMode::AvgSpike: break;
  }
  return f(std::integral_constant<SupPixMode, SupPixMode::AvgSpike>{});
}

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

// ---------------------------------------------------------------- no-sort pooling

// Pixels per warp run and warps per block of the no-sort kernel for a plane of P pixels.
inline int nosort_warps(int64_t P) {
  return static_cast<int>(std::min<int64_t>(kPoolWarps, std::max<int64_t>(1, (P + kNoSortRun - 1) / kNoSortRun)));
}

inline int64_t nosort_smem_bytes(int64_t acc_bytes, SupPixMode mode, int64_t P, int64_t K) {
  const bool idx = mode == SupPixMode::Max || mode == SupPixMode::AvgSpike;
  return int64_t(nosort_warps(P)) * K * (acc_bytes + (idx ? int64_t(sizeof(int32_t)) : 0));
}

// One 32-pixel step of a warp: lane `lane` holds pixel `pix` with value v and
// superpixel `key` (-1: ignored or past the warp's run). The lanes with the same
// key form a group; its lowest lane (the leader) pulls the others in ascending
// lane order and folds the group into the warp's row. Every lane of the warp
// must call this (full-mask shuffles).
template <typename acc_t, SupPixMode kMode>
__device__ __forceinline__ void nosort_step(int32_t key, acc_t v, int32_t pix, int lane, acc_t* row,
                                            int32_t* row_idx) {
  const unsigned peers = __match_any_sync(kFullMask, key);
  const bool leader = key >= 0 && lane == __ffs(peers) - 1;
  unsigned rem = leader ? (peers & (peers - 1u)) : 0u;  // the other members, lowest lane first
  if (kMode == SupPixMode::Max) {
    acc_t best = v;
    int32_t arg = pix;
    const int32_t pix0 = pix - lane;  // the step's first pixel: lane j holds pix0 + j
    while (__any_sync(kFullMask, rem != 0u)) {
      const int src = rem != 0u ? __ffs(rem) - 1 : lane;
      const acc_t ov = __shfl_sync(kFullMask, v, src);
      if (rem != 0u) {
        if (max_prefer<acc_t>(ov, pix0 + src, best, arg)) best = ov, arg = pix0 + src;
        rem &= rem - 1u;
      }
    }
    if (leader && max_prefer<acc_t>(best, arg, row[key], row_idx[key])) row[key] = best, row_idx[key] = arg;
  } else {
    int32_t nonzero = 0;
    if (kMode == SupPixMode::AvgSpike) nonzero = __popc(peers & __ballot_sync(kFullMask, v != acc_t(0)));
    acc_t sum = v;
    while (__any_sync(kFullMask, rem != 0u)) {
      const int src = rem != 0u ? __ffs(rem) - 1 : lane;
      const acc_t ov = __shfl_sync(kFullMask, v, src);
      if (rem != 0u) {
        sum += ov;
        rem &= rem - 1u;
      }
    }
    if (leader) {
      row[key] += sum;
      if (kMode == SupPixMode::AvgSpike) row_idx[key] += nonzero;
    }
  }
  __syncwarp();  // the next step's leader of the same superpixel may be another lane: order the row update
}

// grid.x = min(T * B * C, kMaxGridBlocks), blocks stride over the planes; block =
// 32 * nosort_warps(P) threads; dynamic shared memory nosort_smem_bytes(...): acc_t
// rows [warps][K] then (max: argmax, avg_spike: m) int32 rows [warps][K].
// Warp w walks pixels [w * span, min(P, (w + 1) * span)). counts: int32 [L, Bl, K]
// (read by avg and avg_spike).
template <typename scalar_t, typename label_t, SupPixMode kMode>
__global__ void __launch_bounds__(kPoolThreads)
suppix_pool_nosort_kernel(const scalar_t* __restrict__ x, const label_t* __restrict__ labels,
                          const int32_t* __restrict__ counts, scalar_t* __restrict__ y, int32_t* __restrict__ aux,
                          SupPixShape s, int64_t span) {
  using acc_t = typename Acc<scalar_t>::type;
  constexpr bool kIdx = kMode == SupPixMode::Max || kMode == SupPixMode::AvgSpike;
  const int64_t K = s.K, P = s.P;
  const int64_t planes = s.T * s.B * s.C;
  const int warps = static_cast<int>(blockDim.x / 32);
  const int warp = static_cast<int>(threadIdx.x / 32), lane = static_cast<int>(threadIdx.x % 32);
  const int64_t rows = int64_t(warps) * K;
  acc_t* acc = reinterpret_cast<acc_t*>(suppix_smem);
  int32_t* idx = reinterpret_cast<int32_t*>(acc + rows);
  acc_t* row = acc + int64_t(warp) * K;
  int32_t* row_idx = idx + int64_t(warp) * K;
  const int64_t w0 = int64_t(warp) * span;
  const int64_t w1 = w0 + span < P ? w0 + span : P;

  for (int64_t plane = blockIdx.x; plane < planes; plane += gridDim.x) {
    const int64_t tb = plane / s.C;
    const int64_t b = tb % s.B, t = tb / s.B;
    const int64_t map = (s.L == 1 ? 0 : t) * s.Bl + (s.Bl == 1 ? 0 : b);
    const label_t* lab = labels + map * P;
    const scalar_t* xp = x + plane * P;

    __syncthreads();  // the previous plane's rows have been read
    for (int64_t i = threadIdx.x; i < rows; i += blockDim.x) {
      acc[i] = kMode == SupPixMode::Max ? neg_inf<acc_t>() : acc_t(0);
      if (kIdx) idx[i] = kMode == SupPixMode::Max ? kNoPixel : 0;
    }
    __syncthreads();

    // The loop bounds are the same for every lane of a warp, so all 32 lanes take
    // every step (the full-mask intrinsics need them); lanes past w1 carry key -1.
    for (int64_t base = w0; base < w1; base += kNoSortRun) {
      int32_t key[kNoSortUnroll];
      acc_t v[kNoSortUnroll];
#pragma unroll
      for (int u = 0; u < kNoSortUnroll; ++u) {
        const int64_t p = base + u * 32 + lane;
        key[u] = -1;
        v[u] = acc_t(0);
        if (p < w1) {
          key[u] = static_cast<int32_t>(superpixel_of(lab[p], K));
          v[u] = to_acc<acc_t>(xp[p]);
        }
      }
#pragma unroll
      for (int u = 0; u < kNoSortUnroll; ++u) {
        if (base + u * 32 >= w1) break;  // warp-uniform
        nosort_step<acc_t, kMode>(key[u], v[u], static_cast<int32_t>(base + u * 32 + lane), lane, row, row_idx);
      }
    }
    __syncthreads();

    // Fold the rows in warp order (warp w's pixels all precede warp w + 1's).
    scalar_t* yp = y + plane * K;
    for (int64_t k = threadIdx.x; k < K; k += blockDim.x) {
      if (kMode == SupPixMode::Max) {
        acc_t best = neg_inf<acc_t>();
        int32_t arg = kNoPixel;
        for (int w = 0; w < warps; ++w) {
          const acc_t ov = acc[int64_t(w) * K + k];
          const int32_t oa = idx[int64_t(w) * K + k];
          if (max_prefer<acc_t>(ov, oa, best, arg)) best = ov, arg = oa;
        }
        const bool empty = arg == kNoPixel;
        yp[k] = from_acc<scalar_t, acc_t>(empty ? acc_t(0) : best);
        aux[plane * K + k] = empty ? -1 : arg;
      } else {
        acc_t sum = acc_t(0);
        int32_t nonzero = 0;
        for (int w = 0; w < warps; ++w) {
          sum += acc[int64_t(w) * K + k];
          if (kMode == SupPixMode::AvgSpike) nonzero += idx[int64_t(w) * K + k];
        }
        if (kMode != SupPixMode::Sum) {
          const int32_t n = counts[map * K + k];
          sum = n > 0 ? sum / static_cast<acc_t>(n) : acc_t(0);
        }
        yp[k] = from_acc<scalar_t, acc_t>(sum);
        if (kMode == SupPixMode::AvgSpike) aux[plane * K + k] = nonzero;
      }
    }
  }
}

// grid.x = maps * chunks, chunks = ceil(P / kCountTile); block = kCountThreads;
// dynamic shared memory K int32 when counts is given. counts (zeroed by the
// caller): += pixels per superpixel of each map, through a block histogram and
// integer atomics (exact whatever their order). top (preset to kMinLabel by the
// caller): max= the largest label.
template <typename label_t>
__global__ void __launch_bounds__(kCountThreads)
suppix_count_kernel(const label_t* __restrict__ labels, int32_t* __restrict__ counts, long long* __restrict__ top,
                    int64_t P, int64_t K, int64_t chunks) {
  const int64_t map = blockIdx.x / chunks;
  const int64_t chunk = blockIdx.x - map * chunks;
  int32_t* hist = reinterpret_cast<int32_t*>(suppix_smem);
  if (counts != nullptr) {
    for (int64_t k = threadIdx.x; k < K; k += kCountThreads) hist[k] = 0;
    __syncthreads();
  }
  const label_t* lab = labels + map * P;
  const int64_t p0 = chunk * kCountTile;
  const int64_t p1 = p0 + kCountTile < P ? p0 + kCountTile : P;
  long long hi = kMinLabel;
  for (int64_t p = p0 + threadIdx.x; p < p1; p += kCountThreads) {
    const label_t l = lab[p];
    if (counts != nullptr) {
      const int64_t k = superpixel_of(l, K);
      if (k >= 0) atomicAdd(&hist[k], 1);
    }
    hi = static_cast<long long>(l) > hi ? static_cast<long long>(l) : hi;
  }
  if (top != nullptr) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const long long other = __shfl_xor_sync(kFullMask, hi, o);
      hi = other > hi ? other : hi;
    }
    if (threadIdx.x % 32 == 0) atomicMax(top, hi);
  }
  if (counts != nullptr) {
    __syncthreads();
    for (int64_t k = threadIdx.x; k < K; k += kCountThreads) {
      if (hist[k] != 0) atomicAdd(&counts[map * K + k], hist[k]);
    }
  }
}

template <typename scalar_t, typename label_t, SupPixMode kMode>
void pool_nosort_typed(const void* x, const void* labels, const int32_t* counts, void* y, int32_t* aux,
                       const SupPixShape& s, cudaStream_t stream) {
  const int64_t planes = s.T * s.B * s.C;
  if (planes == 0 || s.K == 0) return;
  using acc_t = typename Acc<scalar_t>::type;
  const int warps = nosort_warps(s.P);
  const int64_t steps = (s.P + 31) / 32;
  const int64_t span = (steps + warps - 1) / warps * 32;
  const int64_t smem = nosort_smem_bytes(sizeof(acc_t), kMode, s.P, s.K);
  const auto blocks = static_cast<unsigned int>(std::min<int64_t>(planes, kMaxGridBlocks));
  suppix_pool_nosort_kernel<scalar_t, label_t, kMode><<<blocks, warps * 32, static_cast<size_t>(smem), stream>>>(
      static_cast<const scalar_t*>(x), static_cast<const label_t*>(labels), counts, static_cast<scalar_t*>(y), aux,
      s, span);
}

template <typename scalar_t, typename label_t>
void pool_nosort_mode(SupPixMode mode, const void* x, const void* labels, const int32_t* counts, void* y,
                      int32_t* aux, const SupPixShape& s, cudaStream_t stream) {
  with_mode(mode, [&](auto m) {
    pool_nosort_typed<scalar_t, label_t, decltype(m)::value>(x, labels, counts, y, aux, s, stream);
  });
}

template <typename scalar_t>
void pool_nosort_labels(SupPixMode mode, const void* x, const void* labels, bool labels64, const int32_t* counts,
                        void* y, int32_t* aux, const SupPixShape& s, cudaStream_t stream) {
  if (labels64) return pool_nosort_mode<scalar_t, int64_t>(mode, x, labels, counts, y, aux, s, stream);
  return pool_nosort_mode<scalar_t, int32_t>(mode, x, labels, counts, y, aux, s, stream);
}

template <typename label_t>
void count_typed(const void* labels, int32_t* counts, int64_t* top, int64_t maps, int64_t P, int64_t K,
                 cudaStream_t stream) {
  if (maps == 0 || P == 0 || (counts == nullptr && top == nullptr)) return;
  const int64_t chunks = (P + kCountTile - 1) / kCountTile;
  const size_t smem = counts != nullptr ? static_cast<size_t>(K) * sizeof(int32_t) : 0;
  suppix_count_kernel<label_t><<<static_cast<unsigned int>(maps * chunks), kCountThreads, smem, stream>>>(
      static_cast<const label_t*>(labels), counts, reinterpret_cast<long long*>(top), P, K, chunks);
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

// The tiled gather (same values as suppix_gather_kernel, bit for bit). Needs P % 4 == 0
// and Quad-aligned src-independent pointers (labels, out). grid.x = T * B * cchunks *
// ptiles, ptiles = ceil(P / kTilePixels), cchunks = ceil(C / kTileChannels); block =
// kGatherThreads. Block (t, b, cchunk, ptile): thread i takes pixels p0 .. p0 + 3,
// p0 = ptile * kTilePixels + 4 i, reads their labels (and avg's counts) once, then for
// each channel of the chunk reads the superpixel values and writes one Quad.
constexpr int kTileChannels = 8;
constexpr int64_t kTilePixels = int64_t(kGatherThreads) * 4;

template <typename scalar_t, typename label_t, SupPixMode kMode>
__global__ void __launch_bounds__(kGatherThreads)
suppix_gather_tiled_kernel(const scalar_t* __restrict__ src, const label_t* __restrict__ labels,
                           const int32_t* __restrict__ aux, scalar_t* __restrict__ out, SupPixShape s,
                           int64_t cchunks, int64_t ptiles) {
  using acc_t = typename Acc<scalar_t>::type;
  const int64_t ptile = blockIdx.x % ptiles;
  const int64_t rest = blockIdx.x / ptiles;
  const int64_t cchunk = rest % cchunks;
  const int64_t tb = rest / cchunks;
  const int64_t b = tb % s.B, t = tb / s.B;
  const int64_t map = (s.L == 1 ? 0 : t) * s.Bl + (s.Bl == 1 ? 0 : b);
  const int64_t p0 = ptile * kTilePixels + 4 * int64_t(threadIdx.x);
  if (p0 >= s.P) return;  // P % 4 == 0: a quad is whole or absent
  const Quad<label_t> lq = *reinterpret_cast<const Quad<label_t>*>(labels + map * s.P + p0);
  int64_t k[4];
  int32_t n[4] = {0, 0, 0, 0};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    k[i] = superpixel_of(lq.v[i], s.K);
    if (kMode == SupPixMode::Avg && k[i] >= 0) n[i] = aux[map * s.K + k[i]];
  }
  const int64_t c0 = cchunk * kTileChannels;
  const int64_t c1 = c0 + kTileChannels < s.C ? c0 + kTileChannels : s.C;
  for (int64_t c = c0; c < c1; ++c) {
    const int64_t plane = tb * s.C + c;
    const scalar_t* g = src + plane * s.K;
    Quad<scalar_t> q;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      acc_t v = acc_t(0);
      if (k[i] >= 0) {
        const acc_t gv = to_acc<acc_t>(g[k[i]]);
        if (kMode == SupPixMode::Sum) {
          v = gv;
        } else if (kMode == SupPixMode::Max) {
          v = aux[plane * s.K + k[i]] == p0 + i ? gv : acc_t(0);
        } else {
          const int32_t m = kMode == SupPixMode::Avg ? n[i] : aux[plane * s.K + k[i]];
          v = m > 0 ? gv / static_cast<acc_t>(m) : acc_t(0);
        }
      }
      q.v[i] = from_acc<scalar_t, acc_t>(v);
    }
    store_quad_cs(reinterpret_cast<Quad<scalar_t>*>(out + plane * s.P + p0), q);
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
  with_mode(mode, [&](auto m) { pool_typed<scalar_t, decltype(m)::value>(x, order, offsets, y, aux, s, stream); });
}

template <typename scalar_t, typename label_t, SupPixMode kMode>
bool gather_typed(const void* src, const void* labels, const int32_t* aux, void* out, const SupPixShape& s,
                  bool allow_tiled, cudaStream_t stream) {
  const int64_t planes = s.T * s.B * s.C;
  if (planes == 0 || s.P == 0) return false;
  const auto* sp = static_cast<const scalar_t*>(src);
  const auto* lp = static_cast<const label_t*>(labels);
  auto* op = static_cast<scalar_t*>(out);
  if (allow_tiled && s.P % 4 == 0 && quad_aligned<label_t>(labels) && quad_aligned<scalar_t>(out)) {
    const int64_t cchunks = (s.C + kTileChannels - 1) / kTileChannels;
    const int64_t ptiles = (s.P + kTilePixels - 1) / kTilePixels;
    // At most planes * ceil(P / 1024) blocks, which the glue bounds below 2^31.
    const auto blocks = static_cast<unsigned int>(s.T * s.B * cchunks * ptiles);
    suppix_gather_tiled_kernel<scalar_t, label_t, kMode><<<blocks, kGatherThreads, 0, stream>>>(
        sp, lp, aux, op, s, cchunks, ptiles);
    return true;
  }
  const int64_t chunks = (s.P + kGatherTile - 1) / kGatherTile;
  const unsigned int blocks = static_cast<unsigned int>(planes * chunks);
  suppix_gather_kernel<scalar_t, label_t, kMode><<<blocks, kGatherThreads, 0, stream>>>(sp, lp, aux, op, s, chunks);
  return false;
}

template <typename scalar_t, typename label_t>
bool gather_mode(SupPixMode mode, const void* src, const void* labels, const int32_t* aux, void* out,
                 const SupPixShape& s, bool allow_tiled, cudaStream_t stream) {
  return with_mode(mode, [&](auto m) {
    return gather_typed<scalar_t, label_t, decltype(m)::value>(src, labels, aux, out, s, allow_tiled, stream);
  });
}

template <typename scalar_t>
bool gather_labels(SupPixMode mode, const void* src, const void* labels, bool labels64, const int32_t* aux,
                   void* out, const SupPixShape& s, bool allow_tiled, cudaStream_t stream) {
  if (labels64) return gather_mode<scalar_t, int64_t>(mode, src, labels, aux, out, s, allow_tiled, stream);
  return gather_mode<scalar_t, int32_t>(mode, src, labels, aux, out, s, allow_tiled, stream);
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

int64_t suppix_pool_nosort_smem(DType dtype, SupPixMode mode, int64_t P, int64_t K) {
  const int64_t acc_bytes = dtype == DType::Double ? int64_t(sizeof(double)) : int64_t(sizeof(float));
  return nosort_smem_bytes(acc_bytes, mode, P, K);
}

bool suppix_pool_nosort_fits(DType dtype, SupPixMode mode, int64_t P, int64_t K) {
  return suppix_pool_nosort_smem(dtype, mode, P, K) <= kNoSortMaxSmem;
}

void suppix_pool_nosort(DType dtype, SupPixMode mode, const void* x, const void* labels, bool labels64,
                        const int32_t* counts, void* y, int32_t* aux, const SupPixShape& s, cudaStream_t stream) {
  switch (dtype) {
    case DType::Float: return pool_nosort_labels<float>(mode, x, labels, labels64, counts, y, aux, s, stream);
    case DType::Double: return pool_nosort_labels<double>(mode, x, labels, labels64, counts, y, aux, s, stream);
    case DType::Half: return pool_nosort_labels<__half>(mode, x, labels, labels64, counts, y, aux, s, stream);
    case DType::BFloat16:
      return pool_nosort_labels<__nv_bfloat16>(mode, x, labels, labels64, counts, y, aux, s, stream);
  }
}

void suppix_count(const void* labels, bool labels64, int32_t* counts, int64_t* top, int64_t maps, int64_t P,
                  int64_t K, cudaStream_t stream) {
  if (labels64) return count_typed<int64_t>(labels, counts, top, maps, P, K, stream);
  return count_typed<int32_t>(labels, counts, top, maps, P, K, stream);
}

bool suppix_gather(DType dtype, SupPixMode mode, const void* src, const void* labels, bool labels64,
                   const int32_t* aux, void* out, const SupPixShape& s, bool allow_tiled, cudaStream_t stream) {
  switch (dtype) {
    case DType::Float: return gather_labels<float>(mode, src, labels, labels64, aux, out, s, allow_tiled, stream);
    case DType::Double: return gather_labels<double>(mode, src, labels, labels64, aux, out, s, allow_tiled, stream);
    case DType::Half: return gather_labels<__half>(mode, src, labels, labels64, aux, out, s, allow_tiled, stream);
    case DType::BFloat16:
      return gather_labels<__nv_bfloat16>(mode, src, labels, labels64, aux, out, s, allow_tiled, stream);
  }
  return false;
}

}  // namespace cuda
}  // namespace snnspx
