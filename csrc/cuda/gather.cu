// The gathers of superpixel pooling (docs/maths.md §5): the pooling backward and
// unpooling write each output pixel once from its superpixel's value (max: only at the
// argmax pixel). "one_pixel": one thread per pixel. "tiled": a thread reads the labels of
// 4 consecutive pixels once and writes them for a run of channels, one streaming vector
// store per channel. "tiled_reuse" (opt-in, cuda/strategy.h: it has not passed the GPU
// check yet): "tiled" reusing a repeated superpixel's loads. All copy or divide the same
// values, so they give the same bits.
#include <algorithm>
#include <cstdint>

#include "pool.cuh"

namespace snnspx {
namespace cuda {
namespace {

constexpr int kGatherThreads = 256;
constexpr int kGatherItems = 4;
constexpr int64_t kGatherTile = int64_t(kGatherThreads) * kGatherItems;

// grid.x = T * B * C * chunks, chunks = ceil(P / kGatherTile); block = kGatherThreads.
template <typename scalar_t, typename label_t, PoolMode kMode>
__global__ void __launch_bounds__(kGatherThreads)
suppix_gather_kernel(const scalar_t* __restrict__ src, const label_t* __restrict__ labels,
                     const int32_t* __restrict__ aux, scalar_t* __restrict__ out, SupPixShape s, int64_t chunks) {
  using acc_t = typename Acc<scalar_t>::type;
  const int64_t plane = blockIdx.x / chunks;
  const int64_t chunk = blockIdx.x - plane * chunks;
  const int64_t tb = plane / s.C;
  const int64_t b = tb % s.B, t = tb / s.B;
  const int64_t map = s.labels().map(t, b);
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
      if (kMode == PoolMode::Sum) {
        v = gv;
      } else if (kMode == PoolMode::Max) {
        v = aux[plane * s.K + k] == p ? gv : acc_t(0);
      } else {
        const int32_t n = kMode == PoolMode::Avg ? aux[map * s.K + k] : aux[plane * s.K + k];
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

template <typename scalar_t, typename label_t, PoolMode kMode>
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
  const int64_t map = s.labels().map(t, b);
  const int64_t p0 = ptile * kTilePixels + 4 * int64_t(threadIdx.x);
  if (p0 >= s.P) return;  // P % 4 == 0: a quad is whole or absent
  const Quad<label_t> lq = *reinterpret_cast<const Quad<label_t>*>(labels + map * s.P + p0);
  int64_t k[4];
  int32_t n[4] = {0, 0, 0, 0};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    k[i] = superpixel_of(lq.v[i], s.K);
    if (kMode == PoolMode::Avg && k[i] >= 0) n[i] = aux[map * s.K + k[i]];
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
        if (kMode == PoolMode::Sum) {
          v = gv;
        } else if (kMode == PoolMode::Max) {
          v = aux[plane * s.K + k[i]] == p0 + i ? gv : acc_t(0);
        } else {
          const int32_t m = kMode == PoolMode::Avg ? n[i] : aux[plane * s.K + k[i]];
          v = m > 0 ? gv / static_cast<acc_t>(m) : acc_t(0);
        }
      }
      q.v[i] = from_acc<scalar_t, acc_t>(v);
    }
    store_quad_cs(reinterpret_cast<Quad<scalar_t>*>(out + plane * s.P + p0), q);
  }
}

// "tiled_reuse": the tiled gather's grid and needs (same values, bit for bit).
template <typename scalar_t, typename label_t, PoolMode kMode>
__global__ void __launch_bounds__(kGatherThreads)
suppix_gather_tiled_reuse_kernel(const scalar_t* __restrict__ src, const label_t* __restrict__ labels,
                           const int32_t* __restrict__ aux, scalar_t* __restrict__ out, SupPixShape s,
                           int64_t cchunks, int64_t ptiles) {
  using acc_t = typename Acc<scalar_t>::type;
  const int64_t ptile = blockIdx.x % ptiles;
  const int64_t rest = blockIdx.x / ptiles;
  const int64_t cchunk = rest % cchunks;
  const int64_t tb = rest / cchunks;
  const int64_t b = tb % s.B, t = tb / s.B;
  const int64_t map = s.labels().map(t, b);
  const int64_t p0 = ptile * kTilePixels + 4 * int64_t(threadIdx.x);
  if (p0 >= s.P) return;  // P % 4 == 0: a quad is whole or absent
  const Quad<label_t> lq = *reinterpret_cast<const Quad<label_t>*>(labels + map * s.P + p0);
  int64_t k[4];
  int32_t n[4] = {0, 0, 0, 0};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    k[i] = superpixel_of(lq.v[i], s.K);
    if (kMode == PoolMode::Avg && k[i] >= 0) n[i] = aux[map * s.K + k[i]];
  }
  // Pixel i repeats pixel i - 1's superpixel (the usual case: superpixels are runs of
  // pixels): it reuses that pixel's loads, so a warp's loads from a row of src touch
  // fewer cache sectors.
  bool again[4] = {false, false, false, false};
#pragma unroll
  for (int i = 1; i < 4; ++i) again[i] = k[i] == k[i - 1];
  constexpr bool kAuxPerPlane = kMode == PoolMode::Max || kMode == PoolMode::AvgSpike;
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
        if (kMode == PoolMode::Sum) {
          v = gv[i];
        } else if (kMode == PoolMode::Max) {
          v = av[i] == p0 + i ? gv[i] : acc_t(0);
        } else {
          const int32_t m = kMode == PoolMode::Avg ? n[i] : av[i];
          v = m > 0 ? gv[i] / static_cast<acc_t>(m) : acc_t(0);
        }
      }
      q.v[i] = from_acc<scalar_t, acc_t>(v);
    }
    store_quad_cs(reinterpret_cast<Quad<scalar_t>*>(out + plane * s.P + p0), q);
  }
}

template <typename scalar_t, typename label_t, PoolMode kMode>
void gather_typed(const void* src, const void* labels, const int32_t* aux, void* out, const SupPixShape& s,
                  GatherKernel kernel, cudaStream_t stream) {
  const int64_t planes = s.T * s.B * s.C;
  if (planes == 0 || s.P == 0) return;
  const auto* sp = static_cast<const scalar_t*>(src);
  const auto* lp = static_cast<const label_t*>(labels);
  auto* op = static_cast<scalar_t*>(out);
  if (kernel != GatherKernel::OnePixel) {
    const int64_t cchunks = (s.C + kTileChannels - 1) / kTileChannels;
    const int64_t ptiles = (s.P + kTilePixels - 1) / kTilePixels;
    // At most planes * ceil(P / 1024) blocks, which the glue bounds below 2^31.
    const auto blocks = static_cast<unsigned int>(s.T * s.B * cchunks * ptiles);
    if (kernel == GatherKernel::Tiled) {
      suppix_gather_tiled_kernel<scalar_t, label_t, kMode><<<blocks, kGatherThreads, 0, stream>>>(
          sp, lp, aux, op, s, cchunks, ptiles);
    } else {
      suppix_gather_tiled_reuse_kernel<scalar_t, label_t, kMode><<<blocks, kGatherThreads, 0, stream>>>(
          sp, lp, aux, op, s, cchunks, ptiles);
    }
    return;
  }
  const int64_t chunks = (s.P + kGatherTile - 1) / kGatherTile;
  const unsigned int blocks = static_cast<unsigned int>(planes * chunks);
  suppix_gather_kernel<scalar_t, label_t, kMode><<<blocks, kGatherThreads, 0, stream>>>(sp, lp, aux, op, s, chunks);
}

}  // namespace

void suppix_gather(DType dtype, PoolMode mode, const void* src, const void* labels, bool labels64,
                   const int32_t* aux, void* out, const SupPixShape& s, GatherKernel kernel, cudaStream_t stream) {
  with_scalar(dtype, [&](auto sc) {
    with_label(labels64, [&](auto lb) {
      with_pool_mode(mode, [&](auto m) {
        gather_typed<typename decltype(sc)::type, typename decltype(lb)::type, decltype(m)::value>(
            src, labels, aux, out, s, kernel, stream);
      });
    });
  });
}

}  // namespace cuda
}  // namespace snnspx
