// CUDA kernels of superpixel pooling (docs/maths.md §5). No float atomics anywhere, and
// the integer atomics used take an order-independent sum or max, so every result has the
// same bits on every run:
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
// contiguous run of pixels and folds it into a warp-private row of K accumulators in
// shared memory, then the rows are folded in warp order. Sum, avg and avg_spike: a lane
// takes 4 consecutive pixels (128 per warp step), adds its runs of one superpixel in
// registers, and the warp folds the lanes' runs in rounds (round r: every lane's r-th
// run; lanes with the same superpixel are grouped with __match_any_sync and summed by
// their lowest lane in ascending lane order: one writer per row entry, rounds and steps
// in order). Max (float64; the other types take the key kernel) walks 32 single pixels
// per step with the same grouping. The pixel counts come from a small integer-atomic
// count kernel (integer sums do not depend on the order).
// Max pooling of float, half and bfloat16 (the default for mode max where K <= 6144)
// takes the max of 64-bit keys instead, value above inverted pixel index: a max of
// integers, so shared-memory compare-and-swap loops can take it in any order. A block
// takes several channels of one (t, b) and reads each label once for all of them; see
// "max pooling by keys" below.
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
// No-sort pooling: at most kPoolWarps warps per block, one per kNoSortRun pixels; fewer
// warps for small planes. Its rows must fit the default dynamic shared memory. The max
// kernel walks kNoSortUnroll * 32 pixels at a time (loads of kNoSortUnroll steps in
// flight at once); the 4-pixel kernel (sum, avg, avg_spike) steps of kQuadStep pixels,
// kQuadAhead of them loaded before the first is folded.
constexpr int kNoSortUnroll = 4;
constexpr int64_t kNoSortRun = 32 * kNoSortUnroll;
constexpr int64_t kQuadStep = 32 * 4;
constexpr int kQuadAhead = 2;
constexpr int64_t kNoSortMaxSmem = 48 * 1024;
constexpr int64_t kMaxGridBlocks = int64_t(1) << 30;
constexpr int kCountThreads = 256;
// 4 pixels a thread: the loop waits on each load, so a few per thread and many blocks keep
// the count (and the range check's label max) short.
constexpr int64_t kCountTile = int64_t(kCountThreads) * 4;
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

// One 32-pixel step of the max kernel: lane `lane` holds pixel `pix` with value v and
// superpixel `key` (-1: ignored or past the warp's run). The lanes with the same
// key form a group; its lowest lane (the leader) pulls the others in ascending
// lane order and folds the group into the warp's row. Every lane of the warp
// must call this (full-mask shuffles).
template <typename acc_t>
__device__ __forceinline__ void nosort_max_step(int32_t key, acc_t v, int32_t pix, int lane, acc_t* row,
                                                int32_t* row_idx) {
  const unsigned peers = __match_any_sync(kFullMask, key);
  const bool leader = key >= 0 && lane == __ffs(peers) - 1;
  unsigned rem = leader ? (peers & (peers - 1u)) : 0u;  // the other members, lowest lane first
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
  __syncwarp();  // the next step's leader of the same superpixel may be another lane: order the row update
}

// The label map of plane (t, b, c) (plane = (t * B + b) * C + c) in the [L, Bl, P] labels.
__device__ __forceinline__ int64_t plane_map(const SupPixShape& s, int64_t plane) {
  const int64_t tb = plane / s.C;
  const int64_t b = tb % s.B, t = tb / s.B;
  return (s.L == 1 ? 0 : t) * s.Bl + (s.Bl == 1 ? 0 : b);
}

// A no-sort block's warps: warp `warp` of `warps` walks pixels [w0, w1) of every plane and
// owns row `warp` of the `rows` = warps * K accumulators in shared memory.
struct NoSortWarp {
  int warps, warp, lane;
  int64_t rows, w0, w1;
  __device__ NoSortWarp(int64_t P, int64_t K, int64_t span)
      : warps(static_cast<int>(blockDim.x / 32)),
        warp(static_cast<int>(threadIdx.x / 32)),
        lane(static_cast<int>(threadIdx.x % 32)),
        rows(int64_t(blockDim.x / 32) * K),
        w0(int64_t(threadIdx.x / 32) * span),
        w1(w0 + span < P ? w0 + span : P) {}
};

// The no-sort max kernel (float64 in practice). grid.x = min(T * B * C, kMaxGridBlocks),
// blocks stride over the planes; block = 32 * nosort_warps(P) threads; dynamic shared
// memory nosort_smem_bytes(...): acc_t rows [warps][K] then int32 argmax rows [warps][K].
// Warp w walks pixels [w * span, min(P, (w + 1) * span)), span a multiple of 32.
template <typename scalar_t, typename label_t>
__global__ void __launch_bounds__(kPoolThreads)
suppix_pool_nosort_max_kernel(const scalar_t* __restrict__ x, const label_t* __restrict__ labels,
                              scalar_t* __restrict__ y, int32_t* __restrict__ aux, SupPixShape s, int64_t span) {
  using acc_t = typename Acc<scalar_t>::type;
  const int64_t K = s.K, P = s.P;
  const NoSortWarp nw(P, K, span);
  const int warps = nw.warps, warp = nw.warp, lane = nw.lane;
  const int64_t rows = nw.rows, w0 = nw.w0, w1 = nw.w1;
  acc_t* acc = reinterpret_cast<acc_t*>(suppix_smem);
  int32_t* idx = reinterpret_cast<int32_t*>(acc + rows);
  acc_t* row = acc + int64_t(warp) * K;
  int32_t* row_idx = idx + int64_t(warp) * K;

  for (int64_t plane = blockIdx.x; plane < s.T * s.B * s.C; plane += gridDim.x) {
    const label_t* lab = labels + plane_map(s, plane) * P;
    const scalar_t* xp = x + plane * P;

    __syncthreads();  // the previous plane's rows have been read
    for (int64_t i = threadIdx.x; i < rows; i += blockDim.x) {
      acc[i] = neg_inf<acc_t>();
      idx[i] = kNoPixel;
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
        nosort_max_step<acc_t>(key[u], v[u], static_cast<int32_t>(base + u * 32 + lane), lane, row, row_idx);
      }
    }
    __syncthreads();

    // Fold the rows in warp order (warp w's pixels all precede warp w + 1's).
    scalar_t* yp = y + plane * K;
    for (int64_t k = threadIdx.x; k < K; k += blockDim.x) {
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
    }
  }
}

// ---------------------------------------------------------------- 4-pixel no-sort pooling
//
// Sum, avg and avg_spike. A lane takes 4 consecutive pixels per warp step (128 pixels a
// step), one vector load of labels and one of x where the kernel's kVec variant applies
// (P % 4 == 0, x and labels Quad-aligned), 4 scalar loads otherwise: the same values.
// quad_runs adds its runs of equal superpixels in registers, in ascending pixel order
// (pixels pooled nowhere are skipped: [3, -1, 3, 5] is the runs 3 and 5), so a lane
// holds 0 to 4 runs, compacted: run j at index j, key -1 after the last. Then the warp
// takes rounds r = 0, 1, ... while some lane has an r-th run (warp-uniform): every lane
// offers its r-th run (key -1 if none), lanes with the same key are grouped by
// __match_any_sync, and the group's lowest lane adds the members' partial sums in
// ascending lane order and adds that to the warp's row (avg_spike: the members'
// non-zero counts, 0 to 4 each, by three ballots). Leaders of one round have different
// keys, and a __syncwarp ends each round, so every row entry has one writer at a time in
// a fixed order. The order of every float addition (within a run, within a group, rounds,
// steps, then the warp rows in warp order) depends only on the labels and the shape,
// never on scheduling: the same bits on every run.
//
// Cost per 128 pixels of a warp, against the one-pixel walk's four 32-pixel steps: one
// __match_any_sync, any_sync and shuffle per extra group member and one __syncwarp per
// round, instead of per 32-pixel step; with superpixels that are runs of 4 or more pixels
// (the benchmark's 4x4 cells fill a lane's quad exactly) that is one round, in which each
// superpixel of the step has a group of one lane per image row it spans.

// The runs of one lane's quad: pixel i has superpixel k[i] (-1: pooled nowhere) and value
// v[i]. rk[j], rs[j], rn[j]: the j-th run's superpixel (-1: no such run), its sum (left to
// right) and its count of non-zero values (NaN is non-zero; kSpike only). Static indices
// only, so the arrays stay in registers: first a running sum from the left that restarts
// with each run (c[i]: the sum of pixel i's run up to pixel i), then from the right each
// pixel that ends a run pushes (k[i], c[i]) to the front of the list.
template <typename acc_t, bool kSpike>
__device__ __forceinline__ void quad_runs(const int32_t (&k)[4], const acc_t (&v)[4], int32_t (&rk)[4],
                                          acc_t (&rs)[4], int32_t (&rn)[4]) {
  acc_t c[4];
  int32_t cn[4];
  acc_t cur = acc_t(0);
  int32_t curn = 0;
  int32_t last = -1;  // the superpixel of the last pooled pixel so far
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int32_t nz = v[i] != acc_t(0) ? 1 : 0;
    if (k[i] >= 0) {
      const bool fresh = k[i] != last;  // pixel i starts a run
      cur = fresh ? v[i] : cur + v[i];
      if (kSpike) curn = fresh ? nz : curn + nz;
      last = k[i];
    }
    c[i] = cur;
    cn[i] = curn;
  }
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    rk[j] = -1;
    rs[j] = acc_t(0);
    rn[j] = 0;
  }
  int32_t next = -1;  // the superpixel of the next pooled pixel after pixel i
#pragma unroll
  for (int i = 3; i >= 0; --i) {
    if (k[i] >= 0 && k[i] != next) {  // pixel i ends a run; at most 3 - i runs are listed
#pragma unroll
      for (int j = 3 - i; j > 0; --j) {
        rk[j] = rk[j - 1];
        rs[j] = rs[j - 1];
        if (kSpike) rn[j] = rn[j - 1];
      }
      rk[0] = k[i];
      rs[0] = c[i];
      if (kSpike) rn[0] = cn[i];
    }
    next = k[i] >= 0 ? k[i] : next;
  }
}

// One round: lane `lane` offers a run of superpixel `key` (-1: none) with partial sum
// `part` and non-zero count nz (0..4, kSpike). Every lane of the warp must call this.
template <typename acc_t, bool kSpike>
__device__ __forceinline__ void nosort_round(int32_t key, acc_t part, int32_t nz, int lane, acc_t* row,
                                             int32_t* row_nz) {
  const unsigned peers = __match_any_sync(kFullMask, key);
  const bool leader = key >= 0 && lane == __ffs(peers) - 1;
  unsigned rem = leader ? (peers & (peers - 1u)) : 0u;  // the other members, lowest lane first
  acc_t sum = part;
  while (__any_sync(kFullMask, rem != 0u)) {
    const int src = rem != 0u ? __ffs(rem) - 1 : lane;
    const acc_t ov = __shfl_sync(kFullMask, part, src);
    if (rem != 0u) {
      sum += ov;
      rem &= rem - 1u;
    }
  }
  int32_t count = 0;
  if (kSpike) {  // the group's sum of nz, bit by bit (nz <= 4 < 8)
    count = __popc(peers & __ballot_sync(kFullMask, nz & 1)) + 2 * __popc(peers & __ballot_sync(kFullMask, nz & 2)) +
            4 * __popc(peers & __ballot_sync(kFullMask, nz & 4));
  }
  if (leader) {
    row[key] += sum;
    if (kSpike) row_nz[key] += count;
  }
  __syncwarp();  // the next round's leader of the same superpixel may be another lane: order the row update
}

// grid.x = min(T * B * C, kMaxGridBlocks), blocks stride over the planes; block =
// 32 * nosort_warps(P) threads; dynamic shared memory nosort_smem_bytes(...): acc_t
// rows [warps][K] then (avg_spike) int32 rows of m [warps][K]. Warp w walks pixels
// [w * span, min(P, (w + 1) * span)), span a multiple of kQuadStep; lane l takes pixels
// base + 4 l .. base + 4 l + 3 of each step. counts: int32 [L, Bl, K] (avg, avg_spike).
// kVec: P % 4 == 0 and x, labels Quad-aligned.
template <typename scalar_t, typename label_t, SupPixMode kMode, bool kVec>
__global__ void __launch_bounds__(kPoolThreads)
suppix_pool_nosort_quad_kernel(const scalar_t* __restrict__ x, const label_t* __restrict__ labels,
                               const int32_t* __restrict__ counts, scalar_t* __restrict__ y, int32_t* __restrict__ aux,
                               SupPixShape s, int64_t span) {
  static_assert(kMode != SupPixMode::Max, "max takes suppix_pool_nosort_max_kernel");
  using acc_t = typename Acc<scalar_t>::type;
  constexpr bool kSpike = kMode == SupPixMode::AvgSpike;
  const int64_t K = s.K, P = s.P;
  const NoSortWarp nw(P, K, span);
  const int warps = nw.warps, warp = nw.warp, lane = nw.lane;
  const int64_t rows = nw.rows, w0 = nw.w0, w1 = nw.w1;
  acc_t* acc = reinterpret_cast<acc_t*>(suppix_smem);
  int32_t* nzs = reinterpret_cast<int32_t*>(acc + rows);
  acc_t* row = acc + int64_t(warp) * K;
  int32_t* row_nz = nzs + int64_t(warp) * K;

  for (int64_t plane = blockIdx.x; plane < s.T * s.B * s.C; plane += gridDim.x) {
    const int64_t map = plane_map(s, plane);
    const label_t* lab = labels + map * P;
    const scalar_t* xp = x + plane * P;

    __syncthreads();  // the previous plane's rows have been read
    for (int64_t i = threadIdx.x; i < rows; i += blockDim.x) {
      acc[i] = acc_t(0);
      if (kSpike) nzs[i] = 0;
    }
    __syncthreads();

    // The loop bounds are the same for every lane of a warp, so all 32 lanes take every
    // step and round (the full-mask intrinsics need them); pixels past w1 carry key -1.
    for (int64_t base = w0; base < w1; base += kQuadStep * kQuadAhead) {
      int32_t k[kQuadAhead][4];
      acc_t v[kQuadAhead][4];
#pragma unroll
      for (int a = 0; a < kQuadAhead; ++a) {
        const int64_t p0 = base + a * kQuadStep + 4 * lane;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          k[a][i] = -1;
          v[a][i] = acc_t(0);
        }
        if (kVec) {
          if (p0 < w1) {  // p0 and w1 (P or a multiple of kQuadStep) are multiples of 4: a whole quad
            const Quad<label_t> lq = *reinterpret_cast<const Quad<label_t>*>(lab + p0);
            const Quad<scalar_t> xq = *reinterpret_cast<const Quad<scalar_t>*>(xp + p0);
#pragma unroll
            for (int i = 0; i < 4; ++i) {
              k[a][i] = static_cast<int32_t>(superpixel_of(lq.v[i], K));
              v[a][i] = to_acc<acc_t>(xq.v[i]);
            }
          }
        } else {
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            if (p0 + i < w1) {
              k[a][i] = static_cast<int32_t>(superpixel_of(lab[p0 + i], K));
              v[a][i] = to_acc<acc_t>(xp[p0 + i]);
            }
          }
        }
      }
#pragma unroll
      for (int a = 0; a < kQuadAhead; ++a) {
        if (base + a * kQuadStep >= w1) break;  // warp-uniform
        int32_t rk[4], rn[4];
        acc_t rs[4];
        quad_runs<acc_t, kSpike>(k[a], v[a], rk, rs, rn);
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          // Runs are compacted: no lane with an r-th run means none with a later one.
          if (!__any_sync(kFullMask, rk[r] >= 0)) break;  // warp-uniform
          nosort_round<acc_t, kSpike>(rk[r], rs[r], rn[r], lane, row, row_nz);
        }
      }
    }
    __syncthreads();

    // Fold the rows in warp order (warp w's pixels all precede warp w + 1's).
    scalar_t* yp = y + plane * K;
    for (int64_t kk = threadIdx.x; kk < K; kk += blockDim.x) {
      acc_t sum = acc_t(0);
      int32_t nonzero = 0;
      for (int w = 0; w < warps; ++w) {
        sum += acc[int64_t(w) * K + kk];
        if (kSpike) nonzero += nzs[int64_t(w) * K + kk];
      }
      if (kMode != SupPixMode::Sum) {
        const int32_t n = counts[map * K + kk];
        sum = n > 0 ? sum / static_cast<acc_t>(n) : acc_t(0);
      }
      yp[kk] = from_acc<scalar_t, acc_t>(sum);
      if (kSpike) aux[plane * K + kk] = nonzero;
    }
  }
}

// ---------------------------------------------------------------- max pooling by keys
//
// Max pooling of float, half and bfloat16 (double keeps the no-sort max kernel above) as a max
// of 64-bit keys. A pixel p of value v (widened to float) becomes
//   key = ordered(v) << 32 | (0x7fffffff - p),
// ordered() an order-preserving map of the float to uint32 in which every NaN is 0xffffffff
// (above +inf, whatever its sign or payload) and -0.0 is +0.0: a key is larger exactly when
// max_prefer (../suppix_core.h) prefers its pixel, ties going to the lower pixel. The max
// of keys is associative and commutative, so the shared-memory atomics that take it may
// run in any order and the result is the same bits on every run. Key 0 is "no pixel"
// (every real key is above it, -inf's included: ordered(-inf) = 0x007fffff). The value
// written to y is read again from x at the winning pixel, so it keeps the input's exact
// bits (-0.0, NaN payloads); it is never rebuilt from the key.
//
// Layout: a block takes `group` channels of one (t, b), so it reads each label once for
// all of them, and keeps group * K keys in shared memory. Thread i walks 4 consecutive
// pixels at a time (one vector load of labels, one of x per channel where the quad path
// applies), merges the keys of consecutive pixels with one superpixel in registers, and
// then:
//  * a thread whose 4 pixels share one superpixel ("uniform") joins a segmented max over
//    the neighbouring lanes with the same uniform superpixel (shuffles down; the lane runs
//    are found once per 4 * blockDim pixels from the labels alone and serve every
//    channel), and only the first lane of such a run updates shared memory;
//  * other threads update shared memory once per run of equal labels in their quad.
// An update (key_max) reads the slot first and skips the atomic when it already holds a
// larger key (keys only grow, so a skipped key can never be the max); otherwise it loops on
// atomicCAS. (64-bit atomicMax on shared memory is itself a CAS loop in SASS, sm_80 to
// sm_120, without the early exit.) Expected cost at the benchmark shape (float32, K = 256,
// 4x4 cells): one 16-byte load per 4 pixels and channel, ~15 instructions per pixel, and
// about one shared update per quad, most of them an untaken compare: close to reading x.

constexpr int kKeyThreads = 256;
// At most this many channels per block (the labels are read once for all of them), fewer
// when the keys would not fit kKeyMaxSmem or the grid would have fewer than
// kKeyBlocksWanted blocks: about 5 blocks fit an SM (48 registers a thread), so 4096
// blocks are 6 or more waves on a 132-SM GPU and the partial last wave costs little
// (at the benchmark shape, T * B * C = 16384: 4 channels a block, 4096 blocks).
constexpr int64_t kKeyChannels = 8;
constexpr int64_t kKeyBlocksWanted = 4096;
// x loads in flight per thread: channels loaded before the first is reduced.
constexpr int kKeyAhead = 4;
constexpr int64_t kKeyMaxSmem = 48 * 1024;
constexpr unsigned long long kNoKey = 0ull;

// The max-pooling key of value v at pixel p (see above).
__device__ __forceinline__ unsigned long long max_key(float v, int64_t p) {
  uint32_t b = __float_as_uint(v);
  if ((b & 0x7fffffffu) > 0x7f800000u) {
    b = 0xffffffffu;  // any NaN: above everything
  } else if (b == 0x80000000u) {
    b = 0x80000000u;  // -0.0: the key of +0.0 (a tie, as in max_prefer)
  } else {
    b = (b & 0x80000000u) ? ~b : (b | 0x80000000u);
  }
  return (static_cast<unsigned long long>(b) << 32) | static_cast<uint32_t>(0x7fffffff - p);
}

__device__ __forceinline__ unsigned long long key_larger(unsigned long long a, unsigned long long b) {
  return a > b ? a : b;
}

// *slot = max(*slot, key). The first read is volatile (one aligned 64-bit load, never
// torn); a stale value is at most the slot's current one, so a skip is always right and a
// wrong guess only costs one failed CAS.
__device__ __forceinline__ void key_max(unsigned long long* slot, unsigned long long key) {
  unsigned long long old = *reinterpret_cast<volatile unsigned long long*>(slot);
  while (key > old) {
    const unsigned long long seen = atomicCAS(slot, old, key);
    if (seen == old) break;
    old = seen;
  }
}

// grid.x = min(T * B * groups, kMaxGridBlocks), blocks stride over the items (t, b, g);
// item (t, b, g) pools channels [g * group, min(C, (g + 1) * group)). block = a multiple of
// 32, at most kKeyThreads; dynamic shared memory group * K * 8 bytes. kQuad: P % 4 == 0
// and x, labels Quad-aligned (vector loads); otherwise the same walk with scalar loads.
template <typename scalar_t, typename label_t, bool kQuad>
__global__ void __launch_bounds__(kKeyThreads)
suppix_pool_max_key_kernel(const scalar_t* __restrict__ x, const label_t* __restrict__ labels,
                           scalar_t* __restrict__ y, int32_t* __restrict__ aux, SupPixShape s, int64_t group,
                           int64_t groups) {
  const int64_t K = s.K, P = s.P, C = s.C;
  const int64_t items = s.T * s.B * groups;
  const int lane = static_cast<int>(threadIdx.x % 32);
  const int64_t tile = 4 * int64_t(blockDim.x);
  unsigned long long* keys = reinterpret_cast<unsigned long long*>(suppix_smem);

  for (int64_t item = blockIdx.x; item < items; item += gridDim.x) {
    const int64_t tb = item / groups;
    const int64_t c0 = (item - tb * groups) * group;
    const int cn = static_cast<int>(c0 + group < C ? group : C - c0);  // channels of this item
    const int64_t b = tb % s.B, t = tb / s.B;
    const int64_t map = (s.L == 1 ? 0 : t) * s.Bl + (s.Bl == 1 ? 0 : b);
    const label_t* lab = labels + map * P;
    const scalar_t* xc = x + (tb * C + c0) * P;  // channel c of the item: xc + c * P
    const int nkeys = cn * static_cast<int>(K);  // <= kKeyMaxSmem / 8

    __syncthreads();  // the previous item's keys have been read
    for (int i = threadIdx.x; i < nkeys; i += blockDim.x) keys[i] = kNoKey;
    __syncthreads();

    // The bounds are the same for every lane of a warp (full-mask shuffles below); lanes
    // past P carry no pixel.
    for (int64_t base = 0; base < P; base += tile) {
      const int64_t p0 = base + 4 * int64_t(threadIdx.x);
      int32_t k[4] = {-1, -1, -1, -1};  // superpixel of pixel p0 + i, -1: none
      if (kQuad) {
        if (p0 < P) {  // P % 4 == 0: the quad is whole
          const Quad<label_t> lq = *reinterpret_cast<const Quad<label_t>*>(lab + p0);
#pragma unroll
          for (int i = 0; i < 4; ++i) k[i] = static_cast<int32_t>(superpixel_of(lq.v[i], K));
        }
      } else {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          if (p0 + i < P) k[i] = static_cast<int32_t>(superpixel_of(lab[p0 + i], K));
        }
      }
      // Lane runs, from the labels only: uni = the quad's superpixel when all 4 pixels
      // have it, else -1. Lane l is linked to l + 1 when both are uniform with the same
      // superpixel; `end` is the last lane of l's run, `head` says no lane before l is
      // linked to it, and `span` is the longest run in lanes (warp-uniform).
      const int32_t uni = (k[0] == k[1] && k[1] == k[2] && k[2] == k[3]) ? k[0] : -1;
      const int32_t next_uni = __shfl_down_sync(kFullMask, uni, 1);
      const unsigned links = __ballot_sync(kFullMask, uni >= 0 && lane < 31 && next_uni == uni);
      const int end = lane + __ffs(static_cast<int>(~links >> lane)) - 1;
      const bool head = lane == 0 || ((links >> (lane - 1)) & 1u) == 0u;
      int span = 1;
      for (unsigned m = links; m != 0u; m &= m << 1) ++span;

      for (int c = 0; c < cn; c += kKeyAhead) {  // cn is the same for the whole block
        float v[kKeyAhead][4];
#pragma unroll
        for (int j = 0; j < kKeyAhead; ++j) {
#pragma unroll
          for (int i = 0; i < 4; ++i) v[j][i] = 0.0f;
          if (c + j < cn) {
            const scalar_t* xp = xc + int64_t(c + j) * P;
            if (kQuad) {
              if (p0 < P) {
                const Quad<scalar_t> xq = *reinterpret_cast<const Quad<scalar_t>*>(xp + p0);
#pragma unroll
                for (int i = 0; i < 4; ++i) v[j][i] = to_acc<float>(xq.v[i]);
              }
            } else {
#pragma unroll
              for (int i = 0; i < 4; ++i) {
                if (p0 + i < P) v[j][i] = to_acc<float>(xp[p0 + i]);
              }
            }
          }
        }
#pragma unroll
        for (int j = 0; j < kKeyAhead; ++j) {
          if (c + j >= cn) break;  // block-uniform
          unsigned long long* row = keys + (c + j) * static_cast<int>(K);
          // Runs of equal labels within the quad: all but the last go to shared memory now.
          unsigned long long run = k[0] >= 0 ? max_key(v[j][0], p0) : kNoKey;
          int32_t rk = k[0];
#pragma unroll
          for (int i = 1; i < 4; ++i) {
            const unsigned long long ki = k[i] >= 0 ? max_key(v[j][i], p0 + i) : kNoKey;
            if (k[i] == rk) {
              run = key_larger(run, ki);
            } else {
              if (rk >= 0) key_max(row + rk, run);
              rk = k[i];
              run = ki;
            }
          }
          // The last run; for a uniform quad, the whole quad. Segmented max down each lane
          // run (lane l ends with the max over lanes l .. end); its head writes it.
          for (int d = 1; d < span; d <<= 1) {
            const unsigned long long other = __shfl_down_sync(kFullMask, run, d);
            if (lane + d <= end) run = key_larger(run, other);
          }
          if (rk >= 0 && head) key_max(row + rk, run);
        }
      }
    }
    __syncthreads();

    // Decode: the winning pixel, and y read from it (the input's exact bits).
    for (int i = threadIdx.x; i < nkeys; i += blockDim.x) {
      const int c = i / static_cast<int>(K);
      const int64_t kk = i - c * static_cast<int>(K);
      const int64_t plane = tb * C + c0 + c;
      const unsigned long long key = keys[i];
      scalar_t out = from_acc<scalar_t, float>(0.0f);
      int32_t arg = -1;
      if (key != kNoKey) {
        arg = 0x7fffffff - static_cast<int32_t>(static_cast<uint32_t>(key));
        out = xc[int64_t(c) * P + arg];
      }
      y[plane * K + kk] = out;
      aux[plane * K + kk] = arg;
    }
  }
}

// Channels per block of the key kernel, 0 when K keys do not fit kKeyMaxSmem.
inline int64_t max_key_group(int64_t planes, int64_t C, int64_t K) {
  if (K <= 0) return 0;
  const int64_t fit = kKeyMaxSmem / (K * int64_t(sizeof(unsigned long long)));
  if (fit == 0) return 0;
  const int64_t want = std::max<int64_t>(1, planes / kKeyBlocksWanted);  // keep >= kKeyBlocksWanted blocks
  return std::max<int64_t>(1, std::min({kKeyChannels, C, fit, want}));
}

template <typename scalar_t, typename label_t>
bool pool_max_key_typed(const void* x, const void* labels, void* y, int32_t* aux, const SupPixShape& s,
                        cudaStream_t stream) {
  const int64_t planes = s.T * s.B * s.C;
  const int64_t group = max_key_group(planes, s.C, s.K);
  if (planes == 0 || s.P == 0 || group == 0) return false;
  const int64_t groups = (s.C + group - 1) / group;
  const int64_t items = s.T * s.B * groups;
  const auto blocks = static_cast<unsigned int>(std::min<int64_t>(items, kMaxGridBlocks));
  // Threads: one per quad of the plane, in whole warps, at most kKeyThreads.
  const int64_t quads = (s.P + 3) / 4;
  const int threads = static_cast<int>(std::min<int64_t>(kKeyThreads, (quads + 31) / 32 * 32));
  const auto smem = static_cast<size_t>(group * s.K * int64_t(sizeof(unsigned long long)));
  const auto* xp = static_cast<const scalar_t*>(x);
  const auto* lp = static_cast<const label_t*>(labels);
  auto* yp = static_cast<scalar_t*>(y);
  const bool quad = s.P % 4 == 0 && quad_aligned<scalar_t>(x) && quad_aligned<label_t>(labels);
  if (quad) {
    suppix_pool_max_key_kernel<scalar_t, label_t, true><<<blocks, threads, smem, stream>>>(xp, lp, yp, aux, s, group,
                                                                                            groups);
  } else {
    suppix_pool_max_key_kernel<scalar_t, label_t, false><<<blocks, threads, smem, stream>>>(xp, lp, yp, aux, s, group,
                                                                                             groups);
  }
  return quad;
}

// grid.x = maps * chunks, chunks = ceil(P / kCountTile); block = kCountThreads;
// dynamic shared memory K int32 when counts is given. counts (zeroed by the
// caller): += pixels per superpixel of each map, through a block histogram and
// integer atomics (exact whatever their order). top (preset by the caller below every
// label it cares about): max= the largest label.
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

// Launches the no-sort kernel of kMode; true when the vector-load 4-pixel variant ran.
template <typename scalar_t, typename label_t, SupPixMode kMode>
bool pool_nosort_typed(const void* x, const void* labels, const int32_t* counts, void* y, int32_t* aux,
                       const SupPixShape& s, cudaStream_t stream) {
  const int64_t planes = s.T * s.B * s.C;
  if (planes == 0 || s.P == 0 || s.K == 0) return false;
  using acc_t = typename Acc<scalar_t>::type;
  const int warps = nosort_warps(s.P);
  const int64_t smem = nosort_smem_bytes(sizeof(acc_t), kMode, s.P, s.K);
  const auto blocks = static_cast<unsigned int>(std::min<int64_t>(planes, kMaxGridBlocks));
  const auto* xp = static_cast<const scalar_t*>(x);
  const auto* lp = static_cast<const label_t*>(labels);
  auto* yp = static_cast<scalar_t*>(y);
  if constexpr (kMode == SupPixMode::Max) {
    const int64_t steps = (s.P + 31) / 32;
    const int64_t span = (steps + warps - 1) / warps * 32;
    suppix_pool_nosort_max_kernel<scalar_t, label_t><<<blocks, warps * 32, static_cast<size_t>(smem), stream>>>(
        xp, lp, yp, aux, s, span);
    return false;
  } else {
    const int64_t steps = (s.P + kQuadStep - 1) / kQuadStep;
    const int64_t span = (steps + warps - 1) / warps * kQuadStep;
    const bool vec = s.P % 4 == 0 && quad_aligned<scalar_t>(x) && quad_aligned<label_t>(labels);
    if (vec) {
      suppix_pool_nosort_quad_kernel<scalar_t, label_t, kMode, true>
          <<<blocks, warps * 32, static_cast<size_t>(smem), stream>>>(xp, lp, counts, yp, aux, s, span);
    } else {
      suppix_pool_nosort_quad_kernel<scalar_t, label_t, kMode, false>
          <<<blocks, warps * 32, static_cast<size_t>(smem), stream>>>(xp, lp, counts, yp, aux, s, span);
    }
    return vec;
  }
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
  // Pixel i repeats pixel i - 1's superpixel (the usual case: superpixels are runs of
  // pixels): it reuses that pixel's loads. Loads per output are the kernel's bottleneck
  // (a warp's loads from a row of src touch many cache sectors), not the stores.
  bool again[4] = {false, false, false, false};
#pragma unroll
  for (int i = 1; i < 4; ++i) again[i] = k[i] == k[i - 1];
  constexpr bool kAuxPerPlane = kMode == SupPixMode::Max || kMode == SupPixMode::AvgSpike;
  const int64_t c0 = cchunk * kTileChannels;
  const int64_t c1 = c0 + kTileChannels < s.C ? c0 + kTileChannels : s.C;
  for (int64_t c = c0; c < c1; ++c) {
    const int64_t plane = tb * s.C + c;
    const scalar_t* g = src + plane * s.K;
    acc_t gv[4];
    int32_t av[4];  // max: the argmax, avg_spike: m, of pixel i's superpixel in this plane
    Quad<scalar_t> q;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      gv[i] = acc_t(0);
      av[i] = 0;
      if (i > 0 && again[i]) {
        gv[i] = gv[i - 1];
        av[i] = av[i - 1];
      } else if (k[i] >= 0) {
        gv[i] = to_acc<acc_t>(g[k[i]]);
        if (kAuxPerPlane) av[i] = aux[plane * s.K + k[i]];
      }
      acc_t v = acc_t(0);
      if (k[i] >= 0) {
        if (kMode == SupPixMode::Sum) {
          v = gv[i];
        } else if (kMode == SupPixMode::Max) {
          v = av[i] == p0 + i ? gv[i] : acc_t(0);
        } else {
          const int32_t m = kMode == SupPixMode::Avg ? n[i] : av[i];
          v = m > 0 ? gv[i] / static_cast<acc_t>(m) : acc_t(0);
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

}  // namespace

void suppix_pool(DType dtype, SupPixMode mode, const void* x, const int32_t* order, const int32_t* offsets, void* y,
                 int32_t* aux, const SupPixShape& s, cudaStream_t stream) {
  with_scalar(dtype, [&](auto sc) {
    with_mode(mode, [&](auto m) {
      pool_typed<typename decltype(sc)::type, decltype(m)::value>(x, order, offsets, y, aux, s, stream);
    });
  });
}

int64_t suppix_pool_nosort_smem(DType dtype, SupPixMode mode, int64_t P, int64_t K) {
  const int64_t acc_bytes = dtype == DType::Double ? int64_t(sizeof(double)) : int64_t(sizeof(float));
  return nosort_smem_bytes(acc_bytes, mode, P, K);
}

bool suppix_pool_nosort_fits(DType dtype, SupPixMode mode, int64_t P, int64_t K) {
  return suppix_pool_nosort_smem(dtype, mode, P, K) <= kNoSortMaxSmem;
}

bool suppix_pool_max_key_fits(int64_t K) { return max_key_group(1, 1, K) > 0; }

bool suppix_pool_max_key(DType dtype, const void* x, const void* labels, bool labels64, void* y, int32_t* aux,
                         const SupPixShape& s, cudaStream_t stream) {
  return with_scalar(dtype, [&](auto sc) {
    using scalar_t = typename decltype(sc)::type;
    if constexpr (std::is_same<scalar_t, double>::value) {
      return false;  // keys of doubles do not fit 32 bits: the no-sort kernel takes them
    } else {
      return with_label(labels64, [&](auto lb) {
        return pool_max_key_typed<scalar_t, typename decltype(lb)::type>(x, labels, y, aux, s, stream);
      });
    }
  });
}

bool suppix_pool_nosort(DType dtype, SupPixMode mode, const void* x, const void* labels, bool labels64,
                        const int32_t* counts, void* y, int32_t* aux, const SupPixShape& s, cudaStream_t stream) {
  return with_scalar(dtype, [&](auto sc) {
    return with_label(labels64, [&](auto lb) {
      return with_mode(mode, [&](auto m) {
        return pool_nosort_typed<typename decltype(sc)::type, typename decltype(lb)::type, decltype(m)::value>(
            x, labels, counts, y, aux, s, stream);
      });
    });
  });
}

void suppix_count(const void* labels, bool labels64, int32_t* counts, int64_t* top, int64_t maps, int64_t P,
                  int64_t K, cudaStream_t stream) {
  with_label(labels64, [&](auto lb) {
    count_typed<typename decltype(lb)::type>(labels, counts, top, maps, P, K, stream);
  });
}

bool suppix_gather(DType dtype, SupPixMode mode, const void* src, const void* labels, bool labels64,
                   const int32_t* aux, void* out, const SupPixShape& s, bool allow_tiled, cudaStream_t stream) {
  return with_scalar(dtype, [&](auto sc) {
    return with_label(labels64, [&](auto lb) {
      return with_mode(mode, [&](auto m) {
        return gather_typed<typename decltype(sc)::type, typename decltype(lb)::type, decltype(m)::value>(
            src, labels, aux, out, s, allow_tiled, stream);
      });
    });
  });
}

}  // namespace cuda
}  // namespace snnspx
