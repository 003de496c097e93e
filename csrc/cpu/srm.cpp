// CPU kernels of the SRM neuron (docs/maths.md §2-§3), parallel over neurons with
// at::parallel_for. Each task walks a block of kBlock neurons through all T
// steps, step-major, so the reads of x[t, n0:n0+kBlock] are contiguous and the
// per-neuron state stays in cache.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "../srm_core.h"
#include "../srm_glue.h"
#include "srm_recompute.h"

namespace snnspx {
namespace {

constexpr int64_t kBlock = 256;

// The carried state of neurons n0 .. n0 + len - 1 into the structure-of-arrays rows
// (m, s, g, u_last): from state_in ([4, N]), or zeros where state_in is nullptr.
template <typename acc_t>
inline void load_state_rows(const acc_t* state_in, int64_t N, int64_t n0, int64_t len, acc_t* const rows[4]) {
  for (int k = 0; k < 4; ++k) {
    if (state_in != nullptr) {
      std::copy(state_in + k * N + n0, state_in + k * N + n0 + len, rows[k]);
    } else {
      std::fill(rows[k], rows[k] + len, acc_t(0));
    }
  }
}

// kTraces=true: du/dut are srm_forward's public [T, N] outputs; false: only the spikes are
// written (srm_neuron_fwd; its backward recomputes the traces from x).
// kVariants: srm_step's (false for variant 0, so its loop is the default neuron's alone).
// state_in / state_out: the carried state [4, N] = (m, s, g, u_last) rows before the first
// step / after the last (nullptr: start from zeros / not written). Read and written once
// per block of neurons, outside the step loop.
template <typename scalar_t, typename acc_t, bool kTraces, bool kVariants>
void srm_forward_kernel(const scalar_t* x, scalar_t* spikes, acc_t* du, acc_t* dut, int64_t T, int64_t N,
                        SRMParams<acc_t> p, const acc_t* state_in, acc_t* state_out) {
  const int64_t grain = std::max<int64_t>(kBlock, 32768 / std::max<int64_t>(T, 1));
  at::parallel_for(0, N, grain, [&](int64_t begin, int64_t end) {
    // Structure-of-arrays state so that the inner loop over neurons vectorises.
    alignas(64) acc_t m[kBlock], sy[kBlock], g[kBlock], ul[kBlock];
    acc_t* const rows[4] = {m, sy, g, ul};  // the order of the state's rows
    for (int64_t n0 = begin; n0 < end; n0 += kBlock) {
      const int64_t len = std::min(kBlock, end - n0);
      load_state_rows(state_in, N, n0, len, rows);
      for (int64_t t = 0; t < T; ++t) {
        const int64_t base = t * N + n0;
        const scalar_t* __restrict__ xt = x + base;
        scalar_t* __restrict__ st_out = spikes + base;
        acc_t* __restrict__ du_out = kTraces ? du + base : nullptr;
        acc_t* __restrict__ dut_out = kTraces ? dut + base : nullptr;
        for (int64_t i = 0; i < len; ++i) {
          SRMState<acc_t> st{m[i], sy[i], g[i], ul[i]};
          acc_t d, dt;
          const bool s = srm_step<acc_t, kVariants>(st, static_cast<acc_t>(xt[i]), p, d, dt);
          m[i] = st.m, sy[i] = st.s, g[i] = st.g, ul[i] = st.u_last;
          st_out[i] = static_cast<scalar_t>(s ? acc_t(1) : acc_t(0));
          if (kTraces) du_out[i] = d, dut_out[i] = dt;
        }
      }
      if (state_out != nullptr) {
        for (int k = 0; k < 4; ++k) std::copy(rows[k], rows[k] + len, state_out + k * N + n0);
      }
    }
  });
}

// srm_backward's kernel: spikes read from `spikes` (a spike is a 1), factors computed from
// du/dut, grad_w and grad_t written.
//
// Per step row: one pass computes the spike flags and factors (the divisions run
// unconditionally, so it vectorises); a second advances each neuron's state
// (srm_grad_advance, vectorised); a scalar pass gathers the table entries; a
// last one writes the gradients (srm_grad_emit, vectorised). Together these are
// srm_grad_step. G is read everywhere but used only at spikes (selects never
// propagate a NaN from a silent step).
template <typename scalar_t, typename acc_t>
void srm_backward_kernel(const scalar_t* grad, const scalar_t* spikes, const acc_t* du, const acc_t* dut,
                         scalar_t* grad_w, scalar_t* grad_t, const acc_t* tables, int64_t T, int64_t N,
                         acc_t du_inv_clamp, acc_t max_dudt_inv) {
  const acc_t* epsw = tables;
  const acc_t* epst = tables + T;
  const int64_t grain = std::max<int64_t>(kBlock, 32768 / std::max<int64_t>(T, 1));
  at::parallel_for(0, N, grain, [&](int64_t begin, int64_t end) {
    alignas(64) acc_t aw[kBlock], at[kBlock], fw[kBlock], ft[kBlock], ew[kBlock], et[kBlock];
    alignas(64) int32_t lag[kBlock], idx[kBlock], spk[kBlock];
    for (int64_t n0 = begin; n0 < end; n0 += kBlock) {
      const int64_t len = std::min(kBlock, end - n0);
      std::fill(aw, aw + len, acc_t(0));
      std::fill(at, at + len, acc_t(0));
      std::fill(lag, lag + len, int32_t(-1));
      for (int64_t t = T - 1; t >= 0; --t) {
        const int64_t base = t * N + n0;
        const acc_t* __restrict__ dup = du + base;
        const acc_t* __restrict__ dutp = dut + base;
        const scalar_t* __restrict__ gp = grad + base;
        const scalar_t* __restrict__ sp = spikes + base;
        scalar_t* __restrict__ gwp = grad_w + base;
        scalar_t* __restrict__ gtp = grad_t + base;
        for (int64_t i = 0; i < len; ++i) {
          spk[i] = static_cast<acc_t>(sp[i]) == acc_t(1);
          fw[i] = inv_clamp(dup[i], du_inv_clamp);
          ft[i] = inv_clamp(dutp[i], max_dudt_inv);
        }
        for (int64_t i = 0; i < len; ++i) {
          SRMGradState<acc_t> st{aw[i], at[i], lag[i]};
          idx[i] = srm_grad_advance<acc_t>(st, spk[i] != 0, static_cast<acc_t>(gp[i]), fw[i], ft[i]);
          aw[i] = st.aw, at[i] = st.at, lag[i] = st.lag;
        }
        for (int64_t i = 0; i < len; ++i) ew[i] = epsw[idx[i]], et[i] = epst[idx[i]];
        for (int64_t i = 0; i < len; ++i) {
          acc_t gw, gt;
          srm_grad_emit<acc_t>(SRMGradState<acc_t>{aw[i], at[i], lag[i]}, ew[i], et[i], gw, gt);
          gwp[i] = static_cast<scalar_t>(gw);
          gtp[i] = static_cast<scalar_t>(gt);
        }
      }
    }
  });
}

// srm_neuron_bwd's kernel. Per block of neurons: the forward again, from x and the state
// it started from (cpu::recompute_factors: the same srm_step, so the same bits), into a
// scratch of the backward's factors; then the walk from T-1 down to 0 as
// srm_backward_kernel's, reading the scratch. Nothing per neuron-step is kept between the
// forward and the backward but x itself.
// grad_t == nullptr: not wanted.
template <typename scalar_t, typename acc_t, bool kVariants>
void srm_neuron_backward_kernel(const scalar_t* grad, const scalar_t* x, const acc_t* state_in, scalar_t* grad_w,
                                scalar_t* grad_t, const acc_t* tables, int64_t T, int64_t N, SRMParams<acc_t> p,
                                acc_t du_inv_clamp, acc_t max_dudt_inv) {
  const acc_t* epsw = tables;
  const acc_t* epst = tables + T;
  const int64_t lanes = cpu::recompute_lanes(T, kBlock);
  const int64_t grain = std::max<int64_t>(lanes, 32768 / std::max<int64_t>(T, 1));
  at::parallel_for(0, N, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> scratch(static_cast<size_t>(2 * T * lanes));  // step t: fw at 2 t lanes, ft after it
    alignas(64) acc_t m[kBlock], sy[kBlock], g[kBlock], ul[kBlock];
    alignas(64) acc_t aw[kBlock], at[kBlock], ew[kBlock], et[kBlock];
    alignas(64) int32_t lag[kBlock], idx[kBlock], spk[kBlock];
    acc_t* const rows[4] = {m, sy, g, ul};
    for (int64_t n0 = begin; n0 < end; n0 += lanes) {
      const int64_t len = std::min(lanes, end - n0);
      load_state_rows(state_in, N, n0, len, rows);
      cpu::recompute_factors<scalar_t, acc_t, kVariants>(x + n0, N, T, len, lanes, p, du_inv_clamp, max_dudt_inv, m,
                                                         sy, g, ul, spk, scratch.data());
      std::fill(aw, aw + len, acc_t(0));
      std::fill(at, at + len, acc_t(0));
      std::fill(lag, lag + len, int32_t(-1));
      for (int64_t t = T - 1; t >= 0; --t) {
        const int64_t base = t * N + n0;
        const acc_t* __restrict__ fw = scratch.data() + 2 * t * lanes;
        const acc_t* __restrict__ ft = fw + lanes;
        const scalar_t* __restrict__ gp = grad + base;
        for (int64_t i = 0; i < len; ++i) {  // silent steps hold the mark (srm_core.h's is_spike_factor)
          SRMGradState<acc_t> st{aw[i], at[i], lag[i]};
          idx[i] = srm_grad_advance<acc_t>(st, is_spike_factor(fw[i]), static_cast<acc_t>(gp[i]), fw[i], ft[i]);
          aw[i] = st.aw, at[i] = st.at, lag[i] = st.lag;
        }
        for (int64_t i = 0; i < len; ++i) ew[i] = epsw[idx[i]], et[i] = epst[idx[i]];
        scalar_t* __restrict__ gwp = grad_w + base;
        if (grad_t == nullptr) {
          for (int64_t i = 0; i < len; ++i) {
            acc_t gw, gt;
            srm_grad_emit<acc_t>(SRMGradState<acc_t>{aw[i], at[i], lag[i]}, ew[i], et[i], gw, gt);
            gwp[i] = static_cast<scalar_t>(gw);
          }
        } else {
          scalar_t* __restrict__ gtp = grad_t + base;
          for (int64_t i = 0; i < len; ++i) {
            acc_t gw, gt;
            srm_grad_emit<acc_t>(SRMGradState<acc_t>{aw[i], at[i], lag[i]}, ew[i], et[i], gw, gt);
            gwp[i] = static_cast<scalar_t>(gw);
            gtp[i] = static_cast<scalar_t>(gt);
          }
        }
      }
    }
  });
}

// srm_forward_kernel for x's dtype, with the default neuron's loop for variant 0.
// kTraces=true writes srm_forward's du and dut. The carried state is read from o.state_in
// and written to o.state_out where those are defined and not empty.
template <bool kTraces>
void run_forward(const SRMForwardOut& o, double tau_m, double tau_s, double tau_grad, double v_th, int64_t variant) {
  check_srm_variant(variant);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, o.x.scalar_type(), "srm_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    acc_t* du = kTraces ? o.du.data_ptr<acc_t>() : nullptr;
    acc_t* dut = kTraces ? o.dut.data_ptr<acc_t>() : nullptr;
    const auto p = make_srm_params<acc_t>(tau_m, tau_s, tau_grad, v_th, variant);
    const scalar_t* x = o.x.data_ptr<scalar_t>();
    scalar_t* spikes = o.spikes.data_ptr<scalar_t>();
    const acc_t* st_in = o.state_in.defined() ? o.state_in.data_ptr<acc_t>() : nullptr;
    acc_t* st_out = o.state_out.defined() && o.state_out.numel() > 0 ? o.state_out.data_ptr<acc_t>() : nullptr;
    if (variant == 0) {
      srm_forward_kernel<scalar_t, acc_t, kTraces, false>(x, spikes, du, dut, o.T, o.N, p, st_in, st_out);
    } else {
      srm_forward_kernel<scalar_t, acc_t, kTraces, true>(x, spikes, du, dut, o.T, o.N, p, st_in, st_out);
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> srm_forward_cpu(const at::Tensor& x, double tau_m, double tau_s,
                                                               double tau_grad, double v_th, int64_t variant) {
  auto o = prepare_srm_forward(x, tau_m, tau_s, tau_grad, v_th, /*traces=*/true);
  run_forward<true>(o, tau_m, tau_s, tau_grad, v_th, variant);
  return {o.spikes, o.du, o.dut};
}

// The clamps are srm_neuron_bwd's (the op's autograd passes them on); the forward checks them.
std::tuple<at::Tensor, at::Tensor> srm_neuron_fwd_cpu(const at::Tensor& x, double tau_m, double tau_s,
                                                      double tau_grad, double v_th, double du_inv_clamp,
                                                      double max_dudt_inv, int64_t variant,
                                                      const std::optional<at::Tensor>& state, bool return_state) {
  check_backward_params(du_inv_clamp, max_dudt_inv);
  auto o = prepare_srm_forward(x, tau_m, tau_s, tau_grad, v_th, /*traces=*/false);
  add_srm_state(o, state, return_state);
  run_forward<false>(o, tau_m, tau_s, tau_grad, v_th, variant);
  return {o.spikes, o.state_out};
}

// epsw and epst (srm_core.h's fill_srm_tables) for the variant's trace.
template <typename acc_t>
std::vector<acc_t> host_tables(int64_t T, double tau_m, double tau_s, double tau_grad, int64_t variant) {
  std::vector<acc_t> tables(static_cast<size_t>(2 * std::max<int64_t>(T, 1)));
  fill_srm_tables<acc_t>(tables.data(), T, tau_m, tau_s, tau_grad, variant_trace(variant));
  return tables;
}

std::tuple<at::Tensor, at::Tensor> srm_backward_cpu(const at::Tensor& grad_spikes, const at::Tensor& spikes,
                                                    const at::Tensor& du, const at::Tensor& dut, double tau_m,
                                                    double tau_s, double tau_grad, double du_inv_clamp,
                                                    double max_dudt_inv, int64_t variant) {
  check_srm_variant(variant);
  auto a = prepare_srm_backward(grad_spikes, spikes, du, dut, tau_m, tau_s, tau_grad, du_inv_clamp, max_dudt_inv);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.grad.scalar_type(), "srm_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    TORCH_CHECK(a.du.scalar_type() == c10::CppTypeToScalarType<acc_t>::value, "du must be ",
                c10::CppTypeToScalarType<acc_t>::value, " for grad_spikes of dtype ", a.grad.scalar_type(),
                ", got ", a.du.scalar_type());
    const at::Tensor spk = a.spikes.to(a.grad.scalar_type());
    auto tables = host_tables<acc_t>(a.T, tau_m, tau_s, tau_grad, variant);
    srm_backward_kernel<scalar_t, acc_t>(
        a.grad.data_ptr<scalar_t>(), spk.data_ptr<scalar_t>(), a.du.data_ptr<acc_t>(), a.dut.data_ptr<acc_t>(),
        a.grad_w.data_ptr<scalar_t>(), a.grad_t.data_ptr<scalar_t>(), tables.data(), a.T, a.N,
        param_to_acc<acc_t>(du_inv_clamp), param_to_acc<acc_t>(max_dudt_inv));
  });
  return {a.grad_w, a.grad_t};
}

std::tuple<at::Tensor, at::Tensor> srm_neuron_bwd_cpu(const at::Tensor& grad_spikes, const at::Tensor& x,
                                                      const std::optional<at::Tensor>& state, double tau_m,
                                                      double tau_s, double tau_grad, double v_th, double du_inv_clamp,
                                                      double max_dudt_inv, int64_t variant, bool with_t) {
  check_srm_variant(variant);
  auto a = prepare_srm_neuron_backward(grad_spikes, x, state, tau_m, tau_s, tau_grad, v_th, du_inv_clamp,
                                       max_dudt_inv, with_t);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.grad.scalar_type(), "srm_neuron_bwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto tables = host_tables<acc_t>(a.T, tau_m, tau_s, tau_grad, variant);
    const auto p = make_srm_params<acc_t>(tau_m, tau_s, tau_grad, v_th, variant);
    const acc_t* st_in = a.state.defined() ? a.state.data_ptr<acc_t>() : nullptr;
    scalar_t* gt = with_t ? a.grad_t.data_ptr<scalar_t>() : nullptr;
    const auto run = [&](auto kernel) {
      kernel(a.grad.data_ptr<scalar_t>(), a.x.data_ptr<scalar_t>(), st_in, a.grad_w.data_ptr<scalar_t>(), gt,
             tables.data(), a.T, a.N, p, param_to_acc<acc_t>(du_inv_clamp), param_to_acc<acc_t>(max_dudt_inv));
    };
    if (variant == 0) {
      run(srm_neuron_backward_kernel<scalar_t, acc_t, false>);
    } else {
      run(srm_neuron_backward_kernel<scalar_t, acc_t, true>);
    }
  });
  return {a.grad_w, a.grad_t};
}

}  // namespace

TORCH_LIBRARY_IMPL(snnspx, CPU, m) {
  m.impl("srm_forward", &srm_forward_cpu);
  m.impl("srm_backward", &srm_backward_cpu);
  m.impl("srm_neuron_fwd", &srm_neuron_fwd_cpu);
  m.impl("srm_neuron_bwd", &srm_neuron_bwd_cpu);
}

}  // namespace snnspx
