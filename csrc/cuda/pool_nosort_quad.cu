// "nosort_quad" superpixel pooling of sum, avg and avg_spike (docs/maths.md §5): the warp
// rows of "nosort" (pool_nosort.cu), with 4 pixels a lane. Opt-in only (cuda/strategy.h):
// it has not passed the GPU check yet.
#include <algorithm>
#include <cstdint>

#include "pool.cuh"

namespace snnspx {
namespace cuda {
namespace {

constexpr int64_t kQuadStep = 32 * 4;
// Steps of kQuadStep pixels loaded before the first is folded.
constexpr int kQuadAhead = 2;

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
// Per 128 pixels of a warp: one __match_any_sync, any_sync and shuffle per extra group
// member and one __syncwarp per round; superpixels that are runs of 4 or more aligned
// pixels take one round, in which each superpixel of the step has a group of one lane
// per image row it spans.

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
template <typename scalar_t, typename label_t, PoolMode kMode, bool kVec>
__global__ void __launch_bounds__(kPoolThreads)
suppix_pool_nosort_quad_kernel(const scalar_t* __restrict__ x, const label_t* __restrict__ labels,
                               const int32_t* __restrict__ counts, scalar_t* __restrict__ y, int32_t* __restrict__ aux,
                               SupPixShape s, int64_t span) {
  static_assert(kMode != PoolMode::Max, "max takes the nosort or max_key kernel");
  using acc_t = typename Acc<scalar_t>::type;
  constexpr bool kSpike = kMode == PoolMode::AvgSpike;
  const int64_t K = s.K, P = s.P;
  const NoSortWarp nw(P, K, span);
  const int warps = nw.warps, warp = nw.warp, lane = nw.lane;
  const int64_t rows = nw.rows, w0 = nw.w0, w1 = nw.w1;
  acc_t* acc = reinterpret_cast<acc_t*>(suppix_smem);
  int32_t* nzs = reinterpret_cast<int32_t*>(acc + rows);
  acc_t* row = acc + int64_t(warp) * K;
  int32_t* row_nz = nzs + int64_t(warp) * K;

  for (int64_t plane = blockIdx.x; plane < s.T * s.B * s.C; plane += gridDim.x) {
    const int64_t tb = plane / s.C;
    const int64_t map = s.labels().map(tb / s.B, tb % s.B);
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
      if (kMode != PoolMode::Sum) {
        const int32_t n = counts[map * K + kk];
        sum = n > 0 ? sum / static_cast<acc_t>(n) : acc_t(0);
      }
      yp[kk] = from_acc<scalar_t, acc_t>(sum);
      if (kSpike) aux[plane * K + kk] = nonzero;
    }
  }
}

template <typename scalar_t, typename label_t, PoolMode kMode>
void pool_quad_typed(const void* x, const void* labels, const int32_t* counts, void* y, int32_t* aux,
                     const SupPixShape& s, cudaStream_t stream) {
  const int64_t planes = s.T * s.B * s.C;
  if (planes == 0 || s.P == 0 || s.K == 0) return;
  using acc_t = typename Acc<scalar_t>::type;
  const int warps = nosort_warps(s.P);
  const int64_t smem = nosort_smem_bytes(sizeof(acc_t), kMode, s.P, s.K);
  const auto blocks = static_cast<unsigned int>(std::min<int64_t>(planes, kMaxGridBlocks));
  const auto* xp = static_cast<const scalar_t*>(x);
  const auto* lp = static_cast<const label_t*>(labels);
  auto* yp = static_cast<scalar_t*>(y);
  const int64_t steps = (s.P + kQuadStep - 1) / kQuadStep;
  const int64_t span = (steps + warps - 1) / warps * kQuadStep;
  if (s.P % 4 == 0 && quad_aligned<scalar_t>(x) && quad_aligned<label_t>(labels)) {
    suppix_pool_nosort_quad_kernel<scalar_t, label_t, kMode, true>
        <<<blocks, warps * 32, static_cast<size_t>(smem), stream>>>(xp, lp, counts, yp, aux, s, span);
  } else {
    suppix_pool_nosort_quad_kernel<scalar_t, label_t, kMode, false>
        <<<blocks, warps * 32, static_cast<size_t>(smem), stream>>>(xp, lp, counts, yp, aux, s, span);
  }
}

}  // namespace

void suppix_pool_nosort_quad(DType dtype, PoolMode mode, const void* x, const void* labels, bool labels64,
                             const int32_t* counts, void* y, int32_t* aux, const SupPixShape& s,
                             cudaStream_t stream) {
  with_scalar(dtype, [&](auto sc) {
    using scalar_t = typename decltype(sc)::type;
    with_label(labels64, [&](auto lb) {
      using label_t = typename decltype(lb)::type;
      with_pool_mode(mode, [&](auto m) {
        constexpr PoolMode kMode = decltype(m)::value;
        if constexpr (kMode != PoolMode::Max) {
          pool_quad_typed<scalar_t, label_t, kMode>(x, labels, counts, y, aux, s, stream);
        }
      });
    });
  });
}

}  // namespace cuda
}  // namespace snnspx
