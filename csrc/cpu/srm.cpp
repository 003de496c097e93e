// CPU kernels of the SRM neuron (SPEC §2-§3), parallel over neurons with
// at::parallel_for. Each task walks a block of kBlock neurons through all T
// steps, step-major, so the reads of x[t, n0:n0+kBlock] are contiguous and the
// per-neuron state stays in cache.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>

#include "../kernel_counter.h"
#include "../srm_core.h"
#include "../srm_glue.h"

namespace snnspx {
namespace {

constexpr int64_t kBlock = 256;

// kPacked=false: du/dut are the public [T, N] outputs.
// kPacked=true: du/dut point at saved[0]/saved[1] of srm_neuron_fwd: the factors
// inv_clamp(du) and inv_clamp(dut) at spikes; silent_mark() and 0 elsewhere.
template <typename scalar_t, typename acc_t, bool kPacked>
void srm_forward_kernel(const scalar_t* x, scalar_t* spikes, acc_t* du, acc_t* dut, int64_t T, int64_t N,
                        SRMParams<acc_t> p, acc_t du_inv_clamp, acc_t max_dudt_inv) {
  const int64_t grain = std::max<int64_t>(kBlock, 32768 / std::max<int64_t>(T, 1));
  at::parallel_for(0, N, grain, [&](int64_t begin, int64_t end) {
    SRMState<acc_t> st[kBlock];
    for (int64_t n0 = begin; n0 < end; n0 += kBlock) {
      const int64_t len = std::min(kBlock, end - n0);
      for (int64_t i = 0; i < len; ++i) st[i] = SRMState<acc_t>();
      for (int64_t t = 0; t < T; ++t) {
        const int64_t base = t * N + n0;
        for (int64_t i = 0; i < len; ++i) {
          acc_t d, dt;
          const bool s = srm_step<acc_t>(st[i], static_cast<acc_t>(x[base + i]), p, d, dt);
          spikes[base + i] = static_cast<scalar_t>(s ? 1 : 0);
          if (kPacked) {
            du[base + i] = s ? inv_clamp(d, du_inv_clamp) : silent_mark<acc_t>();
            dut[base + i] = s ? inv_clamp(dt, max_dudt_inv) : acc_t(0);
          } else {
            du[base + i] = d;
            dut[base + i] = dt;
          }
        }
      }
    }
  });
}

// kPacked=false: spikes read from `spikes` (a spike is a 1), factors computed
// from du/dut, grad_t written. kPacked=true: du/dut hold srm_neuron_fwd's
// factors (a spike is a factor <= 0); grad_t is not written.
template <typename scalar_t, typename acc_t, bool kPacked>
void srm_backward_kernel(const scalar_t* grad, const scalar_t* spikes, const acc_t* du, const acc_t* dut,
                         scalar_t* grad_w, scalar_t* grad_t, const acc_t* tables, int64_t T, int64_t N,
                         acc_t du_inv_clamp, acc_t max_dudt_inv) {
  const acc_t* epsw = tables;
  const acc_t* epst = tables + T;
  const int64_t grain = std::max<int64_t>(kBlock, 32768 / std::max<int64_t>(T, 1));
  at::parallel_for(0, N, grain, [&](int64_t begin, int64_t end) {
    SRMGradState<acc_t> st[kBlock];
    for (int64_t n0 = begin; n0 < end; n0 += kBlock) {
      const int64_t len = std::min(kBlock, end - n0);
      for (int64_t i = 0; i < len; ++i) st[i] = SRMGradState<acc_t>();
      for (int64_t t = T - 1; t >= 0; --t) {
        const int64_t base = t * N + n0;
        for (int64_t i = 0; i < len; ++i) {
          const int64_t k = base + i;
          bool s;
          acc_t fw = acc_t(0), ft = acc_t(0), G = acc_t(0);
          if (kPacked) {
            s = du[k] <= acc_t(0);
            if (s) fw = du[k], ft = dut[k];
          } else {
            s = static_cast<acc_t>(spikes[k]) == acc_t(1);
            if (s) fw = inv_clamp(du[k], du_inv_clamp), ft = inv_clamp(dut[k], max_dudt_inv);
          }
          if (s) G = static_cast<acc_t>(grad[k]);
          acc_t gw, gt;
          srm_grad_step<acc_t>(st[i], s, G, fw, ft, epsw, epst, gw, gt);
          grad_w[k] = static_cast<scalar_t>(gw);
          if (!kPacked) grad_t[k] = static_cast<scalar_t>(gt);
        }
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> srm_forward_cpu(const at::Tensor& x, double tau_m, double tau_s,
                                                               double tau_grad, double v_th) {
  auto o = prepare_srm_forward(x, tau_m, tau_s, tau_grad, v_th, /*packed=*/false);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "srm_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    srm_forward_kernel<scalar_t, acc_t, false>(o.x.data_ptr<scalar_t>(), o.spikes.data_ptr<scalar_t>(),
                                               o.du.data_ptr<acc_t>(), o.dut.data_ptr<acc_t>(), o.T, o.N,
                                               make_srm_params<acc_t>(tau_m, tau_s, tau_grad, v_th), acc_t(0),
                                               acc_t(0));
  });
  count_kernel("cpu.srm_forward");
  return {o.spikes, o.du, o.dut};
}

std::tuple<at::Tensor, at::Tensor> srm_neuron_fwd_cpu(const at::Tensor& x, double tau_m, double tau_s,
                                                      double tau_grad, double v_th,
                                                      double du_inv_clamp, double max_dudt_inv) {
  check_backward_params(du_inv_clamp, max_dudt_inv);
  auto o = prepare_srm_forward(x, tau_m, tau_s, tau_grad, v_th, /*packed=*/true);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "srm_neuron_fwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    acc_t* saved = o.du.data_ptr<acc_t>();
    srm_forward_kernel<scalar_t, acc_t, true>(o.x.data_ptr<scalar_t>(), o.spikes.data_ptr<scalar_t>(), saved,
                                              saved + o.T * o.N, o.T, o.N,
                                              make_srm_params<acc_t>(tau_m, tau_s, tau_grad, v_th),
                                              static_cast<acc_t>(du_inv_clamp), static_cast<acc_t>(max_dudt_inv));
  });
  count_kernel("cpu.srm_neuron_fwd");
  return {o.spikes, o.du};
}

template <typename acc_t>
std::vector<acc_t> host_tables(int64_t T, double tau_m, double tau_s, double tau_grad) {
  std::vector<acc_t> tables(static_cast<size_t>(2 * std::max<int64_t>(T, 1)));
  fill_srm_tables<acc_t>(tables.data(), T, tau_m, tau_s, tau_grad);
  return tables;
}

std::tuple<at::Tensor, at::Tensor> srm_backward_cpu(const at::Tensor& grad_spikes, const at::Tensor& spikes,
                                                    const at::Tensor& du, const at::Tensor& dut, double tau_m,
                                                    double tau_s, double tau_grad, double du_inv_clamp,
                                                    double max_dudt_inv) {
  auto a = prepare_srm_backward(grad_spikes, spikes, du, dut, tau_m, tau_s, tau_grad, du_inv_clamp, max_dudt_inv);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.grad.scalar_type(), "srm_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    TORCH_CHECK(a.du.scalar_type() == c10::CppTypeToScalarType<acc_t>::value, "du must be ",
                c10::CppTypeToScalarType<acc_t>::value, " for grad_spikes of dtype ", a.grad.scalar_type(),
                ", got ", a.du.scalar_type());
    const at::Tensor spk = a.spikes.to(a.grad.scalar_type());
    auto tables = host_tables<acc_t>(a.T, tau_m, tau_s, tau_grad);
    srm_backward_kernel<scalar_t, acc_t, false>(
        a.grad.data_ptr<scalar_t>(), spk.data_ptr<scalar_t>(), a.du.data_ptr<acc_t>(), a.dut.data_ptr<acc_t>(),
        a.grad_w.data_ptr<scalar_t>(), a.grad_t.data_ptr<scalar_t>(), tables.data(), a.T, a.N,
        static_cast<acc_t>(du_inv_clamp), static_cast<acc_t>(max_dudt_inv));
  });
  count_kernel("cpu.srm_backward");
  return {a.grad_w, a.grad_t};
}

at::Tensor srm_neuron_bwd_cpu(const at::Tensor& grad_spikes, const at::Tensor& saved, double tau_m, double tau_s,
                              double tau_grad, double du_inv_clamp, double max_dudt_inv) {
  auto a = prepare_srm_neuron_backward(grad_spikes, saved, tau_m, tau_s, tau_grad, du_inv_clamp, max_dudt_inv);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.grad.scalar_type(), "srm_neuron_bwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    TORCH_CHECK(a.du.scalar_type() == c10::CppTypeToScalarType<acc_t>::value, "saved must be ",
                c10::CppTypeToScalarType<acc_t>::value, " for grad_spikes of dtype ", a.grad.scalar_type(),
                ", got ", a.du.scalar_type());
    auto tables = host_tables<acc_t>(a.T, tau_m, tau_s, tau_grad);
    const acc_t* saved_p = a.du.data_ptr<acc_t>();
    srm_backward_kernel<scalar_t, acc_t, true>(a.grad.data_ptr<scalar_t>(), nullptr, saved_p,
                                               saved_p + a.T * a.N, a.grad_w.data_ptr<scalar_t>(), nullptr,
                                               tables.data(), a.T, a.N, static_cast<acc_t>(du_inv_clamp),
                                               static_cast<acc_t>(max_dudt_inv));
  });
  count_kernel("cpu.srm_neuron_bwd");
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
