// Argument checks and output allocation for the SRM ops, shared by the CPU and
// CUDA registrations. Host-only (ATen); never included by .cu files.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "srm_core.h"

namespace snnspx {

inline void check_srm_taus(double tau_m, double tau_s, double tau_grad) {
  TORCH_CHECK_VALUE(std::isfinite(tau_m) && tau_m > 1.0, "tau_m must be a finite number > 1, got ", tau_m);
  TORCH_CHECK_VALUE(std::isfinite(tau_s) && tau_s > 1.0, "tau_s must be a finite number > 1, got ", tau_s);
  TORCH_CHECK_VALUE(std::isfinite(tau_grad) && tau_grad > 1.0, "tau_grad must be a finite number > 1, got ",
              tau_grad);
  TORCH_CHECK_VALUE(tau_m != tau_s, "tau_m and tau_s must differ (the SRM kernel divides by tau_m - tau_s), got ",
              tau_m, " for both");
}

// `variant` is one of the codes of snnspx.SRMParams.variant (srm_core.h).
inline void check_srm_variant(int64_t variant) {
  TORCH_CHECK_VALUE(variant >= 0 && variant <= kMaxVariant,
                    "variant must be an snnspx.SRMParams.variant (0 to ", kMaxVariant, "), got ", variant);
}

// The non-default options of a (valid) variant as snnspx.SRMParams keywords, for messages.
inline std::string variant_options(int64_t variant) {
  static const char* const traces[] = {"'exponential'", "'original'", "'nonnegative'"};
  std::string out;
  const auto add = [&out](const std::string& kw) { out += (out.empty() ? "" : ", ") + kw; };
  if (variant & kVariantFireGE) add("fire_if='>='");
  if (variant & kVariantNonleaky) add("forward_type='nonleaky'");
  if (variant_trace(variant) != kTraceExponential) add(std::string("gradient_type=") + traces[variant_trace(variant)]);
  return out;
}

// The kernels that run the default neuron only (the CUDA kernels) reject the others.
inline void check_default_variant(const char* op, int64_t variant) {
  check_srm_variant(variant);
  TORCH_CHECK_VALUE(variant == 0, op,
                    ": the CUDA kernels run the default neuron only (fire_if='>', forward_type='leaky', "
                    "gradient_type='exponential'), got ",
                    variant_options(variant), ": run CUDA tensors with backend='torch'");
}

inline void check_float_input(const at::Tensor& t, const char* name) {
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), name,
              " must be a floating-point tensor (float32, float64, float16 or bfloat16), got ",
              t.scalar_type());
  TORCH_CHECK(t.dim() >= 1, name, " must have a leading time dimension [T, ...], got a 0-d tensor");
}

// Neuron state is kept in float64 for float64 inputs and float32 otherwise.
inline at::ScalarType srm_acc_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// [T, ...] -> (T, N): N is the number of neurons per step.
inline int64_t neurons_per_step(const at::Tensor& t) {
  return t.size(0) == 0 ? 0 : t.numel() / t.size(0);
}

struct SRMForwardOut {
  at::Tensor x;       // contiguous input
  at::Tensor spikes;  // [T, ...], dtype of x
  at::Tensor du;      // [T, ...] accumulation dtype (srm_forward only)
  at::Tensor dut;     // [T, ...] (srm_forward only)
  at::Tensor state_in, state_out;  // [4, N] each (see add_srm_state); undefined when not used
  int64_t T, N;
};

// The neuron's constants: the time constants, and a threshold that is not NaN.
inline void check_srm_neuron_params(double tau_m, double tau_s, double tau_grad, double v_th) {
  check_srm_taus(tau_m, tau_s, tau_grad);
  TORCH_CHECK_VALUE(!std::isnan(v_th), "v_th must not be NaN");
}

// traces=true: the public srm_forward outputs (spikes, du, dut). traces=false: the spikes
// only (srm_neuron_fwd, whose backward recomputes the traces from x).
inline SRMForwardOut prepare_srm_forward(const at::Tensor& x_in, double tau_m, double tau_s,
                                         double tau_grad, double v_th, bool traces) {
  check_float_input(x_in, "x");
  check_srm_neuron_params(tau_m, tau_s, tau_grad, v_th);
  SRMForwardOut o;
  o.x = x_in.contiguous();
  o.T = x_in.size(0);
  o.N = neurons_per_step(x_in);
  const auto acc = x_in.options().dtype(srm_acc_type(x_in.scalar_type()));
  o.spikes = at::empty(x_in.sizes(), x_in.options().memory_format(at::MemoryFormat::Contiguous));
  if (traces) {
    o.du = at::empty(x_in.sizes(), acc);
    o.dut = at::empty(x_in.sizes(), acc);
  }
  return o;
}

// A dtype as torch names it without the "torch." prefix ("float32"), for messages that
// read alike from the Python and C++ kernels.
inline std::string dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "float32";
    case at::kDouble: return "float64";
    case at::kHalf: return "float16";
    case at::kBFloat16: return "bfloat16";
    default: return c10::toString(t);
  }
}

// The shape of a carried state for x [T, ...]: [4, *x.shape[1:]] = (m, s, g, u_last) per neuron.
inline std::vector<int64_t> srm_state_shape(const at::Tensor& x) {
  std::vector<int64_t> shape{4};
  shape.insert(shape.end(), x.sizes().begin() + 1, x.sizes().end());
  return shape;
}

// A carried state (docs/maths.md, "Carried state") for x, in the state dtype on x's device, in
// contiguous form; undefined for None (the kernels start from zeros). Row k is at k * N.
inline at::Tensor checked_srm_state(const std::optional<at::Tensor>& state, const at::Tensor& x) {
  if (!(state.has_value() && state->defined())) return at::Tensor();
  const at::Tensor& st = *state;
  const auto shape = srm_state_shape(x);
  const auto acc = srm_acc_type(x.scalar_type());
  TORCH_CHECK_VALUE(st.sizes() == at::IntArrayRef(shape), "state must be [4, *x.shape[1:]] = ", at::IntArrayRef(shape),
                    " (m, s, g, u_last per neuron), got ", st.sizes());
  TORCH_CHECK_TYPE(st.scalar_type() == acc, "state must be ", dtype_name(acc), " (the neuron-state dtype: float64 ",
                   "for float64 x, float32 otherwise), got ", dtype_name(st.scalar_type()));
  TORCH_CHECK_VALUE(st.device() == x.device(), "state must be on x's device ", x.device(), ", got ", st.device());
  return st.contiguous();
}

// srm_neuron_fwd's carried state: o.state_in from `state` (checked_srm_state) and, with
// return_state, o.state_out the end state's output laid out alike; without it, state_out is
// an empty [0] tensor (the op's output when no end state is wanted) and no kernel writes it.
inline void add_srm_state(SRMForwardOut& o, const std::optional<at::Tensor>& state, bool return_state) {
  o.state_in = checked_srm_state(state, o.x);
  const auto opts = o.x.options().dtype(srm_acc_type(o.x.scalar_type())).memory_format(at::MemoryFormat::Contiguous);
  if (!return_state) {
    o.state_out = at::empty({0}, opts);
    return;
  }
  const auto shape = srm_state_shape(o.x);
  if (o.T == 0) {  // no step: the end state is the start (o.N is 0, so the kernels write nothing)
    o.state_out = o.state_in.defined() ? o.state_in.clone(at::MemoryFormat::Contiguous) : at::zeros(shape, opts);
    return;
  }
  o.state_out = at::empty(shape, opts);
}

inline void check_same_shape(const at::Tensor& a, const char* an, const at::Tensor& b, const char* bn) {
  TORCH_CHECK(a.sizes() == b.sizes(), an, " and ", bn, " must have the same shape, got ", a.sizes(),
              " and ", b.sizes());
  TORCH_CHECK(a.device() == b.device(), an, " and ", bn, " must be on the same device, got ",
              a.device(), " and ", b.device());
}

// The backward counts the steps since the next spike in int32 (srm_core.h's SRMGradState).
inline void check_backward_steps(int64_t T) {
  TORCH_CHECK_VALUE(T <= std::numeric_limits<int32_t>::max(), "the SRM backward takes at most 2^31 - 1 steps (T), got ", T);
}

inline void check_backward_params(double du_inv_clamp, double max_dudt_inv) {
  TORCH_CHECK(du_inv_clamp >= 0, "du_inv_clamp must be >= 0, got ", du_inv_clamp);
  TORCH_CHECK(max_dudt_inv >= 0, "max_dudt_inv must be >= 0, got ", max_dudt_inv);
}

struct SRMBackwardArgs {
  at::Tensor grad, spikes, du, dut;  // contiguous (srm_backward)
  at::Tensor x, state;               // contiguous (srm_neuron_bwd; state undefined: zeros)
  at::Tensor grad_w, grad_t;         // outputs, dtype of grad; grad_t empty [0] if not wanted
  int64_t T, N;
};

inline SRMBackwardArgs prepare_srm_backward(const at::Tensor& grad_spikes, const at::Tensor& spikes,
                                            const at::Tensor& du, const at::Tensor& dut, double tau_m,
                                            double tau_s, double tau_grad, double du_inv_clamp,
                                            double max_dudt_inv) {
  check_float_input(grad_spikes, "grad_spikes");
  check_float_input(spikes, "spikes");
  check_float_input(du, "du");
  check_float_input(dut, "dut");
  check_same_shape(grad_spikes, "grad_spikes", spikes, "spikes");
  check_same_shape(grad_spikes, "grad_spikes", du, "du");
  check_same_shape(grad_spikes, "grad_spikes", dut, "dut");
  TORCH_CHECK_TYPE(spikes.scalar_type() == grad_spikes.scalar_type(), "spikes must have the dtype of grad_spikes (",
                   grad_spikes.scalar_type(), "), got ", spikes.scalar_type());
  TORCH_CHECK(du.scalar_type() == dut.scalar_type(), "du and dut must have the same dtype, got ",
              du.scalar_type(), " and ", dut.scalar_type());
  TORCH_CHECK(du.scalar_type() == at::kFloat || du.scalar_type() == at::kDouble,
              "du and dut hold neuron state and must be float32 or float64, got ", du.scalar_type());
  check_srm_taus(tau_m, tau_s, tau_grad);
  check_backward_params(du_inv_clamp, max_dudt_inv);
  SRMBackwardArgs a;
  a.T = grad_spikes.size(0);
  check_backward_steps(a.T);
  a.N = neurons_per_step(grad_spikes);
  // The kernels compute in du's dtype; grad and spikes are read in their own.
  a.grad = grad_spikes.contiguous();
  a.spikes = spikes.contiguous();
  a.du = du.contiguous();
  a.dut = dut.contiguous();
  a.grad_w = at::empty(grad_spikes.sizes(), grad_spikes.options().memory_format(at::MemoryFormat::Contiguous));
  a.grad_t = at::empty_like(a.grad_w);
  return a;
}

// srm_neuron_bwd: the backward recomputes the forward from x and the state it started from.
inline SRMBackwardArgs prepare_srm_neuron_backward(const at::Tensor& grad_spikes, const at::Tensor& x,
                                                   const std::optional<at::Tensor>& state, double tau_m,
                                                   double tau_s, double tau_grad, double v_th,
                                                   double du_inv_clamp, double max_dudt_inv, bool with_t) {
  check_float_input(grad_spikes, "grad_spikes");
  check_float_input(x, "x");
  check_same_shape(grad_spikes, "grad_spikes", x, "x");
  TORCH_CHECK_TYPE(grad_spikes.scalar_type() == x.scalar_type(), "grad_spikes must have the dtype of x (",
                   dtype_name(x.scalar_type()), "), got ", dtype_name(grad_spikes.scalar_type()));
  check_srm_neuron_params(tau_m, tau_s, tau_grad, v_th);
  check_backward_params(du_inv_clamp, max_dudt_inv);
  SRMBackwardArgs a;
  a.T = grad_spikes.size(0);
  check_backward_steps(a.T);
  a.N = neurons_per_step(grad_spikes);
  a.grad = grad_spikes.contiguous();
  a.x = x.contiguous();
  a.state = checked_srm_state(state, x);
  const auto opts = grad_spikes.options().memory_format(at::MemoryFormat::Contiguous);
  a.grad_w = at::empty(grad_spikes.sizes(), opts);
  a.grad_t = with_t ? at::empty(grad_spikes.sizes(), opts) : at::empty({0}, opts);
  return a;
}

}  // namespace snnspx
