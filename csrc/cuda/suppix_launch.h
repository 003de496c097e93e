// Launchers of the superpixel kernels (pool_*.cu, gather.cu, count.cu) for the CUDA glue
// (suppix.cpp, fused.cpp, strategy.cpp). Light on purpose: no ATen, so nvcc never parses
// torch headers. Each launcher runs one strategy; cuda/strategy.h says which applies.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "../suppix_core.h"
#include "launch.h"

namespace snnspx {
namespace cuda {

// Shapes of one call: x/grad_x [T, B, C, P], y/grad_y [T, B, C, K], label maps [L, Bl, P]
// with L in {1, T} and Bl in {1, B}.
struct SupPixShape {
  int64_t T, B, C, P, K, L, Bl;
  SNNSPX_HD LabelLayout labels() const { return LabelLayout{L, Bl, P}; }
};

// Whether p is aligned for a vector access of 4 elements of elem_bytes each (Quad in
// common.cuh), as the 4-pixel kernels need.
inline bool quad_aligned_bytes(const void* p, int64_t elem_bytes) {
  return reinterpret_cast<uintptr_t>(p) % static_cast<uintptr_t>(4 * elem_bytes) == 0;
}

// "sorted" pooling (pool_sorted.cu). order: int32 [L, Bl, P], each label map's pixel
// indices stably sorted by label (so ascending within a superpixel); offsets: int32
// [L, Bl, K + 1], superpixel k of a map is order[offsets[k] .. offsets[k + 1]). One warp
// reduces one (t, b, c, k) segment with a fixed lane assignment and a fixed shuffle tree:
// the same bits on every run, no atomics. y: [T, B, C, K] of `dtype`; aux: int32
// [T, B, C, K] for Max (argmax) and AvgSpike (m), unused (may be null) for Sum and Avg.
void suppix_pool_sorted(DType dtype, PoolMode mode, const void* x, const int32_t* order, const int32_t* offsets,
                        void* y, int32_t* aux, const SupPixShape& s, cudaStream_t stream);

// Bytes of (dynamic) shared memory of the "nosort" and "nosort_quad" kernels: warps * K *
// (accumulator size + 4 for max's argmax / avg_spike's m), warps = min(8, ceil(P / 128)).
int64_t suppix_pool_nosort_smem(DType dtype, PoolMode mode, int64_t P, int64_t K);
// Whether that is at most 48 KiB (the default limit of dynamic shared memory).
bool suppix_pool_nosort_fits(DType dtype, PoolMode mode, int64_t P, int64_t K);

// "nosort" pooling (pool_nosort.cu), any mode: one block per (t, b, c) plane; each warp
// walks its own run of pixels 32 at a time and folds each step's lanes into a private row
// of K accumulators in shared memory (lanes with one superpixel grouped by
// __match_any_sync and folded by the lowest in ascending lane order), then the rows are
// folded in warp order: no atomics, the same bits on every run. labels: [L, Bl, P], int64
// when labels64. counts: int32 [L, Bl, K] (suppix_count), read by Avg and AvgSpike. y, aux:
// as suppix_pool_sorted. Needs T * B * C > 0, P > 0, K > 0 and suppix_pool_nosort_fits.
void suppix_pool_nosort(DType dtype, PoolMode mode, const void* x, const void* labels, bool labels64,
                        const int32_t* counts, void* y, int32_t* aux, const SupPixShape& s, cudaStream_t stream);

// "nosort_quad" pooling (pool_nosort_quad.cu) of Sum, Avg and AvgSpike: the warp rows of
// "nosort", but a lane takes 4 consecutive pixels, adds its runs of one superpixel in
// registers (ascending pixels), and the warp folds the lanes' runs round by round.
// Vector loads of x and labels where P % 4 == 0 and both are Quad-aligned, scalar loads
// otherwise (same results). Same arguments and needs as suppix_pool_nosort; not Max.
void suppix_pool_nosort_quad(DType dtype, PoolMode mode, const void* x, const void* labels, bool labels64,
                             const int32_t* counts, void* y, int32_t* aux, const SupPixShape& s,
                             cudaStream_t stream);

// "max_key" pooling (pool_max_key.cu): Max of Float, Half and BFloat16 as a max of 64-bit
// keys (value mapped to an ordered uint32 above 0x7fffffff - pixel), taken with
// shared-memory compare-and-swap loops: order-independent, the same bits on every run. y
// is read back from x at the argmax (the input's exact bits), 0 where a superpixel is
// empty; aux: int32 argmax [T, B, C, K], -1 where empty. Needs T * B * C > 0, P > 0 and
// suppix_pool_max_key_fits(K); dtype Double does nothing.
void suppix_pool_max_key(DType dtype, const void* x, const void* labels, bool labels64, void* y, int32_t* aux,
                         const SupPixShape& s, cudaStream_t stream);
// Whether K keys (8 bytes each, one channel per block) fit 48 KiB of shared memory: 0 < K <= 6144.
bool suppix_pool_max_key_fits(int64_t K);

// The label count of pooling and the fused op (count.cu), over `maps` label maps
// [maps, P] (int64 when labels64), each output optional: counts (int32 [maps, K], zeroed
// by the caller): += the pixels of each superpixel (labels outside [0, K) skipped;
// integer atomics, exact in any order); top (one int64, preset by the caller below every
// label it cares about, e.g. INT64_MIN): max= the largest label.
void suppix_count(const void* labels, bool labels64, int32_t* counts, int64_t* top, int64_t maps, int64_t P,
                  int64_t K, cudaStream_t stream);

// The gathers (gather.cu): out[t, b, c, p] = f(src[t, b, c, labels[p]]), 0 where the label
// is outside [0, K): Sum: the value; Avg: / aux[l, b, k] (counts [L, Bl, K]); AvgSpike:
// / aux[t, b, c, k]; Max: the value where aux[t, b, c, k] == p, else 0. One write per
// output element; every kernel gives the same bits. Serves the pooling backward and
// unpooling.
//   OnePixel:   one thread per output pixel.
//   Tiled:      4 pixels per thread, labels read once for a run of 8 channels, one
//               streaming vector store per channel. Needs P % 4 == 0 and labels, out
//               Quad-aligned.
//   TiledReuse: Tiled, where a pixel in the superpixel of the pixel before it reuses that
//               pixel's loads of src and aux. Same needs.
enum class GatherKernel : int { OnePixel = 0, Tiled = 1, TiledReuse = 2 };
void suppix_gather(DType dtype, PoolMode mode, const void* src, const void* labels, bool labels64,
                   const int32_t* aux, void* out, const SupPixShape& s, GatherKernel kernel, cudaStream_t stream);

}  // namespace cuda
}  // namespace snnspx
