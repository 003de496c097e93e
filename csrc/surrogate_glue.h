// Argument checks, per-channel constants, output allocation and the constants' gradient
// reduction of the surrogate-mode SRM ops (srm_sg_fwd, srm_sg_bwd), shared by the CPU and
// CUDA registrations. Host-only (ATen); never included by .cu files.
//
// Layout: x is [T, ...], seen as [T, N] with N neurons per step. With per-channel
// constants x is [T, B, C, ...] and neuron n has channel (n / P) % C, P = the product of
// the dimensions after C. The constants reach the kernels as one [4, Cc] tensor of the
// neuron-state dtype: rows a_m, a_s, c, v_th, computed in double from the given values
// and rounded once (so a scalar time constant gives srm_forward's constants), Cc = C when
// any of tau_m, tau_s, v_th is per channel, else 1.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <cmath>
#include <string>
#include <vector>

#include "surrogate_core.h"

namespace snnspx {

inline Surrogate parse_surrogate(const std::string& name) {
  if (name == "sigmoid") return Surrogate::Sigmoid;
  if (name == "atan") return Surrogate::Atan;
  if (name == "fast_sigmoid") return Surrogate::FastSigmoid;
  if (name == "triangle") return Surrogate::Triangle;
  TORCH_CHECK_VALUE(false, "surrogate must be 'sigmoid', 'atan', 'fast_sigmoid' or 'triangle', got '", name, "'");
}

// The neuron-state dtype: float64 for float64 inputs, float32 otherwise.
inline at::ScalarType sg_acc_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

struct SGArgs {
  at::Tensor x;       // [T, ...] contiguous, dtype of the input
  at::Tensor state;   // [4, N] contiguous, neuron-state dtype; undefined = zeros
  at::Tensor consts;  // [4, Cc]: a_m, a_s, c, v_th in the neuron-state dtype
  at::ScalarType acc;
  int64_t T, N, Cc, P;
  double a_g;  // 1 - 1/tau_grad in double (rounded by the kernel's typed code)
};

inline void check_sg_constant(const at::Tensor& t, const char* name, const at::Tensor& x) {
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), name, " must be a floating-point tensor, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == x.device(), name, " must be on x's device ", x.device(), ", got ", t.device());
  if (t.dim() == 0) return;
  TORCH_CHECK_VALUE(t.dim() == 1 && x.dim() >= 3 && t.size(0) == x.size(2), name,
                    " must be a 0-d tensor or one value per channel, [C] with C = x.shape[2] of x [T, B, C, ...]; got ",
                    t.sizes(), " for x of shape ", x.sizes());
}

inline at::Tensor per_channel_double(const at::Tensor& t, int64_t Cc) {
  const at::Tensor d = t.to(at::kDouble);
  return d.dim() == 0 ? d.expand({Cc}) : d;
}

// The [4, Cc] constants of the header's comment, with tensor operations (any device).
inline at::Tensor sg_constants(const at::Tensor& tau_m, const at::Tensor& tau_s, const at::Tensor& v_th, int64_t Cc,
                               at::ScalarType acc) {
  const at::Tensor tm = per_channel_double(tau_m, Cc), ts = per_channel_double(tau_s, Cc);
  const at::Tensor one = at::ones_like(tm);
  return at::stack({one - at::div(one, tm), one - at::div(one, ts), at::div(tm, tm - ts), per_channel_double(v_th, Cc)})
      .to(acc)
      .contiguous();
}

// The same for CPU tensors, in a loop: the same double expressions, each rounded once to
// acc as .to(acc) rounds, so the same bits, without a dozen small tensor operations a call.
inline at::Tensor sg_constants_host(const at::Tensor& tau_m, const at::Tensor& tau_s, const at::Tensor& v_th,
                                    int64_t Cc, at::ScalarType acc) {
  const at::Tensor tm = tau_m.to(at::kDouble).contiguous(), ts = tau_s.to(at::kDouble).contiguous();
  const at::Tensor vt = v_th.to(at::kDouble).contiguous();
  const double *pm = tm.data_ptr<double>(), *ps = ts.data_ptr<double>(), *pv = vt.data_ptr<double>();
  const int64_t im = tm.dim() ? 1 : 0, is = ts.dim() ? 1 : 0, iv = vt.dim() ? 1 : 0;
  at::Tensor out = at::empty({4, Cc}, tau_m.options().dtype(acc));
  AT_DISPATCH_FLOATING_TYPES(acc, "sg_constants_host", [&] {
    scalar_t* o = out.data_ptr<scalar_t>();
    for (int64_t c = 0; c < Cc; ++c) {
      const double m = pm[c * im], s = ps[c * is];
      o[c] = static_cast<scalar_t>(1.0 - 1.0 / m);
      o[Cc + c] = static_cast<scalar_t>(1.0 - 1.0 / s);
      o[2 * Cc + c] = static_cast<scalar_t>(m / (m - s));
      o[3 * Cc + c] = static_cast<scalar_t>(pv[c * iv]);
    }
  });
  return out;
}

inline SGArgs prepare_sg(const at::Tensor& x, const at::Tensor& tau_m, const at::Tensor& tau_s,
                         const at::Tensor& v_th, const c10::optional<at::Tensor>& state, double tau_grad,
                         const std::string& surrogate, double alpha) {
  TORCH_CHECK_TYPE(at::isFloatingType(x.scalar_type()), "x must be float32, float64, float16 or bfloat16, got ",
                   x.scalar_type());
  TORCH_CHECK_VALUE(x.dim() >= 1, "x must have a leading time dimension [T, ...], got a 0-d tensor");
  check_sg_constant(tau_m, "tau_m", x);
  check_sg_constant(tau_s, "tau_s", x);
  check_sg_constant(v_th, "v_th", x);
  TORCH_CHECK_VALUE(std::isfinite(tau_grad) && tau_grad > 1.0, "tau_grad must be a finite number > 1, got ", tau_grad);
  parse_surrogate(surrogate);
  TORCH_CHECK_VALUE(std::isfinite(alpha) && alpha > 0.0, "alpha must be a finite number > 0, got ", alpha);
  SGArgs a;
  a.acc = sg_acc_type(x.scalar_type());
  a.x = x.contiguous();
  a.T = x.size(0);
  a.N = a.T == 0 ? 0 : x.numel() / a.T;
  const bool per_channel = tau_m.dim() == 1 || tau_s.dim() == 1 || v_th.dim() == 1;
  a.Cc = per_channel ? x.size(2) : 1;
  a.P = 1;
  for (int64_t d = 3; d < x.dim(); ++d) a.P *= x.size(d);
  if (state.has_value() && state->defined()) {
    const at::Tensor& st = *state;
    std::vector<int64_t> want{4};
    want.insert(want.end(), x.sizes().begin() + 1, x.sizes().end());
    TORCH_CHECK_VALUE(st.sizes() == at::IntArrayRef(want), "state must be [4, *x.shape[1:]] = ", at::IntArrayRef(want),
                      " (m, s, g, u_last), got ", st.sizes());
    TORCH_CHECK_TYPE(st.scalar_type() == a.acc, "state must be ", a.acc, " (the neuron-state dtype of ",
                     x.scalar_type(), " inputs), got ", st.scalar_type());
    TORCH_CHECK_VALUE(st.device() == x.device(), "state must be on x's device ", x.device(), ", got ", st.device());
    a.state = st.contiguous();
  }
  a.consts = x.is_cpu() ? sg_constants_host(tau_m, tau_s, v_th, a.Cc, a.acc)
                        : sg_constants(tau_m, tau_s, v_th, a.Cc, a.acc);
  a.a_g = 1.0 - 1.0 / tau_grad;
  return a;
}

// [4, *x.shape[1:]]: the shape of the state tensors.
inline std::vector<int64_t> sg_state_shape(const at::Tensor& x) {
  std::vector<int64_t> shape{4};
  shape.insert(shape.end(), x.sizes().begin() + 1, x.sizes().end());
  return shape;
}

inline at::Tensor check_sg_grad(const at::Tensor& g, const char* name, at::IntArrayRef want, const at::Tensor& x) {
  TORCH_CHECK_VALUE(g.sizes() == want, name, " must have shape ", want, ", got ", g.sizes());
  TORCH_CHECK_VALUE(g.device() == x.device(), name, " must be on x's device ", x.device(), ", got ", g.device());
  TORCH_CHECK_TYPE(at::isFloatingType(g.scalar_type()), name, " must be a floating-point tensor, got ", g.scalar_type());
  return g.contiguous();
}

// srm_sg_fwd's outputs: spikes [T, ...] in x's dtype, state_out [4, ...] in the state
// dtype; with T = 0 the state is returned as it came (a copy), or zeros.
struct SGForwardOut {
  at::Tensor spikes, state_out;
};

inline SGForwardOut sg_forward_outputs(const SGArgs& a, const at::Tensor& x) {
  SGForwardOut o;
  o.spikes = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  o.state_out = at::empty(sg_state_shape(x), x.options().dtype(a.acc));
  if (a.T == 0) a.state.defined() ? o.state_out.copy_(a.state) : o.state_out.zero_();
  return o;
}

// srm_sg_bwd's inputs and outputs in the kernels' layout: x, grad_spikes and grad_state in
// the state dtype (half inputs widened once here), contiguous; grad_x in the state dtype
// (cast to x's by sg_backward_finish); grad_state_in [4, N]; per-neuron partial sums [4, N]
// for the constants' gradients, undefined when those are not wanted.
struct SGBackwardBuffers {
  at::Tensor x, grad, grad_state;  // grad_state undefined: no gradient reached state_out
  at::Tensor grad_x, grad_state_in, partials;
};

inline SGBackwardBuffers sg_backward_buffers(const SGArgs& a, const at::Tensor& x, const at::Tensor& grad_spikes,
                                             const c10::optional<at::Tensor>& grad_state, bool constants_grad) {
  const auto st_shape = sg_state_shape(x);
  SGBackwardBuffers b;
  b.grad = check_sg_grad(grad_spikes, "grad_spikes", x.sizes(), x).to(a.acc).contiguous();
  if (grad_state.has_value() && grad_state->defined()) {
    b.grad_state = check_sg_grad(*grad_state, "grad_state", st_shape, x).to(a.acc).contiguous();
  }
  b.x = a.x.to(a.acc).contiguous();
  b.grad_x = at::empty(x.sizes(), x.options().dtype(a.acc).memory_format(at::MemoryFormat::Contiguous));
  b.grad_state_in = at::empty(st_shape, x.options().dtype(a.acc));
  if (constants_grad) b.partials = at::empty({4, a.N}, x.options().dtype(a.acc));
  if (a.T == 0) {  // the state passes through unchanged
    b.grad_state.defined() ? b.grad_state_in.copy_(b.grad_state) : b.grad_state_in.zero_();
    if (constants_grad) b.partials.zero_();
  }
  return b;
}

// The gradients of tau_m, tau_s and v_th from the per-neuron sums `partials` [4, N]
// (dL/da_m, dL/da_s, dL/dc, dL/dv_th of each neuron), added per channel in double:
//   a_m = 1 - 1/tau_m, a_s = 1 - 1/tau_s, c = tau_m / (tau_m - tau_s), so
//   dL/dtau_m = dL/da_m / tau_m^2 - dL/dc tau_s / (tau_m - tau_s)^2
//   dL/dtau_s = dL/da_s / tau_s^2 + dL/dc tau_m / (tau_m - tau_s)^2
// each summed over the channels for a 0-d constant, in the dtype of that constant.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> sg_constant_grads(const at::Tensor& partials, const SGArgs& a,
                                                                        const at::Tensor& tau_m,
                                                                        const at::Tensor& tau_s,
                                                                        const at::Tensor& v_th) {
  at::Tensor sums;  // [4, Cc] double
  if (a.N == 0) {
    sums = at::zeros({4, a.Cc}, partials.options().dtype(at::kDouble));
  } else if (a.Cc == 1) {
    sums = at::sum(partials, {1}, /*keepdim=*/true, at::kDouble);
  } else {
    sums = at::sum(partials.view({4, a.N / (a.Cc * a.P), a.Cc, a.P}), {1, 3}, false, at::kDouble);
  }
  const at::Tensor tm = per_channel_double(tau_m, a.Cc), ts = per_channel_double(tau_s, a.Cc);
  const at::Tensor gap2 = (tm - ts) * (tm - ts);
  const at::Tensor g_tm = sums[0] / (tm * tm) - sums[2] * ts / gap2;
  const at::Tensor g_ts = sums[1] / (ts * ts) + sums[2] * tm / gap2;
  auto shaped = [](const at::Tensor& g, const at::Tensor& like) {
    return (like.dim() == 0 ? g.sum() : g).to(like.scalar_type());
  };
  return {shaped(g_tm, tau_m), shaped(g_ts, tau_s), shaped(sums[3], v_th)};
}

inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> sg_backward_finish(
    const SGBackwardBuffers& b, const SGArgs& a, const at::Tensor& x, const at::Tensor& tau_m, const at::Tensor& tau_s,
    const at::Tensor& v_th) {
  at::Tensor grad_x = b.grad_x.to(x.scalar_type());
  if (!b.partials.defined()) {  // not wanted: zeros
    return {grad_x, at::zeros_like(tau_m), at::zeros_like(tau_s), at::zeros_like(v_th), b.grad_state_in};
  }
  auto [g_tm, g_ts, g_vth] = sg_constant_grads(b.partials, a, tau_m, tau_s, v_th);
  return {grad_x, g_tm, g_ts, g_vth, b.grad_state_in};
}

}  // namespace snnspx
