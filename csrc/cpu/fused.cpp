// CPU kernels of the fused SRM + superpixel pooling (docs/maths.md §6). Work is split by
// (b, c) plane: a task runs the SRM recurrence for blocks of the plane's pixels
// and counts spikes per (step, superpixel) in task-private integer counters, so
// the result does not depend on the thread count or schedule. No [T, B, C, H, W]
// tensor is written, in training either: the backward runs the neuron again from x, per
// block of a plane's pixels (srm_recompute.h), for the factors that it walks back through.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../fused_glue.h"
#include "../suppix_core.h"
#include "labels.h"
#include "srm_recompute.h"
#include "strategy.h"

namespace snnspx {
namespace {

constexpr int64_t kBlock = 256;

// Spike counts go to kCopies interleaved histograms (pixel i of a block adds to
// copy i % kCopies) that are summed at the end: neighbouring pixels mostly
// share a superpixel, and one histogram would chain their increments through
// memory. Integer counts make the result independent of that split.
// Only while the copies stay small (kMaxScratch int32 per task); beyond, a single
// histogram (it is as large as one (b, c) slice of y).
constexpr int64_t kCopies = 4;
constexpr int64_t kMaxScratch = int64_t(1) << 20;

// The histogram slots of len pixels (superpixel_slot: ignored pixels go to slot K).
template <typename label_t>
inline void label_slots(const label_t* lab, int64_t len, int64_t K, int32_t* slot) {
  for (int64_t i = 0; i < len; ++i) slot[i] = superpixel_slot(lab[i], K);
}

// min(f, spike ? p : kNoPixel) without a branch (a spike is 0 or 1; the
// difference of two values in [0, 2^31 - 1] cannot overflow).
inline int32_t min_first(int32_t f, int32_t spike, int32_t p) {
  const int32_t cand = (p & -spike) | (kNoPixel & (spike - 1));
  const int32_t d = f - cand;
  return cand + (d & (d >> 31));
}

// kVariants: srm_step's (false for variant 0, so its loop is the default neuron's alone).
// argmax: the training forward's for "max" (the lowest spiking pixel per step and
// superpixel, which its backward reads), else nullptr.
template <typename scalar_t, typename acc_t, typename label_t, bool kVariants>
void fused_forward_kernel(const FusedArgs& a, const SRMParams<acc_t>& prm, const int32_t* counts, scalar_t* y,
                          int32_t* argmax) {
  const scalar_t* x = a.x.data_ptr<scalar_t>();
  const label_t* labels = a.labels.data_ptr<label_t>();
  const int64_t T = a.T, C = a.C, P = a.P, K = a.K, B = a.B;
  const int64_t N = B * C * P;
  const int64_t KS = K + 1;       // one row of a histogram: K slots + the ignored slot
  const int64_t H = T * KS;       // one histogram copy
  const int64_t copies = kCopies * H <= kMaxScratch ? kCopies : 1;
  // The first spiking pixel per (step, superpixel) is only needed for max's backward.
  const bool track_max = a.mode == PoolMode::Max && argmax != nullptr;
  at::parallel_for(0, B * C, 1, [&](int64_t begin, int64_t end) {
    // Rewritten for every (b, c): on cache lines of their own (cpu::own_lines).
    const int64_t n_cnt = copies * H, n_first = track_max ? copies * H : 0;
    std::vector<int32_t> cnt_buf(cpu::own_lines_size<int32_t>(n_cnt));
    std::vector<int32_t> first_buf(track_max ? cpu::own_lines_size<int32_t>(n_first) : 0);
    int32_t* const cnt = cpu::own_lines(cnt_buf.data());
    int32_t* const first = track_max ? cpu::own_lines(first_buf.data()) : nullptr;
    alignas(64) acc_t m[kBlock], sy[kBlock], g[kBlock], ul[kBlock];
    alignas(64) int32_t spk[kBlock], slot[kBlock];
    for (int64_t bc = begin; bc < end; ++bc) {
      const int64_t b = bc / C;
      std::fill(cnt, cnt + n_cnt, 0);
      if (track_max) std::fill(first, first + n_first, kNoPixel);
      for (int64_t p0 = 0; p0 < P; p0 += kBlock) {
        const int64_t len = std::min(kBlock, P - p0);
        std::fill(m, m + len, acc_t(0));
        std::fill(sy, sy + len, acc_t(0));
        std::fill(g, g + len, acc_t(0));
        std::fill(ul, ul + len, acc_t(0));
        for (int64_t t = 0; t < T; ++t) {
          if (t == 0 || a.layout.L > 1) label_slots(labels + a.layout.offset(t, b) + p0, len, K, slot);
          const int64_t base = t * N + bc * P + p0;
          const scalar_t* __restrict__ xt = x + base;
          for (int64_t i = 0; i < len; ++i) {
            SRMState<acc_t> st{m[i], sy[i], g[i], ul[i]};
            acc_t d, dt;  // the traces: the backward recomputes them
            const bool s = srm_step<acc_t, kVariants>(st, static_cast<acc_t>(xt[i]), prm, d, dt);
            m[i] = st.m, sy[i] = st.s, g[i] = st.g, ul[i] = st.u_last;
            spk[i] = s ? 1 : 0;
          }
          int32_t* c_t = cnt + t * KS;
          int64_t i = 0;
          if (copies == kCopies) {
            for (; i + kCopies <= len; i += kCopies) {
              for (int64_t j = 0; j < kCopies; ++j) c_t[j * H + slot[i + j]] += spk[i + j];
            }
          }
          for (; i < len; ++i) c_t[slot[i]] += spk[i];
          if (track_max) {
            int32_t* f_t = first + t * KS;
            for (i = 0; i < len; ++i) {
              int32_t& f = f_t[(i % copies) * H + slot[i]];
              f = min_first(f, spk[i], static_cast<int32_t>(p0 + i));
            }
          }
        }
      }
      for (int64_t t = 0; t < T; ++t) {
        const int32_t* n_row = counts + a.layout.count_row(t, b, K);
        scalar_t* y_row = y + (t * B * C + bc) * K;
        const int32_t* c_t = cnt + t * KS;
        for (int64_t k = 0; k < K; ++k) {
          int32_t total = 0;
          for (int64_t j = 0; j < copies; ++j) total += c_t[j * H + k];
          y_row[k] = static_cast<scalar_t>(pooled_from_count<acc_t>(a.mode, total, n_row[k]));
        }
        if (track_max) {
          int32_t* a_row = argmax + (t * B * C + bc) * K;
          const int32_t* f_t = first + t * KS;
          for (int64_t k = 0; k < K; ++k) {
            int32_t f = kNoPixel;
            for (int64_t j = 0; j < copies; ++j) f = std::min(f, f_t[j * H + k]);
            a_row[k] = f == kNoPixel ? -1 : f;
          }
        }
      }
    }
  });
}

// The backward's per-(b, c) tables: gk[t, k] = dL/dspike for a spiking pixel
// of superpixel k at step t (g, g / n or, for max, g at the argmax pixel only),
// am[t, k] the argmax (max only). Slot K, for ignored pixels, holds 0 and -2.
// One division per superpixel rather than per pixel; pooled_grad gives the
// same value bit for bit.
template <typename scalar_t, typename acc_t>
void pooled_grad_tables(const FusedArgs& a, int64_t bc, const scalar_t* grad_y, const int32_t* counts,
                        const int32_t* argmax, acc_t* gk, int32_t* am) {
  const int64_t T = a.T, K = a.K, BC = a.B * a.C, b = bc / a.C;
  for (int64_t t = 0; t < T; ++t) {
    const scalar_t* g_row = grad_y + (t * BC + bc) * K;
    const int32_t* n_row = counts + a.layout.count_row(t, b, K);
    acc_t* gk_t = gk + t * (K + 1);
    for (int64_t k = 0; k < K; ++k) {
      // For max, pooled_grad(g, n, argmax, p) is g when p is the argmax.
      gk_t[k] = pooled_grad<acc_t>(a.mode, static_cast<acc_t>(g_row[k]), n_row[k], 0, 0);
    }
    gk_t[K] = acc_t(0);
    if (am != nullptr) {
      std::copy(argmax + (t * BC + bc) * K, argmax + (t * BC + bc + 1) * K, am + t * (K + 1));
      am[t * (K + 1) + K] = -2;
    }
  }
}

// Per block of a plane's pixels: the neuron's forward again from x and zeros
// (cpu::recompute_factors, the forward's srm_step, so the same bits) into a scratch of the
// factors, then the walk from T-1 down to 0. Per step row of it, like srm.cpp's backward: a
// scalar pass gathers each pixel's pooled gradient G were it to spike (read only at
// spikes), a vectorised pass advances the neuron states (srm_grad_advance), a scalar pass
// gathers the table entries and a vectorised pass writes grad_x (srm_grad_emit).
template <typename scalar_t, typename acc_t, typename label_t, bool kVariants>
void fused_backward_kernel(const FusedArgs& a, const scalar_t* grad_y, const int32_t* counts, const int32_t* argmax,
                           const acc_t* tables, const SRMParams<acc_t>& prm, acc_t du_inv_clamp, acc_t max_dudt_inv,
                           scalar_t* grad_x) {
  const scalar_t* x = a.x.data_ptr<scalar_t>();
  const label_t* labels = a.labels.data_ptr<label_t>();
  const int64_t T = a.T, C = a.C, P = a.P, K = a.K, B = a.B;
  const int64_t N = B * C * P;
  const acc_t* epsw = tables;
  const acc_t* epst = tables + T;
  const int64_t lanes = cpu::recompute_lanes(T, kBlock);
  at::parallel_for(0, B * C, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> scratch(static_cast<size_t>(2 * T * lanes));  // step t: fw at 2 t lanes, ft after it
    alignas(64) acc_t m[kBlock], sy[kBlock], g[kBlock], ul[kBlock];
    alignas(64) acc_t aw[kBlock], at_[kBlock], G[kBlock], ew[kBlock], et[kBlock];
    alignas(64) int32_t lag[kBlock], idx[kBlock], slot[kBlock], spk[kBlock];
    const bool is_max = a.mode == PoolMode::Max;
    // Rewritten for every (b, c): on cache lines of their own (cpu::own_lines).
    std::vector<acc_t> gk_buf(cpu::own_lines_size<acc_t>(T * (K + 1)));
    std::vector<int32_t> am_buf(is_max ? cpu::own_lines_size<int32_t>(T * (K + 1)) : 0);
    acc_t* const gk = cpu::own_lines(gk_buf.data());
    int32_t* const am = is_max ? cpu::own_lines(am_buf.data()) : nullptr;
    for (int64_t bc = begin; bc < end; ++bc) {
      const int64_t b = bc / C;
      pooled_grad_tables<scalar_t, acc_t>(a, bc, grad_y, counts, argmax, gk, am);
      for (int64_t p0 = 0; p0 < P; p0 += lanes) {
        const int64_t len = std::min(lanes, P - p0);
        for (acc_t* row : {m, sy, g, ul}) std::fill(row, row + len, acc_t(0));
        cpu::recompute_factors<scalar_t, acc_t, kVariants>(x + bc * P + p0, N, T, len, lanes, prm, du_inv_clamp,
                                                           max_dudt_inv, m, sy, g, ul, spk, scratch.data());
        std::fill(aw, aw + len, acc_t(0));
        std::fill(at_, at_ + len, acc_t(0));
        std::fill(lag, lag + len, int32_t(-1));
        for (int64_t t = T - 1; t >= 0; --t) {
          if (t == T - 1 || a.layout.L > 1) label_slots(labels + a.layout.offset(t, b) + p0, len, K, slot);
          const int64_t base = t * N + bc * P + p0;
          const acc_t* __restrict__ s0 = scratch.data() + 2 * t * lanes;  // is_spike_factor marks a spike
          const acc_t* __restrict__ s1 = s0 + lanes;
          // G: the pooled gradient were the pixel to spike (srm_grad_advance reads
          // it only at spikes). Unconditional loads, so that no branch depends on a spike.
          const acc_t* gk_t = gk + t * (K + 1);
          for (int64_t i = 0; i < len; ++i) G[i] = gk_t[slot[i]];
          if (is_max) {
            const int32_t* am_t = am + t * (K + 1);
            for (int64_t i = 0; i < len; ++i) idx[i] = am_t[slot[i]];
            for (int64_t i = 0; i < len; ++i) G[i] = idx[i] == static_cast<int32_t>(p0 + i) ? G[i] : acc_t(0);
          }
          for (int64_t i = 0; i < len; ++i) {
            SRMGradState<acc_t> st{aw[i], at_[i], lag[i]};
            idx[i] = srm_grad_advance<acc_t>(st, is_spike_factor(s0[i]), G[i], s0[i], s1[i]);
            aw[i] = st.aw, at_[i] = st.at, lag[i] = st.lag;
          }
          for (int64_t i = 0; i < len; ++i) ew[i] = epsw[idx[i]], et[i] = epst[idx[i]];
          scalar_t* __restrict__ gx = grad_x + base;
          for (int64_t i = 0; i < len; ++i) {
            acc_t gw, gt;
            srm_grad_emit<acc_t>(SRMGradState<acc_t>{aw[i], at_[i], lag[i]}, ew[i], et[i], gw, gt);
            gx[i] = static_cast<scalar_t>(gw);
          }
        }
      }
    }
  });
}

// The fused ops' one CPU strategy, or an error naming the valid ones.
void fused_strategy(const char* op, c10::string_view strategy) {
  resolve_strategy(op, strategy, cpu::kFusedStrategies, cpu::srm_suppix_pool_strategy(),
                   [](cpu::FusedStrategy s) { return cpu::fused_rejects(s); });
}

at::Tensor count_labels(const FusedArgs& a) {
  at::Tensor counts = at::empty({a.layout.L, a.layout.Bl, a.K}, a.labels.options().dtype(at::kInt));
  AT_DISPATCH_INDEX_TYPES(a.labels.scalar_type(), "count_labels_cpu", [&] {
    cpu::count_labels<index_t>(a.labels.data_ptr<index_t>(), counts.data_ptr<int32_t>(), a.layout.maps(), a.P, a.K);
  });
  return counts;
}

// argmax: the training forward's for "max" (or an empty tensor), nullptr for inference.
void run_forward(const FusedArgs& a, double tau_m, double tau_s, double tau_grad, double v_th, int64_t variant,
                 const at::Tensor& counts, at::Tensor& y, at::Tensor* argmax) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.x.scalar_type(), "srm_suppix_pool_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto prm = make_srm_params<acc_t>(tau_m, tau_s, tau_grad, v_th, variant);
    AT_DISPATCH_INDEX_TYPES(a.labels.scalar_type(), "srm_suppix_pool_cpu_labels", [&] {
      const auto run = [&](auto kernel) {
        kernel(a, prm, counts.data_ptr<int32_t>(), y.data_ptr<scalar_t>(),
               argmax && argmax->numel() ? argmax->data_ptr<int32_t>() : nullptr);
      };
      if (variant == 0) {
        run(fused_forward_kernel<scalar_t, acc_t, index_t, false>);
      } else {
        run(fused_forward_kernel<scalar_t, acc_t, index_t, true>);
      }
    });
  });
}

at::Tensor srm_suppix_pool_cpu(const at::Tensor& x, const at::Tensor& labels, int64_t K, c10::string_view mode,
                               double tau_m, double tau_s, double tau_grad, double v_th, int64_t variant,
                               bool check_labels, c10::string_view strategy) {
  fused_strategy("srm_suppix_pool", strategy);
  check_srm_neuron_params(tau_m, tau_s, tau_grad, v_th);
  check_srm_variant(variant);
  auto a = prepare_fused(x, labels, K, mode);
  if (check_labels) check_suppix_label_range(a.labels, K);
  const at::Tensor counts = count_labels(a);
  at::Tensor y = fused_output(a);
  run_forward(a, tau_m, tau_s, tau_grad, v_th, variant, counts, y, nullptr);
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> srm_suppix_pool_fwd_cpu(
    const at::Tensor& x, const at::Tensor& labels, int64_t K, c10::string_view mode, double tau_m, double tau_s,
    double tau_grad, double v_th, double du_inv_clamp, double max_dudt_inv, int64_t variant, bool check_labels,
    c10::string_view strategy) {
  fused_strategy("srm_suppix_pool_fwd", strategy);
  check_srm_neuron_params(tau_m, tau_s, tau_grad, v_th);
  check_backward_params(du_inv_clamp, max_dudt_inv);
  check_srm_variant(variant);
  auto a = prepare_fused(x, labels, K, mode);
  if (check_labels) check_suppix_label_range(a.labels, K);
  const at::Tensor counts = count_labels(a);
  at::Tensor y = fused_output(a);
  at::Tensor argmax = a.mode == PoolMode::Max ? at::empty({a.T, a.B, a.C, a.K}, counts.options())
                                              : at::empty({0}, counts.options());
  run_forward(a, tau_m, tau_s, tau_grad, v_th, variant, counts, y, &argmax);
  return {y, counts, argmax};
}

at::Tensor srm_suppix_pool_bwd_cpu(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& labels,
                                   const at::Tensor& counts, const at::Tensor& argmax, c10::string_view mode,
                                   double tau_m, double tau_s, double tau_grad, double v_th, double du_inv_clamp,
                                   double max_dudt_inv, int64_t variant, c10::string_view strategy) {
  fused_strategy("srm_suppix_pool_bwd", strategy);
  check_srm_neuron_params(tau_m, tau_s, tau_grad, v_th);
  check_backward_params(du_inv_clamp, max_dudt_inv);
  check_srm_variant(variant);
  auto a = prepare_fused_backward(grad_y, x, labels, mode);
  check_fused_backward(grad_y, counts, argmax, a);
  const at::Tensor g = grad_y.contiguous();
  const at::Tensor cn = counts.contiguous();
  const at::Tensor am = argmax.contiguous();
  at::Tensor grad_x = at::empty({a.T, a.B, a.C, a.P}, grad_y.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "srm_suppix_pool_bwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    std::vector<acc_t> tables(static_cast<size_t>(2 * std::max<int64_t>(a.T, 1)));
    fill_srm_tables<acc_t>(tables.data(), a.T, tau_m, tau_s, tau_grad, variant_trace(variant));
    const auto prm = make_srm_params<acc_t>(tau_m, tau_s, tau_grad, v_th, variant);
    const acc_t lo_w = param_to_acc<acc_t>(du_inv_clamp), lo_t = param_to_acc<acc_t>(max_dudt_inv);
    AT_DISPATCH_INDEX_TYPES(a.labels.scalar_type(), "srm_suppix_pool_bwd_cpu_labels", [&] {
      const auto run = [&](auto kernel) {
        kernel(a, g.data_ptr<scalar_t>(), cn.data_ptr<int32_t>(),
               a.mode == PoolMode::Max ? am.data_ptr<int32_t>() : nullptr, tables.data(), prm, lo_w, lo_t,
               grad_x.data_ptr<scalar_t>());
      };
      if (variant == 0) {
        run(fused_backward_kernel<scalar_t, acc_t, index_t, false>);
      } else {
        run(fused_backward_kernel<scalar_t, acc_t, index_t, true>);
      }
    });
  });
  return grad_x;
}

}  // namespace

TORCH_LIBRARY_IMPL(snnspx, CPU, m) {
  m.impl("srm_suppix_pool", &srm_suppix_pool_cpu);
  m.impl("srm_suppix_pool_fwd", &srm_suppix_pool_fwd_cpu);
  m.impl("srm_suppix_pool_bwd", &srm_suppix_pool_bwd_cpu);
}

}  // namespace snnspx
