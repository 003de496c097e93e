// The label count of superpixel pooling and the fused op: pixels per superpixel of each
// label map and, for the label range check, the largest label. Integer atomics give the
// same result in any order.
#include <cstdint>

#include "pool.cuh"

namespace snnspx {
namespace cuda {
namespace {

constexpr int kCountThreads = 256;
constexpr int64_t kCountTile = int64_t(kCountThreads) * 32;
// Counts of K superpixels go through a block histogram in shared memory while they fit it.
constexpr int64_t kCountMaxSmem = 48 * 1024;
constexpr long long kMinLabel = -0x7fffffffffffffffLL - 1;

// grid.x = maps * chunks, chunks = ceil(P / kCountTile); block = kCountThreads;
// dynamic shared memory K int32 when counts is given and kShared. counts (zeroed by the
// caller): += pixels per superpixel of each map, through a block histogram (kShared) or
// straight into global memory, with integer atomics (exact whatever their order). top
// (preset by the caller below every label it cares about): max= the largest label.
template <typename label_t, bool kShared>
__global__ void __launch_bounds__(kCountThreads)
suppix_count_kernel(const label_t* __restrict__ labels, int32_t* __restrict__ counts, long long* __restrict__ top,
                    int64_t P, int64_t K, int64_t chunks) {
  const int64_t map = blockIdx.x / chunks;
  const int64_t chunk = blockIdx.x - map * chunks;
  int32_t* hist = kShared ? reinterpret_cast<int32_t*>(suppix_smem) : counts + map * K;
  if (kShared && counts != nullptr) {
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
  if (kShared && counts != nullptr) {
    __syncthreads();
    for (int64_t k = threadIdx.x; k < K; k += kCountThreads) {
      if (hist[k] != 0) atomicAdd(&counts[map * K + k], hist[k]);
    }
  }
}

template <typename label_t>
void count_typed(const void* labels, int32_t* counts, int64_t* top, int64_t maps, int64_t P, int64_t K,
                 cudaStream_t stream) {
  if (maps == 0 || P == 0 || (counts == nullptr && top == nullptr)) return;
  const int64_t chunks = (P + kCountTile - 1) / kCountTile;
  const auto blocks = static_cast<unsigned int>(maps * chunks);
  const auto* lp = static_cast<const label_t*>(labels);
  auto* tp = reinterpret_cast<long long*>(top);
  const int64_t hist_bytes = K * int64_t(sizeof(int32_t));
  if (counts == nullptr || hist_bytes <= kCountMaxSmem) {
    const size_t smem = counts != nullptr ? static_cast<size_t>(hist_bytes) : 0;
    suppix_count_kernel<label_t, true><<<blocks, kCountThreads, smem, stream>>>(lp, counts, tp, P, K, chunks);
  } else {
    suppix_count_kernel<label_t, false><<<blocks, kCountThreads, 0, stream>>>(lp, counts, tp, P, K, chunks);
  }
}

}  // namespace

void suppix_count(const void* labels, bool labels64, int32_t* counts, int64_t* top, int64_t maps, int64_t P,
                  int64_t K, cudaStream_t stream) {
  with_label(labels64, [&](auto lb) {
    count_typed<typename decltype(lb)::type>(labels, counts, top, maps, P, K, stream);
  });
}

}  // namespace cuda
}  // namespace snnspx
