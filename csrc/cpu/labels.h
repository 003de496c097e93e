// Label-map helpers of the CPU kernels, shared by pooling and the fused op.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "../suppix_core.h"

namespace snnspx {
namespace cpu {

// Planes per task: at least ~16k pixels of work each.
inline int64_t plane_grain(int64_t P) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(P, 1)); }

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

// counts[m, k] = the pixels of map m with label k (labels outside [0, K) are not counted),
// for `maps` contiguous maps of P labels: the pixel counts of pooling and the fused op.
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

// A scratch table written by one thread over and over (per plane, per row): on cache lines
// of its own, or a line it shares with data another thread touches moves between the cores
// (false sharing) at every write. own_lines(buf.data()) of a std::vector buf of
// own_lines_size<T>(n) elements is 64-byte aligned, and neither its first nor its last line
// holds anything else.
constexpr size_t kCacheLine = 64;
template <typename T>
size_t own_lines_size(int64_t n) {
  return static_cast<size_t>(n) + 2 * ((kCacheLine + sizeof(T) - 1) / sizeof(T));
}
template <typename T>
T* own_lines(T* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  return reinterpret_cast<T*>((a + kCacheLine - 1) / kCacheLine * kCacheLine);
}

}  // namespace cpu
}  // namespace snnspx
