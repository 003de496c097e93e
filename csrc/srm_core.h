// SRM neuron maths shared by the CPU and CUDA kernels (docs/maths.md §2-§3).
//
// Host-and-device inline functions only: no ATen, no CUDA runtime. Every
// backend advances one neuron by one step through these functions, so the C++
// and CUDA kernels cannot drift apart. The operation order matters for
// bitwise agreement with snnspx/reference.py and the torch backend:
//   m = (m + x) * a_m;  s = (s + x) * a_s;  g = (g + x) * a_g;  u = c * (m - s)
// (the nonleaky variant: u = u_last + g).
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include "host_device.h"

namespace snnspx {

// The ops' `int variant` argument, snnspx.SRMParams.variant (docs/maths.md, "Neuron
// variants"): bit 0 fires on u >= v_th, bit 1 the nonleaky membrane, bits 2-3 the trace
// of the backward (SRMTrace). 0 is the neuron of docs/maths.md §2-§3.
constexpr int64_t kVariantFireGE = 1;
constexpr int64_t kVariantNonleaky = 2;
constexpr int kVariantTraceShift = 2;
enum SRMTrace : int32_t { kTraceExponential = 0, kTraceOriginal = 1, kTraceNonnegative = 2 };
constexpr int64_t kMaxVariant = (int64_t(kTraceNonnegative) << kVariantTraceShift) | kVariantNonleaky | kVariantFireGE;

SNNSPX_HD int32_t variant_trace(int64_t variant) {
  return static_cast<int32_t>(variant >> kVariantTraceShift);
}

// Decay constants in the accumulation type (float for float/half/bfloat16
// inputs, double for double). Computed in double on the host, then rounded.
// The flags are the forward's part of the variant; they are read by
// srm_step<acc_t, true> only.
template <typename acc_t>
struct SRMParams {
  acc_t a_m, a_s, a_g, c, v_th;
  bool fire_ge = false;   // spike when u >= v_th (else u > v_th)
  bool nonleaky = false;  // u = u_last + g, du = g
  bool dut_du = false;    // dut = du (the traces "original" and "nonnegative"), else g
};

// A double parameter in acc_t, as the Python backends round it: a value beyond
// acc_t's range becomes +-infinity (a plain conversion of an out-of-range double
// to float is undefined behaviour in C++). Host only.
template <typename acc_t>
inline acc_t param_to_acc(double v) {
  constexpr double hi = static_cast<double>(std::numeric_limits<acc_t>::max());
  if (v > hi) return std::numeric_limits<acc_t>::infinity();
  if (v < -hi) return -std::numeric_limits<acc_t>::infinity();
  return static_cast<acc_t>(v);
}

// The constants of docs/maths.md §2 from the time constants, in double, rounded once,
// and the forward flags of `variant` (a valid one: the glue checks it).
template <typename acc_t>
inline SRMParams<acc_t> make_srm_params(double tau_m, double tau_s, double tau_grad, double v_th,
                                        int64_t variant = 0) {
  SRMParams<acc_t> p;
  p.a_m = static_cast<acc_t>(1.0 - 1.0 / tau_m);
  p.a_s = static_cast<acc_t>(1.0 - 1.0 / tau_s);
  p.a_g = static_cast<acc_t>(1.0 - 1.0 / tau_grad);
  p.c = static_cast<acc_t>(tau_m / (tau_m - tau_s));
  p.v_th = param_to_acc<acc_t>(v_th);
  p.fire_ge = (variant & kVariantFireGE) != 0;
  p.nonleaky = (variant & kVariantNonleaky) != 0;
  p.dut_du = variant_trace(variant) != kTraceExponential;
  return p;
}

// A product rounded on its own. nvcc may contract a product and a following sum into
// one fused multiply-add, rounded once (even across statements, e.g. u * 1 - u_last or
// the next step's m + x), and the GPU's state would drift from the CPU's in the last
// place. __fmul_rn/__dmul_rn are never contracted. The CPU library is built with
// -ffp-contract=off for the same reason (docs/build.md).
template <typename acc_t>
SNNSPX_HD acc_t mul_rn(acc_t a, acc_t b) {
#if defined(__CUDA_ARCH__)
  if constexpr (sizeof(acc_t) == sizeof(float)) {
    return __fmul_rn(a, b);
  } else {
    return __dmul_rn(a, b);
  }
#else
  return a * b;
#endif
}

// Entry d of the backward's kernel tables (docs/maths.md §3), in double, rounded once,
// with f(k) = c (a_m^k - a_s^k): tables[d] = epsw[d] = f(d+1); tables[T + d] = epst[d] =
// -a_g^(d+1) (kTraceExponential), -(f(d+1) - f(d)) (kTraceOriginal) or
// -max(f(d+1) - f(d), 0) (kTraceNonnegative): the operations of snnspx.SRMParams.tables.
// Evaluated on the host by fill_srm_tables, whose tables the CUDA glue copies to the GPU,
// so every backend uses the same bits (the GPU's pow can differ in the last place, which
// float64 gradients would show); on the GPU only while a CUDA graph is being captured.
template <typename acc_t>
SNNSPX_HD void srm_table_entry(acc_t* tables, int64_t T, int64_t d, double tau_m, double tau_s, double tau_grad,
                               int32_t trace = kTraceExponential) {
  const double a_m = 1.0 - 1.0 / tau_m, a_s = 1.0 - 1.0 / tau_s, a_g = 1.0 - 1.0 / tau_grad;
  const double c = tau_m / (tau_m - tau_s);
  const double f1 = c * (pow(a_m, double(d + 1)) - pow(a_s, double(d + 1)));
  tables[d] = static_cast<acc_t>(f1);
  if (trace == kTraceExponential) {
    tables[T + d] = static_cast<acc_t>(-pow(a_g, double(d + 1)));
    return;
  }
  const double f0 = mul_rn(c, pow(a_m, double(d)) - pow(a_s, double(d)));  // not fused into f1 - f0
  const double step = f1 - f0;
  tables[T + d] = static_cast<acc_t>(-(trace == kTraceNonnegative && !(step > 0.0) ? 0.0 : step));
}

template <typename acc_t>
inline void fill_srm_tables(acc_t* tables, int64_t T, double tau_m, double tau_s, double tau_grad,
                            int32_t trace = kTraceExponential) {
  for (int64_t d = 0; d < T; ++d) srm_table_entry<acc_t>(tables, T, d, tau_m, tau_s, tau_grad, trace);
}

template <typename acc_t>
struct SRMState {
  acc_t m = acc_t(0), s = acc_t(0), g = acc_t(0), u_last = acc_t(0);
};

// One forward step of one neuron. Writes du = u - u_last and dut = g (before
// any reset) and returns whether it spiked (u > v_th). A spike resets m, s, g
// and u_last to zero.
//
// kVariants = true runs p's variant (docs/maths.md, "Neuron variants"): u >= v_th
// fires (fire_ge); u = u_last + g and du = g (nonleaky); dut = du (dut_du). Each is
// a select on a flag that is the same for every neuron, so a vectorised loop stays
// branch-free. kVariants = false compiles the default neuron alone and does not
// read the flags: the CUDA kernels (whose glue accepts variant 0 only) and the CPU
// kernels' path for variant 0. Both compute the default neuron in the same order,
// so they give the same bits for it.
template <typename acc_t, bool kVariants = false>
SNNSPX_HD bool srm_step(SRMState<acc_t>& st, acc_t x, const SRMParams<acc_t>& p,
                        acc_t& du, acc_t& dut) {
  const bool fire_ge = kVariants && p.fire_ge;
  const bool nonleaky = kVariants && p.nonleaky;
  const bool dut_du = kVariants && p.dut_du;
  st.m = mul_rn(st.m + x, p.a_m);
  st.s = mul_rn(st.s + x, p.a_s);
  st.g = mul_rn(st.g + x, p.a_g);
  const acc_t u = nonleaky ? st.u_last + st.g : mul_rn(p.c, st.m - st.s);
  du = nonleaky ? st.g : u - st.u_last;
  dut = dut_du ? du : st.g;
  const bool spike = fire_ge ? u >= p.v_th : u > p.v_th;
  st.m = spike ? acc_t(0) : st.m;
  st.s = spike ? acc_t(0) : st.s;
  st.g = spike ? acc_t(0) : st.g;
  st.u_last = spike ? acc_t(0) : u;
  return spike;
}

template <typename acc_t>
SNNSPX_HD acc_t clamp_nan(acc_t v, acc_t lo, acc_t hi) {
  // NaN stays NaN, like torch.clamp.
  return v < lo ? lo : (v > hi ? hi : v);
}

// Backward state of one neuron, walked from t = T-1 down to 0. lag counts the
// steps since the nearest spike at t' >= t; -1 while no such spike exists.
template <typename acc_t>
struct SRMGradState {
  acc_t aw = acc_t(0), at = acc_t(0);
  int32_t lag = -1;
};

// The spike-time factor of docs/maths.md §3: clamp(-1/d, -bound, 0). -1/0 = -inf clamps
// to -bound; the result is never positive (NaN only for a NaN d).
template <typename acc_t>
SNNSPX_HD acc_t inv_clamp(acc_t d, acc_t bound) {
  return clamp_nan(acc_t(-1) / d, -bound, acc_t(0));
}

// The event backwards' factors (recomputed from x) mark silent steps with this value in
// place of the du factor, which is never positive (or NaN, for a NaN du: still a spike).
template <typename acc_t>
SNNSPX_HD acc_t silent_mark() {
  return acc_t(1);
}

// Whether a du factor (or the mark) belongs to a spike: anything but the positive mark.
template <typename acc_t>
SNNSPX_HD bool is_spike_factor(acc_t fw) {
  return !(fw > acc_t(0));
}

// One backward step (docs/maths.md §3), walking t from T-1 down to 0, in two halves so
// that a CPU loop can run each half vectorised and gather the table entries in
// between (SSE2 has no gather): srm_grad_advance moves the state and returns the
// table index d; srm_grad_emit turns the state and the entries epsw[d], epst[d]
// into gw, gt. srm_grad_step composes them.
//
// fw and ft are the factors inv_clamp(du[t], du_inv_clamp) and
// inv_clamp(dut[t], max_dudt_inv); G, fw and ft are only read when spike is
// true. `epsw`/`epst` are the kernel tables of length T:
// epsw[d] = c (a_m^(d+1) - a_s^(d+1)), epst[d] = -a_g^(d+1).
template <typename acc_t>
SNNSPX_HD int32_t srm_grad_advance(SRMGradState<acc_t>& st, bool spike, acc_t G, acc_t fw, acc_t ft) {
  // Branch-free: selects only; the index is always in bounds.
  st.aw = spike ? G * fw : st.aw;
  st.at = spike ? G * ft : st.at;
  st.lag = spike ? 0 : (st.lag >= 0 ? st.lag + 1 : -1);
  return st.lag >= 0 ? st.lag : 0;
}

template <typename acc_t>
SNNSPX_HD void srm_grad_emit(const SRMGradState<acc_t>& st, acc_t ew, acc_t et, acc_t& gw, acc_t& gt) {
  gw = st.lag >= 0 ? st.aw * ew : acc_t(0);
  gt = st.lag >= 0 ? st.at * et : acc_t(0);
}

template <typename acc_t>
SNNSPX_HD void srm_grad_step(SRMGradState<acc_t>& st, bool spike, acc_t G, acc_t fw, acc_t ft,
                             const acc_t* epsw, const acc_t* epst, acc_t& gw, acc_t& gt) {
  const int32_t d = srm_grad_advance(st, spike, G, fw, ft);
  srm_grad_emit(st, epsw[d], epst[d], gw, gt);
}

}  // namespace snnspx
