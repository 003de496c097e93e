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
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "../suppix_core.h"
#include "../suppix_glue.h"
#include "labels.h"
#include "strategy.h"
#include "suppix_simd.h"

namespace snnspx {
namespace {

using cpu::count_labels;
using cpu::kGroup;
using cpu::plane_grain;
using cpu::slot_table;

// One plane's outputs from its accumulators, entry k at acc[k * stride] and idx[k * stride]
// (stride 1 on the scalar path, kGroup for a channel of the group path). max: y = the
// maximum and aux = its pixel, 0 and -1 where empty; sum: y = the sum; avg and avg_spike:
// y = the sum / n, 0 where n = 0; avg_spike: aux = m (idx). am: aux of the plane, written
// for max and avg_spike only (sum and avg's aux holds the counts n).
template <typename scalar_t, typename acc_t, PoolMode kMode>
void finish_plane(const acc_t* acc, const int32_t* idx, int64_t stride, const int32_t* n, int64_t K, scalar_t* yp,
                  int32_t* am) {
  for (int64_t k = 0; k < K; ++k) {
    const acc_t a = acc[k * stride];
    const int32_t i = idx[k * stride];
    if (kMode == PoolMode::Max) {
      const bool empty = i == kNoPixel;
      yp[k] = static_cast<scalar_t>(empty ? acc_t(0) : a);
      am[k] = empty ? -1 : i;
    } else {
      yp[k] = static_cast<scalar_t>(kMode == PoolMode::Sum ? a : n[k] > 0 ? a / static_cast<acc_t>(n[k]) : acc_t(0));
      if (kMode == PoolMode::AvgSpike) am[k] = i;
    }
  }
}

template <typename scalar_t, typename acc_t, typename label_t, PoolMode kMode>
void pool_kernel(const scalar_t* x, const label_t* labels, const int32_t* counts, scalar_t* y, int32_t* aux,
                 const SupPixDims& d, cpu::PoolStrategy strategy) {
  const int64_t P = d.P, K = d.K;
  const std::vector<int32_t> slots = slot_table(labels, d.L * d.Bl, P, K);
  // Work units per (t, b): `groups` groups of 8 channels for the AVX2 path, then the
  // remaining channels one plane each.
  const bool grouped = std::is_same<scalar_t, float>::value && strategy == cpu::PoolStrategy::Avx2;
  const int64_t groups = grouped ? d.C / kGroup : 0;
  const int64_t per_tb = groups + (d.C - groups * kGroup);
  const int64_t units = d.T * d.B * per_tb;
  const int64_t grain = std::max<int64_t>(1, plane_grain(P) / (grouped ? kGroup : 1));
  at::parallel_for(0, units, grain, [&](int64_t begin, int64_t end) {
    // Slot K: the ignored pixels. Max keeps two sets (see below), the others one; the
    // group path keeps K + 1 rows of 8.
    const int64_t scalar_slots = (kMode == PoolMode::Max ? 2 : 1) * (K + 1);
    const size_t n_slots = static_cast<size_t>(grouped ? std::max(scalar_slots, (K + 1) * kGroup) : scalar_slots);
    std::vector<acc_t> acc(n_slots);
    std::vector<int32_t> idx(n_slots);  // max: argmax; avg_spike: m

    // One plane on the scalar path.
    auto pool_plane = [&](int64_t plane) {
      const int64_t tb = plane / d.C, b = tb % d.B, t = tb / d.B;
      const int64_t map = d.layout().map(t, b);
      const int32_t* slot = slots.data() + map * P;
      const scalar_t* xp = x + plane * P;
      scalar_t* yp = y + plane * K;
      if (kMode == PoolMode::Max) {
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
        if (kMode == PoolMode::AvgSpike) std::fill(idx.begin(), idx.end(), 0);
        for (int64_t p = 0; p < P; ++p) {
          const int32_t k = slot[p];
          const acc_t v = static_cast<acc_t>(xp[p]);
          acc[k] += v;
          if (kMode == PoolMode::AvgSpike) idx[k] += (v != acc_t(0));
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
        const int64_t map = d.layout().map(t, b);
        const int32_t* slot = slots.data() + map * P;
        const float* xg = x + plane0 * P;
        const int64_t rows = (K + 1) * kGroup;
        if (kMode == PoolMode::Max) {
          std::fill(acc.begin(), acc.begin() + rows, -std::numeric_limits<float>::infinity());
          std::fill(idx.begin(), idx.begin() + rows, kNoPixel);
          if (!cpu::group_max_avx2(xg, P, slot, acc.data(), idx.data())) {  // a NaN: the exact path
            for (int64_t j = 0; j < kGroup; ++j) pool_plane(plane0 + j);
            continue;
          }
        } else {
          constexpr bool kCount = kMode == PoolMode::AvgSpike;
          std::fill(acc.begin(), acc.begin() + rows, 0.0f);
          if (kCount) std::fill(idx.begin(), idx.begin() + rows, 0);
          cpu::group_sum_avx2<kCount>(xg, P, slot, acc.data(), idx.data());
        }
        const int32_t* n = kMode == PoolMode::Max ? nullptr : counts + map * K;  // max has no counts
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
}

// out[t, b, c, p] from src[t, b, c, label(p)]; see PoolMode for the scaling.
template <typename scalar_t, typename acc_t, typename label_t, PoolMode kMode>
void gather_kernel(const scalar_t* src, const label_t* labels, const int32_t* aux, scalar_t* out,
                   const SupPixDims& d, cpu::GatherStrategy strategy) {
  const int64_t P = d.P, K = d.K;
  const bool simd = std::is_same<scalar_t, float>::value && kMode != PoolMode::Max && strategy == cpu::GatherStrategy::Avx512;
  if (K == 0) {  // every pixel is ignored
    std::fill(out, out + d.planes() * P, scalar_t(0));
    return;
  }
  const std::vector<int32_t> slots = slot_table(labels, d.L * d.Bl, P, K);
  at::parallel_for(0, d.planes(), plane_grain(P), [&](int64_t begin, int64_t end) {
    // The table is written at every plane: on cache lines of its own (see own_lines), or
    // a line shared with data another thread reads at every plane (mode avg's small counts
    // tensor, say, which the heap may place right next to it) moves between the cores.
    std::vector<scalar_t> buf(cpu::own_lines_size<scalar_t>(K + 1));
    scalar_t* const val = cpu::own_lines(buf.data());
    val[K] = scalar_t(0);  // the ignored pixels' slot
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t tb = plane / d.C, b = tb % d.B, t = tb / d.B;
      const int64_t map = d.layout().map(t, b);
      const int32_t* slot = slots.data() + map * P;
      const scalar_t* g = src + plane * K;
      scalar_t* o = out + plane * P;
      // The value each pixel of superpixel k receives, computed once per k, with the
      // ignored pixels' slot K at 0; sum's vector lookup reads g itself (it never reads
      // past entry K - 1), so it needs no copy.
      const bool direct = kMode == PoolMode::Sum && simd;
      for (int64_t k = 0; k < (direct ? 0 : K); ++k) {
        if (kMode == PoolMode::Sum || kMode == PoolMode::Max) {
          val[k] = g[k];
        } else {
          const int32_t n = kMode == PoolMode::Avg ? aux[map * K + k] : aux[plane * K + k];
          val[k] = static_cast<scalar_t>(n > 0 ? static_cast<acc_t>(g[k]) / static_cast<acc_t>(n) : acc_t(0));
        }
      }
      if (kMode == PoolMode::Max) {
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
          cpu::lookup_simd(direct ? g : val, K, slot, o, P);
          continue;
        }
      }
#endif
      for (int64_t p = 0; p < P; ++p) o[p] = val[slot[p]];
    }
  });
}

std::tuple<at::Tensor, at::Tensor> suppix_pool_cpu(const at::Tensor& x, const at::Tensor& labels,
                                                   int64_t num_superpixels, c10::string_view mode,
                                                   bool check_labels, c10::string_view strategy) {
  auto a = prepare_suppix_pool(x, labels, num_superpixels, mode, check_labels);
  const auto& d = a.d;
  const auto dtype = a.x.scalar_type();
  const auto chosen = resolve_strategy("suppix_pool", strategy, cpu::kPoolStrategies,
                                       cpu::suppix_pool_strategy(dtype, d.C, d.P),
                                       [&](cpu::PoolStrategy s) { return cpu::pool_rejects(s, dtype, d.C, d.P); });
  auto [y, aux] = allocate_suppix_pool(a);
  at::Tensor counts;
  if (a.mode == PoolMode::Sum || a.mode == PoolMode::Avg) counts = aux;
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
        case PoolMode::Sum: pool_kernel<scalar_t, acc_t, label_t, PoolMode::Sum>(xp, lp, cp, yp, ap, d, chosen); break;
        case PoolMode::Avg: pool_kernel<scalar_t, acc_t, label_t, PoolMode::Avg>(xp, lp, cp, yp, ap, d, chosen); break;
        case PoolMode::Max: pool_kernel<scalar_t, acc_t, label_t, PoolMode::Max>(xp, lp, cp, yp, ap, d, chosen); break;
        case PoolMode::AvgSpike: {
          // avg_spike divides by n too: count into a scratch buffer.
          at::Tensor n = at::empty({d.L, d.Bl, d.K}, aux.options());
          count_labels<label_t>(lp, n.data_ptr<int32_t>(), d.L * d.Bl, d.P, d.K);
          pool_kernel<scalar_t, acc_t, label_t, PoolMode::AvgSpike>(xp, lp, n.data_ptr<int32_t>(), yp, ap, d, chosen);
          break;
        }
      }
    });
  });
  return {y, aux};
}

// The gather strategy of `op` for prepared arguments.
cpu::GatherStrategy gather_strategy(const char* op, const SupPixGatherArgs& a, c10::string_view strategy) {
  const auto dtype = a.src.scalar_type();
  return resolve_strategy(op, strategy, cpu::kGatherStrategies, cpu::suppix_gather_strategy(dtype, a.mode, a.d.K),
                          [&](cpu::GatherStrategy s) { return cpu::gather_rejects(s, dtype, a.mode, a.d.K); });
}

void run_gather_cpu(SupPixGatherArgs& a, cpu::GatherStrategy strategy) {
  allocate_suppix_gather(a);
  AT_DISPATCH_INDEX_TYPES(a.labels.scalar_type(), "suppix_gather_cpu", [&] {
    using label_t = index_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.src.scalar_type(), "suppix_gather_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const scalar_t* sp = a.src.data_ptr<scalar_t>();
      const label_t* lp = a.labels.data_ptr<label_t>();
      const int32_t* ap = a.aux.defined() ? a.aux.data_ptr<int32_t>() : nullptr;
      scalar_t* op = a.out.data_ptr<scalar_t>();
      with_pool_mode(a.mode, [&](auto m) {
        gather_kernel<scalar_t, acc_t, label_t, decltype(m)::value>(sp, lp, ap, op, a.d, strategy);
      });
    });
  });
}

at::Tensor suppix_pool_backward_cpu(const at::Tensor& grad_y, const at::Tensor& labels, const at::Tensor& aux,
                                    c10::string_view mode, c10::string_view strategy) {
  auto a = prepare_suppix_gather(grad_y, "grad_y", labels, &aux, parse_pool_mode(mode, /*allow_avg_spike=*/true));
  run_gather_cpu(a, gather_strategy("suppix_pool_backward", a, strategy));
  return a.out;
}

at::Tensor suppix_unpool_cpu(const at::Tensor& y, const at::Tensor& labels, bool check_labels,
                             c10::string_view strategy) {
  auto a = prepare_suppix_gather(y, "y", labels, nullptr, PoolMode::Sum);
  const auto chosen = gather_strategy("suppix_unpool", a, strategy);
  if (check_labels) check_suppix_label_range(a.labels, a.d.K);
  run_gather_cpu(a, chosen);
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
