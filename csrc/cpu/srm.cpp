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

#include "../srm_core.h"
#include "../srm_glue.h"

namespace snnspx {
namespace {

constexpr int64_t kBlock = 256;

// kPacked=false: du/dut are the public [T, N] outputs.
// kPacked=true: du/dut point at saved[0]/saved[1] of srm_neuron_fwd: the factors
// inv_clamp(du) and inv_clamp(dut) at spikes; silent_mark() and 0 elsewhere.
// kVariants: srm_step's (false for variant 0, so its loop is the default neuron's alone).
// state_in / state_out: the carried state [4, N] = (m, s, g, u_last) rows before the first
// step / after the last (nullptr: start from zeros / not written). Read and written once
// per block of neurons, outside the step loop.
template <typename scalar_t, typename acc_t, bool kPacked, bool kVariants>
void srm_forward_kernel(const scalar_t* x, scalar_t* spikes, acc_t* du, acc_t* dut, int64_t T, int64_t N,
                        SRMParams<acc_t> p, acc_t du_inv_clamp, acc_t max_dudt_inv, const acc_t* state_in,
                        acc_t* state_out) {
  const int64_t grain = std::max<int64_t>(kBlock, 32768 / std::max<int64_t>(T, 1));
  at::parallel_for(0, N, grain, [&](int64_t begin, int64_t end) {
    // Structure-of-arrays state so that the inner loop over neurons vectorises.
    alignas(64) acc_t m[kBlock], sy[kBlock], g[kBlock], ul[kBlock];
    acc_t* const rows[4] = {m, sy, g, ul};  // the order of the state's rows
    for (int64_t n0 = begin; n0 < end; n0 += kBlock) {
      const int64_t len = std::min(kBlock, end - n0);
      for (int k = 0; k < 4; ++k) {
        if (state_in != nullptr) {
          std::copy(state_in + k * N + n0, state_in + k * N + n0 + len, rows[k]);
        } else {
          std::fill(rows[k], rows[k] + len, acc_t(0));
        }
      }
      for (int64_t t = 0; t < T; ++t) {
        const int64_t base = t * N + n0;
        const scalar_t* __restrict__ xt = x + base;
        scalar_t* __restrict__ st_out = spikes + base;
        acc_t* __restrict__ du_out = du + base;
        acc_t* __restrict__ dut_out = dut + base;
        for (int64_t i = 0; i < len; ++i) {
          SRMState<acc_t> st{m[i], sy[i], g[i], ul[i]};
          acc_t d, dt;
          const bool s = srm_step<acc_t, kVariants>(st, static_cast<acc_t>(xt[i]), p, d, dt);
          m[i] = st.m, sy[i] = st.s, g[i] = st.g, ul[i] = st.u_last;
          st_out[i] = static_cast<scalar_t>(s ? acc_t(1) : acc_t(0));
          du_out[i] = d;
          dut_out[i] = dt;
        }
        if (kPacked) {
          // A second, branch-free pass turns (du, dut) into the saved factors:
          // the divisions run unconditionally, so this loop vectorises.
          for (int64_t i = 0; i < len; ++i) {
            const bool s = static_cast<acc_t>(st_out[i]) == acc_t(1);
            const acc_t fw = inv_clamp(du_out[i], du_inv_clamp), ft = inv_clamp(dut_out[i], max_dudt_inv);
            du_out[i] = s ? fw : silent_mark<acc_t>();
            dut_out[i] = s ? ft : acc_t(0);
          }
        }
      }
      if (state_out != nullptr) {
        for (int k = 0; k < 4; ++k) std::copy(rows[k], rows[k] + len, state_out + k * N + n0);
      }
    }
  });
}

// kPacked=false: spikes read from `spikes` (a spike is a 1), factors computed
// from du/dut, grad_t written. kPacked=true: du/dut hold srm_neuron_fwd's
// factors (a spike is a factor <= 0); grad_t is not written.
//
// Per step row: one pass computes the spike flags and factors (the divisions run
// unconditionally, so it vectorises; the packed state holds the factors already
// and is read in place); a second advances each neuron's state
// (srm_grad_advance, vectorised); a scalar pass gathers the table entries; a
// last one writes the gradients (srm_grad_emit, vectorised). Together these are
// srm_grad_step. G is read everywhere but used only at spikes (selects never
// propagate a NaN from a silent step).
template <typename scalar_t, typename acc_t, bool kPacked>
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
        scalar_t* __restrict__ gwp = grad_w + base;
        scalar_t* __restrict__ gtp = kPacked ? nullptr : grad_t + base;
        if (kPacked) {  // the saved factors are read in place (a spike is a factor <= 0)
          for (int64_t i = 0; i < len; ++i) {
            SRMGradState<acc_t> st{aw[i], at[i], lag[i]};
            idx[i] = srm_grad_advance<acc_t>(st, dup[i] <= acc_t(0), static_cast<acc_t>(gp[i]), dup[i], dutp[i]);
            aw[i] = st.aw, at[i] = st.at, lag[i] = st.lag;
          }
        } else {
          const scalar_t* __restrict__ sp = spikes + base;
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
        }
        for (int64_t i = 0; i < len; ++i) ew[i] = epsw[idx[i]], et[i] = epst[idx[i]];
        for (int64_t i = 0; i < len; ++i) {
          acc_t gw, gt;
          srm_grad_emit<acc_t>(SRMGradState<acc_t>{aw[i], at[i], lag[i]}, ew[i], et[i], gw, gt);
          gwp[i] = static_cast<scalar_t>(gw);
          if (!kPacked) gtp[i] = static_cast<scalar_t>(gt);
        }
      }
    }
  });
}

// srm_forward_kernel for x's dtype, with the default neuron's loop for variant 0.
// kPacked=true writes srm_neuron_fwd's saved state [2, T, ...] into o.du. The carried state
// is read from o.state_in and written to o.state_out where those are defined.
template <bool kPacked>
void run_forward(const SRMForwardOut& o, double tau_m, double tau_s, double tau_grad, double v_th, int64_t variant,
                 double du_inv_clamp, double max_dudt_inv) {
  check_srm_variant(variant);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, o.x.scalar_type(), "srm_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    acc_t* du = o.du.data_ptr<acc_t>();
    acc_t* dut = kPacked ? du + o.T * o.N : o.dut.data_ptr<acc_t>();
    const auto p = make_srm_params<acc_t>(tau_m, tau_s, tau_grad, v_th, variant);
    const acc_t lo_w = param_to_acc<acc_t>(du_inv_clamp), lo_t = param_to_acc<acc_t>(max_dudt_inv);
    const scalar_t* x = o.x.data_ptr<scalar_t>();
    scalar_t* spikes = o.spikes.data_ptr<scalar_t>();
    const acc_t* st_in = o.state_in.defined() ? o.state_in.data_ptr<acc_t>() : nullptr;
    acc_t* st_out = o.state_out.defined() ? o.state_out.data_ptr<acc_t>() : nullptr;
    if (variant == 0) {
      srm_forward_kernel<scalar_t, acc_t, kPacked, false>(x, spikes, du, dut, o.T, o.N, p, lo_w, lo_t, st_in, st_out);
    } else {
      srm_forward_kernel<scalar_t, acc_t, kPacked, true>(x, spikes, du, dut, o.T, o.N, p, lo_w, lo_t, st_in, st_out);
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> srm_forward_cpu(const at::Tensor& x, double tau_m, double tau_s,
                                                               double tau_grad, double v_th, int64_t variant) {
  auto o = prepare_srm_forward(x, tau_m, tau_s, tau_grad, v_th, /*packed=*/false);
  run_forward<false>(o, tau_m, tau_s, tau_grad, v_th, variant, 0.0, 0.0);
  return {o.spikes, o.du, o.dut};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> srm_neuron_fwd_cpu(const at::Tensor& x, double tau_m, double tau_s,
                                                                  double tau_grad, double v_th, double du_inv_clamp,
                                                                  double max_dudt_inv, int64_t variant,
                                                                  const std::optional<at::Tensor>& state) {
  check_backward_params(du_inv_clamp, max_dudt_inv);
  auto o = prepare_srm_forward(x, tau_m, tau_s, tau_grad, v_th, /*packed=*/true);
  add_srm_state(o, state);
  run_forward<true>(o, tau_m, tau_s, tau_grad, v_th, variant, du_inv_clamp, max_dudt_inv);
  return {o.spikes, o.du, o.state_out};
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
    srm_backward_kernel<scalar_t, acc_t, false>(
        a.grad.data_ptr<scalar_t>(), spk.data_ptr<scalar_t>(), a.du.data_ptr<acc_t>(), a.dut.data_ptr<acc_t>(),
        a.grad_w.data_ptr<scalar_t>(), a.grad_t.data_ptr<scalar_t>(), tables.data(), a.T, a.N,
        param_to_acc<acc_t>(du_inv_clamp), param_to_acc<acc_t>(max_dudt_inv));
  });
  return {a.grad_w, a.grad_t};
}

at::Tensor srm_neuron_bwd_cpu(const at::Tensor& grad_spikes, const at::Tensor& saved, double tau_m, double tau_s,
                              double tau_grad, double du_inv_clamp, double max_dudt_inv, int64_t variant) {
  check_srm_variant(variant);
  auto a = prepare_srm_neuron_backward(grad_spikes, saved, tau_m, tau_s, tau_grad, du_inv_clamp, max_dudt_inv);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.grad.scalar_type(), "srm_neuron_bwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    TORCH_CHECK(a.du.scalar_type() == c10::CppTypeToScalarType<acc_t>::value, "saved must be ",
                c10::CppTypeToScalarType<acc_t>::value, " for grad_spikes of dtype ", a.grad.scalar_type(),
                ", got ", a.du.scalar_type());
    auto tables = host_tables<acc_t>(a.T, tau_m, tau_s, tau_grad, variant);
    const acc_t* saved_p = a.du.data_ptr<acc_t>();
    srm_backward_kernel<scalar_t, acc_t, true>(a.grad.data_ptr<scalar_t>(), nullptr, saved_p,
                                               saved_p + a.T * a.N, a.grad_w.data_ptr<scalar_t>(), nullptr,
                                               tables.data(), a.T, a.N, param_to_acc<acc_t>(du_inv_clamp),
                                               param_to_acc<acc_t>(max_dudt_inv));
  });
  return a.grad_w;
}

}  // namespace

TORCH_LIBRARY_IMPL(snnspx, CPU, m) {
  m.impl("srm_forward", &srm_forward_cpu);
  m.impl("srm_backward", &srm_backward_cpu);
  m.impl("srm_neuron_fwd", &srm_neuron_fwd_cpu);
  m.impl("srm_neuron_bwd", &srm_neuron_bwd_cpu);
}

}  // namespace snnspx
