// CPU kernels of superpixel pooling (docs/maths.md §5), parallel over (t, b, c) planes
// with at::parallel_for. Each plane is scanned in ascending pixel order into K
// accumulators, so every sum is taken in ascending pixel order, on every run and
// with any thread count (no segment sort is needed on the CPU: the scan order is
// the determinism). Max takes one branch-free pass, from the last pixel to the first,
// that leaves the lowest pixel holding each maximum (max has a total order, so its
// order of visits does not change the result). The backward and
// unpooling are gathers (every output pixel written once from its superpixel's
// value); max's backward writes zeros and then each superpixel's gradient at its
// argmax, one distinct pixel per superpixel.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <type_traits>
#include <cstring>
#include <limits>
#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define SNNSPX_CPU_X86 1
#include <immintrin.h>
#endif

#include "../kernel_counter.h"
#include "../suppix_core.h"
#include "../suppix_glue.h"

namespace snnspx {
namespace {

// Planes per task: at least ~16k pixels of work each.
inline int64_t plane_grain(int64_t P) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(P, 1)); }

// Index of the label map of plane (t, b, *) in the [L, Bl, P] labels.
inline int64_t label_map(const SupPixDims& d, int64_t t, int64_t b) {
  return (d.L == 1 ? 0 : t) * d.Bl + (d.Bl == 1 ? 0 : b);
}

// Every label map's superpixel index per pixel, as int32 [maps, P] with the ignored
// pixels mapped to K: kernels keep a dummy slot K, so their inner loops need no label
// test. Built once per call (in parallel over the maps, a branch-free loop the compiler
// vectorises) and shared by every plane of the map, whatever thread takes the plane.
template <typename label_t>
std::vector<int32_t> slot_table(const label_t* labels, int64_t maps, int64_t P, int64_t K) {
  std::vector<int32_t> slots(static_cast<size_t>(maps * P));
  int32_t* out = slots.data();
  at::parallel_for(0, maps, plane_grain(P), [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) {
      const label_t* lab = labels + m * P;
      int32_t* o = out + m * P;
      for (int64_t p = 0; p < P; ++p) o[p] = superpixel_slot(lab[p], K);
    }
  });
  return slots;
}

template <typename label_t>
void count_labels(const label_t* labels, int32_t* counts, int64_t maps, int64_t P, int64_t K) {
  at::parallel_for(0, maps, plane_grain(P), [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) {
      int32_t* n = counts + m * K;
      std::fill(n, n + K, 0);
      const label_t* lab = labels + m * P;
      for (int64_t p = 0; p < P; ++p) {
        const int64_t k = superpixel_of(lab[p], K);
        if (k >= 0) ++n[k];
      }
    }
  });
}

// SNNSPX_CPU_SIMD=0 turns the x86 vector paths below off (tests compare both paths).
inline bool cpu_simd_enabled() {
  const char* v = std::getenv("SNNSPX_CPU_SIMD");
  return v == nullptr || std::strcmp(v, "0") != 0;
}

// ---------------------------------------------------------------- AVX2 pooling, 8 channels at once
// float32 sum, avg (both gradients) and max pooling on CPUs with AVX2 (chosen at run time, like the lookup
// below). A group is 8 consecutive channels of one (t, b), whose planes share a label
// map. Each block of 8 pixels is loaded as 8 rows, one per channel, and transposed, so
// that a pixel's 8 channel values form one vector, which goes into its superpixel's row
// of 8 accumulators (acc[(K + 1) * 8], channel j in lane j). Each channel still adds its
// pixels in ascending order, as the scalar loop does, so the sums have the same bits
// (except which payload a NaN sum carries, which depends on the add's operand order).
// Max visits the pixels from the last to the first with `>=`, which leaves the lowest
// pixel holding the maximum: max has a total order, so the same result as the scalar loop.
constexpr int64_t kGroup = 8;

#ifdef SNNSPX_CPU_X86
inline bool cpu_has_avx2() {
  static const bool has = __builtin_cpu_supports("avx2");
  return has;
}

// c[i] = (x[0 * P + i], ..., x[7 * P + i]) for i < 8: an 8 x 8 transpose.
__attribute__((target("avx2"))) inline void load_transposed8(const float* x, int64_t P, __m256 c[8]) {
  __m256 r[8], t[8];
  for (int j = 0; j < 8; ++j) r[j] = _mm256_loadu_ps(x + j * P);
  for (int j = 0; j < 8; j += 2) {
    t[j] = _mm256_unpacklo_ps(r[j], r[j + 1]);      // pixels 0, 1 | 4, 5 of channels j, j + 1
    t[j + 1] = _mm256_unpackhi_ps(r[j], r[j + 1]);  // pixels 2, 3 | 6, 7
  }
  for (int h = 0; h < 8; h += 4) {  // channels h .. h + 3 of pixels 0, 1, 2, 3 | 4, 5, 6, 7
    r[h] = _mm256_shuffle_ps(t[h], t[h + 2], 0x44);
    r[h + 1] = _mm256_shuffle_ps(t[h], t[h + 2], 0xEE);
    r[h + 2] = _mm256_shuffle_ps(t[h + 1], t[h + 3], 0x44);
    r[h + 3] = _mm256_shuffle_ps(t[h + 1], t[h + 3], 0xEE);
  }
  for (int i = 0; i < 4; ++i) {
    c[i] = _mm256_permute2f128_ps(r[i], r[i + 4], 0x20);
    c[i + 4] = _mm256_permute2f128_ps(r[i], r[i + 4], 0x31);
  }
}

// Sums of a group: acc (K + 1) rows of 8, zeroed by the caller. With kCount (avg_spike),
// also the non-zero inputs (NaN counts, as in the scalar `v != 0`) into the int32 rows
// `nonzero`, zeroed by the caller.
template <bool kCount>
__attribute__((target("avx2"))) void group_sum_avx2(const float* x, int64_t P, const int32_t* slot, float* acc,
                                                    int32_t* nonzero) {
  int64_t p = 0;
  __m256 c[8];
  const __m256 zero = _mm256_setzero_ps();
  for (; p + 8 <= P; p += 8) {
    load_transposed8(x + p, P, c);
    for (int i = 0; i < 8; ++i) {
      const int64_t row = int64_t(slot[p + i]) * kGroup;
      float* a = acc + row;
      _mm256_storeu_ps(a, _mm256_add_ps(_mm256_loadu_ps(a), c[i]));
      if (kCount) {  // the compare's all-ones lanes are -1: subtracting adds 1
        __m256i* m = reinterpret_cast<__m256i*>(nonzero + row);
        const __m256i nz = _mm256_castps_si256(_mm256_cmp_ps(c[i], zero, _CMP_NEQ_UQ));
        _mm256_storeu_si256(m, _mm256_sub_epi32(_mm256_loadu_si256(m), nz));
      }
    }
  }
  for (; p < P; ++p) {
    const int64_t row = int64_t(slot[p]) * kGroup;
    for (int j = 0; j < 8; ++j) {
      const float v = x[j * P + p];
      acc[row + j] += v;
      if (kCount) nonzero[row + j] += (v != 0.0f);
    }
  }
}

// Maxima and argmaxima of a group, pixels from the last to the first: acc preset to
// -inf and idx to kNoPixel by the caller. False when a NaN was seen (the caller then
// redoes the planes on the exact path).
__attribute__((target("avx2"))) bool group_max_avx2(const float* x, int64_t P, const int32_t* slot, float* acc,
                                                    int32_t* idx) {
  bool nan = false;
  const int64_t full = P / 8 * 8;
  for (int64_t p = P - 1; p >= full; --p) {
    float* a = acc + int64_t(slot[p]) * kGroup;
    int32_t* id = idx + int64_t(slot[p]) * kGroup;
    for (int j = 0; j < 8; ++j) {
      const float v = x[j * P + p], cur = a[j];
      id[j] = v >= cur ? static_cast<int32_t>(p) : id[j];
      a[j] = cur > v ? cur : v;
      nan |= v != v;
    }
  }
  __m256 unordered = _mm256_setzero_ps();
  __m256 c[8];
  for (int64_t p = full - 8; p >= 0; p -= 8) {
    load_transposed8(x + p, P, c);
    for (int i = 7; i >= 0; --i) {
      float* a = acc + int64_t(slot[p + i]) * kGroup;
      int32_t* id = idx + int64_t(slot[p + i]) * kGroup;
      const __m256 cur = _mm256_loadu_ps(a), v = c[i];
      const __m256 ge = _mm256_cmp_ps(v, cur, _CMP_GE_OQ);  // false for NaN
      _mm256_storeu_ps(a, _mm256_max_ps(cur, v));          // cur > v ? cur : v
      const __m256 ci = _mm256_castsi256_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(id)));
      const __m256 pi = _mm256_castsi256_ps(_mm256_set1_epi32(static_cast<int>(p + i)));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(id), _mm256_castps_si256(_mm256_blendv_ps(ci, pi, ge)));
      unordered = _mm256_or_ps(unordered, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    }
  }
  return !nan && _mm256_movemask_ps(unordered) == 0;
}
#endif

// Whether float32 pooling takes the AVX2 group path (every mode does).
template <typename scalar_t>
bool use_group_pool() {
#ifdef SNNSPX_CPU_X86
  return std::is_same<scalar_t, float>::value && cpu_has_avx2() && cpu_simd_enabled();
#else
  return false;
#endif
}

// One plane's outputs from its accumulators, entry k at acc[k * stride] and idx[k * stride]
// (stride 1 on the scalar path, kGroup for a channel of the group path). max: y = the
// maximum and aux = its pixel, 0 and -1 where empty; sum: y = the sum; avg and avg_spike:
// y = the sum / n, 0 where n = 0; avg_spike: aux = m (idx). am: aux of the plane, written
// for max and avg_spike only (sum and avg's aux holds the counts n).
template <typename scalar_t, typename acc_t, SupPixMode kMode>
void finish_plane(const acc_t* acc, const int32_t* idx, int64_t stride, const int32_t* n, int64_t K, scalar_t* yp,
                  int32_t* am) {
  for (int64_t k = 0; k < K; ++k) {
    const acc_t a = acc[k * stride];
    const int32_t i = idx[k * stride];
    if (kMode == SupPixMode::Max) {
      const bool empty = i == kNoPixel;
      yp[k] = static_cast<scalar_t>(empty ? acc_t(0) : a);
      am[k] = empty ? -1 : i;
    } else {
      yp[k] = static_cast<scalar_t>(kMode == SupPixMode::Sum ? a : n[k] > 0 ? a / static_cast<acc_t>(n[k]) : acc_t(0));
      if (kMode == SupPixMode::AvgSpike) am[k] = i;
    }
  }
}

template <typename scalar_t, typename acc_t, typename label_t, SupPixMode kMode>
void pool_kernel(const scalar_t* x, const label_t* labels, const int32_t* counts, scalar_t* y, int32_t* aux,
                 const SupPixDims& d) {
  const int64_t P = d.P, K = d.K;
  const std::vector<int32_t> slots = slot_table(labels, d.L * d.Bl, P, K);
  // Work units per (t, b): `groups` groups of 8 channels for the AVX2 path, then the
  // remaining channels one plane each.
  const bool grouped = use_group_pool<scalar_t>() && d.C >= kGroup && P > 0;
  const int64_t groups = grouped ? d.C / kGroup : 0;
  const int64_t per_tb = groups + (d.C - groups * kGroup);
  const int64_t units = d.T * d.B * per_tb;
  const int64_t grain = std::max<int64_t>(1, plane_grain(P) / (grouped ? kGroup : 1));
  at::parallel_for(0, units, grain, [&](int64_t begin, int64_t end) {
    // Slot K: the ignored pixels. Max keeps two sets (see below), the others one; the
    // group path keeps K + 1 rows of 8.
    const int64_t scalar_slots = (kMode == SupPixMode::Max ? 2 : 1) * (K + 1);
    const size_t n_slots = static_cast<size_t>(grouped ? std::max(scalar_slots, (K + 1) * kGroup) : scalar_slots);
    std::vector<acc_t> acc(n_slots);
    std::vector<int32_t> idx(n_slots);  // max: argmax; avg_spike: m

    // One plane on the scalar path.
    auto pool_plane = [&](int64_t plane) {
      const int64_t tb = plane / d.C, b = tb % d.B, t = tb / d.B;
      const int64_t map = label_map(d, t, b);
      const int32_t* slot = slots.data() + map * P;
      const scalar_t* xp = x + plane * P;
      scalar_t* yp = y + plane * K;
      if (kMode == SupPixMode::Max) {
        // One branch-free pass from the last pixel to the first into two sets of
        // (maximum, argmax) accumulators, odd and even pixels apart (so a run of pixels of
        // one superpixel is not one chain of dependent loads and stores): `>=` lets a
        // lower pixel take over an equal maximum, so each set ends with its lowest pixel
        // holding its maximum, and -inf pixels count (an empty slot stays (-inf, kNoPixel)).
        // The sets are merged by max_prefer, a total order, so the split does not change
        // the result. A NaN fails every comparison: the plane is then redone one pixel at
        // a time in the exact order of max_prefer (NaN propagates).
        acc_t* a0 = acc.data();
        acc_t* a1 = a0 + (K + 1);
        int32_t* i0 = idx.data();
        int32_t* i1 = i0 + (K + 1);
        std::fill(acc.begin(), acc.end(), -std::numeric_limits<acc_t>::infinity());
        std::fill(idx.begin(), idx.end(), kNoPixel);
        bool any_nan = false;
        // Written so that compilers emit selects, not branches, which random data would
        // mispredict: `cur > v ? cur : v` is x86's max instruction (it differs from
        // `v >= cur ? v : cur` only for a NaN, and a NaN sends the plane to the exact path),
        // and the index is a bit select.
        auto take = [&](acc_t* a, int32_t* i, int64_t p) {
          const int32_t k = slot[p];
          const acc_t v = static_cast<acc_t>(xp[p]);
          const acc_t cur = a[k];
          const int32_t ci = i[k];
          const int32_t take_mask = -static_cast<int32_t>(v >= cur);
          a[k] = cur > v ? cur : v;
          i[k] = ci ^ ((ci ^ static_cast<int32_t>(p)) & take_mask);
          any_nan |= v != v;
        };
        int64_t p = P - 1;
        for (; p >= 1; p -= 2) {
          take(a0, i0, p);
          take(a1, i1, p - 1);
        }
        if (p == 0) take(a0, i0, 0);
        if (!any_nan) {
          for (int64_t k = 0; k < K; ++k) {
            if (max_prefer<acc_t>(a1[k], i1[k], a0[k], i0[k])) a0[k] = a1[k], i0[k] = i1[k];
          }
        } else {
          std::fill(a0, a0 + K + 1, -std::numeric_limits<acc_t>::infinity());
          std::fill(i0, i0 + K + 1, kNoPixel);
          for (int64_t q = 0; q < P; ++q) {
            const int32_t k = slot[q];
            if (k == K) continue;
            const acc_t v = static_cast<acc_t>(xp[q]);
            if (max_prefer<acc_t>(v, static_cast<int32_t>(q), a0[k], i0[k])) a0[k] = v, i0[k] = int32_t(q);
          }
        }
        finish_plane<scalar_t, acc_t, kMode>(a0, i0, 1, nullptr, K, yp, aux + plane * K);
      } else {
        std::fill(acc.begin(), acc.end(), acc_t(0));
        if (kMode == SupPixMode::AvgSpike) std::fill(idx.begin(), idx.end(), 0);
        for (int64_t p = 0; p < P; ++p) {
          const int32_t k = slot[p];
          const acc_t v = static_cast<acc_t>(xp[p]);
          acc[k] += v;
          if (kMode == SupPixMode::AvgSpike) idx[k] += (v != acc_t(0));
        }
        finish_plane<scalar_t, acc_t, kMode>(acc.data(), idx.data(), 1, counts + map * K, K, yp, aux + plane * K);
      }
    };

    for (int64_t u = begin; u < end; ++u) {
      const int64_t tb = u / per_tb, g = u - tb * per_tb;
      if (g >= groups) {
        pool_plane(tb * d.C + groups * kGroup + (g - groups));
        continue;
      }
      const int64_t plane0 = tb * d.C + g * kGroup;
#ifdef SNNSPX_CPU_X86
      if constexpr (std::is_same<scalar_t, float>::value) {
        const int64_t b = tb % d.B, t = tb / d.B;
        const int64_t map = label_map(d, t, b);
        const int32_t* slot = slots.data() + map * P;
        const float* xg = x + plane0 * P;
        const int64_t rows = (K + 1) * kGroup;
        if (kMode == SupPixMode::Max) {
          std::fill(acc.begin(), acc.begin() + rows, -std::numeric_limits<float>::infinity());
          std::fill(idx.begin(), idx.begin() + rows, kNoPixel);
          if (!group_max_avx2(xg, P, slot, acc.data(), idx.data())) {  // a NaN: the exact path
            for (int64_t j = 0; j < kGroup; ++j) pool_plane(plane0 + j);
            continue;
          }
        } else {
          constexpr bool kCount = kMode == SupPixMode::AvgSpike;
          std::fill(acc.begin(), acc.begin() + rows, 0.0f);
          if (kCount) std::fill(idx.begin(), idx.begin() + rows, 0);
          group_sum_avx2<kCount>(xg, P, slot, acc.data(), idx.data());
        }
        const int32_t* n = kMode == SupPixMode::Max ? nullptr : counts + map * K;  // max has no counts
        for (int64_t j = 0; j < kGroup; ++j) {
          finish_plane<scalar_t, acc_t, kMode>(acc.data() + j, idx.data() + j, kGroup, n, K, y + (plane0 + j) * K,
                                               aux + (plane0 + j) * K);
        }
        continue;
      }
#endif
      for (int64_t j = 0; j < kGroup; ++j) pool_plane(plane0 + j);  // not reached: grouped needs AVX2
    }
  });
  if (grouped) count_kernel("cpu.suppix_pool_avx2");
}

// The float32 table lookup out[p] = table[slot[p]] (0 for slot[p] == K, the ignored
// pixels) with AVX-512 when K <= 256: the table sits in up to 16 registers and
// two-register permutes look up 16 pixels at once, where the scalar loop does one load
// per pixel. Exact (a copy), so both paths give the same bits. Chosen at run time: a
// build for any x86-64 runs it only on CPUs with AVX-512F, and SNNSPX_CPU_SIMD=0 turns it
// off (tests compare both paths). One 16-pixel step on this development CPU (a C++
// microbenchmark, 1024 planes of 1024 pixels, one thread): K <= 64 about 6x faster than the
// scalar loop, K <= 128 3.7x, K <= 256 1.8x.
constexpr int64_t kLookupMaxK = 256;

#ifdef SNNSPX_CPU_X86
inline bool cpu_has_avx512() {
  static const bool has = __builtin_cpu_supports("avx512f");
  return has;
}

// Entries 16 i .. 16 i + 15 of a K-entry table, those >= K read as 0 (never loaded).
__attribute__((target("avx512f"))) inline __m512 table_part(const float* table, int64_t K, int64_t i) {
  const int64_t n = std::min<int64_t>(16, std::max<int64_t>(0, K - 16 * i));
  return _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n) - 1u), table + 16 * i);
}

// 16 pixels' entries of a table of K <= 32 * kPairs entries in registers t: pair j (t[2j],
// t[2j + 1]) holds entries 32j .. 32j + 31 and serves the slots whose bits 5 and up are j
// (permutex2var reads bits 0..4, bit 4 picking the register). The ignored pixels' slot K
// reads a zero: an entry >= K that table_part left at 0, or, for K = 32 * kPairs, none.
template <int kPairs>
__attribute__((target("avx512f"))) inline __m512 lookup16(const __m512i idx, const __m512 (&t)[2 * kPairs]) {
  if constexpr (kPairs == 2) {  // one blend on bit 5, and slot 64 masked to 0
    const __m512 lo = _mm512_permutex2var_ps(t[0], idx, t[1]);
    const __m512 hi = _mm512_permutex2var_ps(t[2], idx, t[3]);
    const __m512 v = _mm512_mask_blend_ps(_mm512_test_epi32_mask(idx, _mm512_set1_epi32(32)), lo, hi);
    return _mm512_maskz_mov_ps(_mm512_cmplt_epi32_mask(idx, _mm512_set1_epi32(64)), v);
  } else {
    const __m512i pair = _mm512_srli_epi32(idx, 5);
    __m512 r = _mm512_setzero_ps();
    for (int j = 0; j < kPairs; ++j) {
      const __mmask16 mine = _mm512_cmpeq_epi32_mask(pair, _mm512_set1_epi32(j));
      r = _mm512_mask_mov_ps(r, mine, _mm512_permutex2var_ps(t[2 * j], idx, t[2 * j + 1]));
    }
    return r;
  }
}

// The table's registers come straight from `table` with masked loads (never past
// table[K - 1]): no copy per plane.
template <int kPairs>
__attribute__((target("avx512f"))) void lookup_avx512(const float* table, int64_t K, const int32_t* slot,
                                                      float* out, int64_t P) {
  __m512 t[2 * kPairs];
  for (int i = 0; i < 2 * kPairs; ++i) t[i] = table_part(table, K, i);
  int64_t p = 0;
  for (; p + 16 <= P; p += 16) {
    const __m512i idx = _mm512_loadu_si512(static_cast<const void*>(slot + p));
    _mm512_storeu_ps(out + p, lookup16<kPairs>(idx, t));
  }
  if (p < P) {
    const __mmask16 m = static_cast<__mmask16>((1u << (P - p)) - 1u);
    const __m512i idx = _mm512_maskz_loadu_epi32(m, slot + p);
    _mm512_mask_storeu_ps(out + p, m, lookup16<kPairs>(idx, t));
  }
}

// The lookup for any 0 < K <= kLookupMaxK.
inline void lookup_simd(const float* table, int64_t K, const int32_t* slot, float* out, int64_t P) {
  if (K <= 64) return lookup_avx512<2>(table, K, slot, out, P);
  if (K <= 128) return lookup_avx512<4>(table, K, slot, out, P);
  return lookup_avx512<8>(table, K, slot, out, P);
}
#endif

// Whether the gathers of this call take the AVX-512 lookup (counted by the caller).
template <typename scalar_t>
bool use_simd_lookup(int64_t K) {
#ifdef SNNSPX_CPU_X86
  return std::is_same<scalar_t, float>::value && K > 0 && K <= kLookupMaxK && cpu_has_avx512() &&
         cpu_simd_enabled();
#else
  (void)K;
  return false;
#endif
}

// out[t, b, c, p] from src[t, b, c, label(p)]; see SupPixMode for the scaling.
template <typename scalar_t, typename acc_t, typename label_t, SupPixMode kMode>
void gather_kernel(const scalar_t* src, const label_t* labels, const int32_t* aux, scalar_t* out,
                   const SupPixDims& d) {
  const int64_t P = d.P, K = d.K;
  const bool simd = kMode != SupPixMode::Max && use_simd_lookup<scalar_t>(K);
  if (K == 0) {  // every pixel is ignored
    std::fill(out, out + d.planes() * P, scalar_t(0));
    return;
  }
  const std::vector<int32_t> slots = slot_table(labels, d.L * d.Bl, P, K);
  at::parallel_for(0, d.planes(), plane_grain(P), [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> val(static_cast<size_t>(K + 1));
    val[K] = scalar_t(0);  // the ignored pixels' slot
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t tb = plane / d.C, b = tb % d.B, t = tb / d.B;
      const int64_t map = label_map(d, t, b);
      const int32_t* slot = slots.data() + map * P;
      const scalar_t* g = src + plane * K;
      scalar_t* o = out + plane * P;
      // The value each pixel of superpixel k receives, computed once per k, with the
      // ignored pixels' slot K at 0; sum's vector lookup reads g itself (it never reads
      // past entry K - 1), so it needs no copy.
      const bool direct = kMode == SupPixMode::Sum && simd;
      for (int64_t k = 0; k < (direct ? 0 : K); ++k) {
        if (kMode == SupPixMode::Sum || kMode == SupPixMode::Max) {
          val[k] = g[k];
        } else {
          const int32_t n = kMode == SupPixMode::Avg ? aux[map * K + k] : aux[plane * K + k];
          val[k] = static_cast<scalar_t>(n > 0 ? static_cast<acc_t>(g[k]) / static_cast<acc_t>(n) : acc_t(0));
        }
      }
      if (kMode == SupPixMode::Max) {
        // Zeros, then each superpixel's gradient at its argmax: one distinct pixel per k
        // (an argmax that is not a pixel of k, e.g. -1 for an empty k, is skipped).
        std::fill(o, o + P, scalar_t(0));
        const int32_t* am = aux + plane * K;
        for (int64_t k = 0; k < K; ++k) {
          const int64_t p = am[k];
          if (p >= 0 && p < P && slot[p] == k) o[p] = val[k];
        }
        continue;
      }
#ifdef SNNSPX_CPU_X86
      if constexpr (std::is_same<scalar_t, float>::value) {
        if (simd) {
          lookup_simd(direct ? g : val.data(), K, slot, o, P);
          continue;
        }
      }
#endif
      for (int64_t p = 0; p < P; ++p) o[p] = val[slot[p]];
    }
  });
  if (simd) count_kernel("cpu.suppix_gather_avx512");
}

std::tuple<at::Tensor, at::Tensor> suppix_pool_cpu(const at::Tensor& x, const at::Tensor& labels,
                                                   int64_t num_superpixels, c10::string_view mode,
                                                   bool check_labels) {
  auto a = prepare_suppix_pool(x, labels, num_superpixels, mode, check_labels);
  auto [y, aux] = allocate_suppix_pool(a);
  const auto& d = a.d;
  at::Tensor counts;
  if (a.mode == SupPixMode::Sum || a.mode == SupPixMode::Avg) counts = aux;
  AT_DISPATCH_INDEX_TYPES(a.labels.scalar_type(), "suppix_pool_cpu", [&] {
    using label_t = index_t;
    if (counts.defined()) count_labels<label_t>(a.labels.data_ptr<label_t>(), counts.data_ptr<int32_t>(),
                                                d.L * d.Bl, d.P, d.K);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.x.scalar_type(), "suppix_pool_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const scalar_t* xp = a.x.data_ptr<scalar_t>();
      const label_t* lp = a.labels.data_ptr<label_t>();
      scalar_t* yp = y.data_ptr<scalar_t>();
      int32_t* ap = aux.data_ptr<int32_t>();
      const int32_t* cp = counts.defined() ? counts.data_ptr<int32_t>() : nullptr;
      switch (a.mode) {
        case SupPixMode::Sum: pool_kernel<scalar_t, acc_t, label_t, SupPixMode::Sum>(xp, lp, cp, yp, ap, d); break;
        case SupPixMode::Avg: pool_kernel<scalar_t, acc_t, label_t, SupPixMode::Avg>(xp, lp, cp, yp, ap, d); break;
        case SupPixMode::Max: pool_kernel<scalar_t, acc_t, label_t, SupPixMode::Max>(xp, lp, cp, yp, ap, d); break;
        case SupPixMode::AvgSpike: {
          // avg_spike divides by n too: count into a scratch buffer.
          at::Tensor n = at::empty({d.L, d.Bl, d.K}, aux.options());
          count_labels<label_t>(lp, n.data_ptr<int32_t>(), d.L * d.Bl, d.P, d.K);
          pool_kernel<scalar_t, acc_t, label_t, SupPixMode::AvgSpike>(xp, lp, n.data_ptr<int32_t>(), yp, ap, d);
          break;
        }
      }
    });
  });
  count_kernel("cpu.suppix_pool");
  return {y, aux};
}

void run_gather_cpu(SupPixGatherArgs& a) {
  AT_DISPATCH_INDEX_TYPES(a.labels.scalar_type(), "suppix_gather_cpu", [&] {
    using label_t = index_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.src.scalar_type(), "suppix_gather_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const scalar_t* sp = a.src.data_ptr<scalar_t>();
      const label_t* lp = a.labels.data_ptr<label_t>();
      const int32_t* ap = a.aux.defined() ? a.aux.data_ptr<int32_t>() : nullptr;
      scalar_t* op = a.out.data_ptr<scalar_t>();
      switch (a.mode) {
        case SupPixMode::Sum: gather_kernel<scalar_t, acc_t, label_t, SupPixMode::Sum>(sp, lp, ap, op, a.d); break;
        case SupPixMode::Avg: gather_kernel<scalar_t, acc_t, label_t, SupPixMode::Avg>(sp, lp, ap, op, a.d); break;
        case SupPixMode::Max: gather_kernel<scalar_t, acc_t, label_t, SupPixMode::Max>(sp, lp, ap, op, a.d); break;
        case SupPixMode::AvgSpike:
          gather_kernel<scalar_t, acc_t, label_t, SupPixMode::AvgSpike>(sp, lp, ap, op, a.d);
          break;
      }
    });
  });
}

at::Tensor suppix_pool_backward_cpu(const at::Tensor& grad_y, const at::Tensor& labels, const at::Tensor& aux,
                                    c10::string_view mode) {
  auto a = prepare_suppix_gather(grad_y, "grad_y", labels, &aux, parse_suppix_mode(mode));
  run_gather_cpu(a);
  count_kernel("cpu.suppix_pool_backward");
  return a.out;
}

at::Tensor suppix_unpool_cpu(const at::Tensor& y, const at::Tensor& labels, bool check_labels) {
  auto a = prepare_suppix_gather(y, "y", labels, nullptr, SupPixMode::Sum);
  if (check_labels) check_suppix_label_range(a.labels, a.d.K);
  run_gather_cpu(a);
  count_kernel("cpu.suppix_unpool");
  return a.out;
}

at::Tensor suppix_counts_cpu(const at::Tensor& labels, int64_t num_superpixels) {
  check_num_superpixels(num_superpixels);
  check_suppix_labels(labels, labels, "labels", labels.dim() == 3 ? labels.size(0) : 1,
                      labels.dim() == 3 ? labels.size(1) : 1, -1);
  const at::Tensor lab = labels.contiguous();
  at::Tensor counts = at::empty({lab.size(0), lab.size(1), num_superpixels}, lab.options().dtype(at::kInt));
  AT_DISPATCH_INDEX_TYPES(lab.scalar_type(), "suppix_counts_cpu", [&] {
    count_labels<index_t>(lab.data_ptr<index_t>(), counts.data_ptr<int32_t>(), lab.size(0) * lab.size(1),
                          lab.size(2), num_superpixels);
  });
  count_kernel("cpu.suppix_counts");
  return counts;
}

}  // namespace

TORCH_LIBRARY_IMPL(snnspx, CPU, m) {
  m.impl("suppix_pool", &suppix_pool_cpu);
  m.impl("suppix_pool_backward", &suppix_pool_backward_cpu);
  m.impl("suppix_unpool", &suppix_unpool_cpu);
  m.impl("suppix_counts", &suppix_counts_cpu);
}

}  // namespace snnspx
