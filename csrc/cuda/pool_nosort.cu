// "nosort" superpixel pooling (docs/maths.md §5), with no per-call sort. A block takes
// one (t, b, c) plane; each warp walks its own contiguous run of pixels 32 at a time and
// folds each step's lanes into a warp-private row of K accumulators in shared memory
// (lanes with the same label are grouped with __match_any_sync and summed by their lowest
// lane in ascending lane order: one writer per row entry, steps in order), then the rows
// are folded in warp order. The pixel counts come from the count kernel (count.cu).
#include <algorithm>
#include <cstdint>

#include "pool.cuh"

namespace snnspx {
namespace cuda {
namespace {

// One 32-pixel step of a warp: lane `lane` holds pixel `pix` with value v and
// superpixel `key` (-1: ignored or past the warp's run). The lanes with the same
// key form a group; its lowest lane (the leader) pulls the others in ascending
// lane order and folds the group into the warp's row. Every lane of the warp
// must call this (full-mask shuffles).
template <typename acc_t, PoolMode kMode>
__device__ __forceinline__ void nosort_step(int32_t key, acc_t v, int32_t pix, int lane, acc_t* row,
                                            int32_t* row_idx) {
  const unsigned peers = __match_any_sync(kFullMask, key);
  const bool leader = key >= 0 && lane == __ffs(peers) - 1;
  unsigned rem = leader ? (peers & (peers - 1u)) : 0u;  // the other members, lowest lane first
  if (kMode == PoolMode::Max) {
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
    if (kMode == PoolMode::AvgSpike) nonzero = __popc(peers & __ballot_sync(kFullMask, v != acc_t(0)));
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
      if (kMode == PoolMode::AvgSpike) row_idx[key] += nonzero;
    }
  }
  __syncwarp();  // the next step's leader of the same superpixel may be another lane: order the row update
}

// grid.x = min(T * B * C, kMaxGridBlocks), blocks stride over the planes; block =
// 32 * nosort_warps(P) threads; dynamic shared memory nosort_smem_bytes(...): acc_t
// rows [warps][K] then (max: argmax, avg_spike: m) int32 rows [warps][K].
// Warp w walks pixels [w * span, min(P, (w + 1) * span)). counts: int32 [L, Bl, K]
// (read by avg and avg_spike).
template <typename scalar_t, typename label_t, PoolMode kMode>
__global__ void __launch_bounds__(kPoolThreads)
suppix_pool_nosort_kernel(const scalar_t* __restrict__ x, const label_t* __restrict__ labels,
                          const int32_t* __restrict__ counts, scalar_t* __restrict__ y, int32_t* __restrict__ aux,
                          SupPixShape s, int64_t span) {
  using acc_t = typename Acc<scalar_t>::type;
  constexpr bool kIdx = kMode == PoolMode::Max || kMode == PoolMode::AvgSpike;
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
    const int64_t map = s.labels().map(t, b);
    const label_t* lab = labels + map * P;
    const scalar_t* xp = x + plane * P;

    __syncthreads();  // the previous plane's rows have been read
    for (int64_t i = threadIdx.x; i < rows; i += blockDim.x) {
      acc[i] = kMode == PoolMode::Max ? neg_inf<acc_t>() : acc_t(0);
      if (kIdx) idx[i] = kMode == PoolMode::Max ? kNoPixel : 0;
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
      if (kMode == PoolMode::Max) {
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
          if (kMode == PoolMode::AvgSpike) nonzero += idx[int64_t(w) * K + k];
        }
        if (kMode != PoolMode::Sum) {
          const int32_t n = counts[map * K + k];
          sum = n > 0 ? sum / static_cast<acc_t>(n) : acc_t(0);
        }
        yp[k] = from_acc<scalar_t, acc_t>(sum);
        if (kMode == PoolMode::AvgSpike) aux[plane * K + k] = nonzero;
      }
    }
  }
}

template <typename scalar_t, typename label_t, PoolMode kMode>
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

}  // namespace

int64_t suppix_pool_nosort_smem(DType dtype, PoolMode mode, int64_t P, int64_t K) {
  const int64_t acc_bytes = dtype == DType::Double ? int64_t(sizeof(double)) : int64_t(sizeof(float));
  return nosort_smem_bytes(acc_bytes, mode, P, K);
}

bool suppix_pool_nosort_fits(DType dtype, PoolMode mode, int64_t P, int64_t K) {
  return suppix_pool_nosort_smem(dtype, mode, P, K) <= kNoSortMaxSmem;
}

void suppix_pool_nosort(DType dtype, PoolMode mode, const void* x, const void* labels, bool labels64,
                        const int32_t* counts, void* y, int32_t* aux, const SupPixShape& s, cudaStream_t stream) {
  with_scalar(dtype, [&](auto sc) {
    with_label(labels64, [&](auto lb) {
      with_pool_mode(mode, [&](auto m) {
        pool_nosort_typed<typename decltype(sc)::type, typename decltype(lb)::type, decltype(m)::value>(
            x, labels, counts, y, aux, s, stream);
      });
    });
  });
}

}  // namespace cuda
}  // namespace snnspx
