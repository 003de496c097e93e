// Launchers of the superpixel kernels (suppix.cu) for the CUDA glue (suppix.cpp).
// Light on purpose: no ATen, so nvcc never parses torch headers.
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
};

// Segment reduction. order: int32 [L, Bl, P], each label map's pixel indices stably
// sorted by label (so ascending within a superpixel); offsets: int32 [L, Bl, K + 1],
// superpixel k of a map is order[offsets[k] .. offsets[k + 1]). One warp reduces one
// (t, b, c, k) segment with a fixed lane assignment and a fixed shuffle tree: the
// same bits on every run, no atomics.
// y: [T, B, C, K] of `dtype`; aux: int32 [T, B, C, K] for Max (argmax) and AvgSpike (m),
// unused (may be null) for Sum and Avg.
void suppix_pool(DType dtype, SupPixMode mode, const void* x, const int32_t* order, const int32_t* offsets,
                 void* y, int32_t* aux, const SupPixShape& s, cudaStream_t stream);

// No-sort pooling forward (the glue's default where it fits, except for max of Float,
// Half and BFloat16, which suppix_pool_max_key takes; SNNSPX_LEGACY_CUDA=1 selects the
// sorted path instead). labels: [L, Bl, P], int64 when labels64. One block
// per (t, b, c) plane; each warp folds its own run of pixels into a private row of K
// accumulators in shared memory, and the rows are folded in warp order: no atomics,
// the same bits on every run. Sum, Avg and AvgSpike: a lane takes 4 consecutive pixels,
// adds its runs of one superpixel in registers (ascending pixels), and the warp folds
// the lanes' runs round by round (round r: each lane's r-th run; lanes with one
// superpixel grouped by __match_any_sync and summed by the lowest in ascending lane
// order). Max (Double in practice): one pixel per lane, 32 at a time, the same grouping.
// counts: int32 [L, Bl, K] (see suppix_count), read by Avg and AvgSpike, may be null
// otherwise. y, aux: as suppix_pool. Returns true when the vector-load variant of the
// 4-pixel kernel ran (Sum, Avg or AvgSpike, P % 4 == 0, x and labels Quad-aligned),
// false otherwise (its scalar-load variant, same results; or Max). Needs T * B * C > 0,
// P > 0, K > 0 and suppix_pool_nosort_fits.
bool suppix_pool_nosort(DType dtype, SupPixMode mode, const void* x, const void* labels, bool labels64,
                        const int32_t* counts, void* y, int32_t* aux, const SupPixShape& s, cudaStream_t stream);

// Bytes of (dynamic) shared memory suppix_pool_nosort needs: warps * K * (accumulator
// size + 4 for max's argmax / avg_spike's m), warps = min(8, ceil(P / 128)).
int64_t suppix_pool_nosort_smem(DType dtype, SupPixMode mode, int64_t P, int64_t K);
// Whether that is at most 48 KiB (the default limit of dynamic shared memory).
bool suppix_pool_nosort_fits(DType dtype, SupPixMode mode, int64_t P, int64_t K);

// Max pooling of Float, Half and BFloat16 by 64-bit keys (the glue's default for mode Max
// where it fits; Double takes suppix_pool_nosort). A pixel's key is its value mapped to an
// ordered uint32 (NaN above +inf, -0.0 as +0.0) above 0x7fffffff - (its pixel index), so
// the largest key is max_prefer's choice; a block takes up to 8 channels of one (t, b)
// (labels read once for all), keeps their group * K keys in shared memory and takes their
// max with a compare-and-swap loop: order-independent, the same bits on every run. y is
// read back from x at the argmax (the input's exact bits), 0 where a superpixel is empty;
// aux: int32 argmax [T, B, C, K], -1 where empty. labels: [L, Bl, P], int64 when labels64;
// labels outside [0, K) are ignored. Where P % 4 == 0 and x and labels are Quad-aligned,
// the vector-load variant runs and the call returns true; otherwise the scalar-load
// variant (same results), false. Needs T * B * C > 0, P > 0 and
// suppix_pool_max_key_fits(K); dtype Double does nothing (returns false).
bool suppix_pool_max_key(DType dtype, const void* x, const void* labels, bool labels64, void* y, int32_t* aux,
                         const SupPixShape& s, cudaStream_t stream);
// Whether K keys (8 bytes each, one channel per block) fit 48 KiB of shared memory: 0 < K <= 6144.
bool suppix_pool_max_key_fits(int64_t K);

// Over `maps` label maps [maps, P] (int64 when labels64), each optional:
// counts (int32 [maps, K], zeroed by the caller): += the pixels of each superpixel
// (labels outside [0, K) skipped; integer atomics, exact); top (one int64, preset by the
// caller to a value below every label it cares about, e.g. INT64_MIN): max= the largest
// label. K * 4 bytes of shared memory
// (at most 48 KiB) when counts is given.
void suppix_count(const void* labels, bool labels64, int32_t* counts, int64_t* top, int64_t maps, int64_t P,
                  int64_t K, cudaStream_t stream);

// out[t, b, c, p] = f(src[t, b, c, labels[p]]), 0 where the label is outside [0, K):
// Sum: the value; Avg: / aux[l, b, k] (counts [L, Bl, K]); AvgSpike: / aux[t, b, c, k];
// Max: the value where aux[t, b, c, k] == p, else 0. Labels are int64 when labels64.
// Serves the pooling backward and unpooling. One write per output element. With
// allow_tiled, P % 4 == 0 and labels and out aligned to 4 elements, the tiled kernel
// runs (4 pixels per thread, labels read once for a run of channels, vector stores;
// the same bits) and the call returns true; otherwise the one-pixel kernel, false.
bool suppix_gather(DType dtype, SupPixMode mode, const void* src, const void* labels, bool labels64,
                   const int32_t* aux, void* out, const SupPixShape& s, bool allow_tiled, cudaStream_t stream);

}  // namespace cuda
}  // namespace snnspx
