// "max_key" superpixel max pooling of float, half and bfloat16 (docs/maths.md §5) as a max
// of 64-bit keys. Opt-in only (cuda/strategy.h): it has not passed the GPU check yet.
#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "pool.cuh"

namespace snnspx {
namespace cuda {
namespace {

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
// atomicCAS (64-bit atomicMax on shared memory is itself a CAS loop, without the early
// exit).

constexpr int kKeyThreads = 256;
// At most this many channels per block (the labels are read once for all of them), fewer
// when the keys would not fit kKeyMaxSmem or the grid would have fewer than
// kKeyBlocksWanted blocks (several waves of blocks, so that a partial last wave costs
// little).
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
    const int64_t map = s.labels().map(t, b);
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

}  // namespace

bool suppix_pool_max_key_fits(int64_t K) { return max_key_group(1, 1, K) > 0; }

void suppix_pool_max_key(DType dtype, const void* x, const void* labels, bool labels64, void* y, int32_t* aux,
                         const SupPixShape& s, cudaStream_t stream) {
  with_scalar(dtype, [&](auto sc) {
    using scalar_t = typename decltype(sc)::type;
    if constexpr (!std::is_same<scalar_t, double>::value) {  // keys of doubles do not fit 32 bits
      with_label(labels64, [&](auto lb) {
        pool_max_key_typed<scalar_t, typename decltype(lb)::type>(x, labels, y, aux, s, stream);
      });
    }
  });
}

}  // namespace cuda
}  // namespace snnspx
