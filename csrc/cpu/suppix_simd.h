// The CPU pooling kernels' x86 vector code, chosen per call by cpu/strategy.h ("avx2"
// group pooling, "avx512" lookup) on CPUs that have the instructions. The library is
// built for any x86-64, so each function carries its own target attribute.
#pragma once

#include <algorithm>
#include <cstdint>

#include "strategy.h"

#ifdef SNNSPX_CPU_X86
#include <immintrin.h>

namespace snnspx {
namespace cpu {

// ---------------------------------------------------------------- AVX2 pooling, 8 channels at once
// float32 sum, avg (both gradients) and max pooling on CPUs with AVX2. A group is 8 consecutive channels of one (t, b), whose planes share a label
// map. Each block of 8 pixels is loaded as 8 rows, one per channel, and transposed, so
// that a pixel's 8 channel values form one vector, which goes into its superpixel's row
// of 8 accumulators (acc[(K + 1) * 8], channel j in lane j). Each channel still adds its
// pixels in ascending order, as the scalar loop does, so the sums have the same bits
// (except which payload a NaN sum carries, which depends on the add's operand order).
// Max visits the pixels from the last to the first with `>=`, which leaves the lowest
// pixel holding the maximum: max has a total order, so the same result as the scalar loop.

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

// The float32 table lookup out[p] = table[slot[p]] (0 for slot[p] == K, the ignored
// pixels) with AVX-512 when K <= 256: the table sits in up to 16 registers and
// two-register permutes look up 16 pixels at once, where the scalar loop does one load
// per pixel. Exact (a copy), so both paths give the same bits.

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

}  // namespace cpu
}  // namespace snnspx

#endif  // SNNSPX_CPU_X86
