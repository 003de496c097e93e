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
  at::Tensor du;      // [T, ...] (or [2, T, ...] packed), accumulation dtype
  at::Tensor dut;     // [T, ...] (undefined when packed)
  at::Tensor state_in, state_out;  // [4, N] each (see add_srm_state); undefined when not used
  int64_t T, N;
};

// The neuron's constants: the time constants, and a threshold that is not NaN.
inline void check_srm_neuron_params(double tau_m, double tau_s, double tau_grad, double v_th) {
  check_srm_taus(tau_m, tau_s, tau_grad);
  TORCH_CHECK_VALUE(!std::isnan(v_th), "v_th must not be NaN");
}

// packed=false: the public srm_forward outputs. packed=true: srm_neuron_fwd's
// compact saved state, one [2, T, ...] tensor in `du` (see snnspx/functional/srm.py).
inline SRMForwardOut prepare_srm_forward(const at::Tensor& x_in, double tau_m, double tau_s,
                                         double tau_grad, double v_th, bool packed) {
  check_float_input(x_in, "x");
  check_srm_neuron_params(tau_m, tau_s, tau_grad, v_th);
  SRMForwardOut o;
  o.x = x_in.contiguous();
  o.T = x_in.size(0);
  o.N = neurons_per_step(x_in);
  const auto acc = x_in.options().dtype(srm_acc_type(x_in.scalar_type()));
  o.spikes = at::empty(x_in.sizes(), x_in.options().memory_format(at::MemoryFormat::Contiguous));
  if (packed) {
    std::vector<int64_t> shape{2};
    shape.insert(shape.end(), x_in.sizes().begin(), x_in.sizes().end());
    o.du = at::empty(shape, acc);
  } else {
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

// srm_neuron_fwd's carried state (docs/maths.md, "Carried state"): `state`, when given, must be
// [4, *x.shape[1:]] = (m, s, g, u_last) per neuron in the state dtype on x's device; o.state_in
// becomes its contiguous form (undefined for None: the kernels start from zeros) and
// o.state_out the end state's output, laid out alike. Row k of either is at k * o.N.
inline void add_srm_state(SRMForwardOut& o, const std::optional<at::Tensor>& state) {
  std::vector<int64_t> shape{4};
  shape.insert(shape.end(), o.x.sizes().begin() + 1, o.x.sizes().end());
  const auto acc = srm_acc_type(o.x.scalar_type());
  if (state.has_value() && state->defined()) {
    const at::Tensor& st = *state;
    TORCH_CHECK_VALUE(st.sizes() == at::IntArrayRef(shape), "state must be [4, *x.shape[1:]] = ", at::IntArrayRef(shape),
                      " (m, s, g, u_last per neuron), got ", st.sizes());
    TORCH_CHECK_TYPE(st.scalar_type() == acc, "state must be ", dtype_name(acc), " (the neuron-state dtype: float64 ",
                     "for float64 x, float32 otherwise), got ", dtype_name(st.scalar_type()));
    TORCH_CHECK_VALUE(st.device() == o.x.device(), "state must be on x's device ", o.x.device(), ", got ",
                      st.device());
    o.state_in = st.contiguous();
  }
  const auto opts = o.x.options().dtype(acc).memory_format(at::MemoryFormat::Contiguous);
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
  at::Tensor grad, spikes, du, dut;  // contiguous; spikes/dut undefined for packed
  at::Tensor grad_w, grad_t;         // outputs, dtype of grad; grad_t undefined if not wanted
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

inline SRMBackwardArgs prepare_srm_neuron_backward(const at::Tensor& grad_spikes, const at::Tensor& saved,
                                                   double tau_m, double tau_s, double tau_grad,
                                                   double du_inv_clamp, double max_dudt_inv) {
  check_float_input(grad_spikes, "grad_spikes");
  TORCH_CHECK(saved.dim() == grad_spikes.dim() + 1 && saved.size(0) == 2 &&
                  saved.sizes().slice(1) == grad_spikes.sizes(),
              "saved must be [2, *grad_spikes.shape] = [2, ", grad_spikes.sizes(), "], got ", saved.sizes());
  TORCH_CHECK(saved.scalar_type() == at::kFloat || saved.scalar_type() == at::kDouble,
              "saved must be float32 or float64, got ", saved.scalar_type());
  TORCH_CHECK(saved.device() == grad_spikes.device(), "saved and grad_spikes must be on the same device, got ",
              saved.device(), " and ", grad_spikes.device());
  check_srm_taus(tau_m, tau_s, tau_grad);
  check_backward_params(du_inv_clamp, max_dudt_inv);
  SRMBackwardArgs a;
  a.T = grad_spikes.size(0);
  check_backward_steps(a.T);
  a.N = neurons_per_step(grad_spikes);
  a.grad = grad_spikes.contiguous();
  a.du = saved.contiguous();
  a.grad_w = at::empty(grad_spikes.sizes(), grad_spikes.options().memory_format(at::MemoryFormat::Contiguous));
  return a;
}

}  // namespace snnspx
