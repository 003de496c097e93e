// The SRM neuron in surrogate-gradient mode (docs/maths.md §9-§11), shared by the CPU and
// CUDA kernels: the forward step, the surrogate derivatives, and one step of the exact
// backpropagation through time. Host-and-device inline functions only (no ATen).
//
// Forward (§2, with a carried state; the operation order of srm_core.h's srm_step, so the
// spikes equal srm_forward's bit for bit):
//   m = (m + x) a_m;  s = (s + x) a_s;  g = (g + x) a_g;  u = c (m - s)
//   S = u > v_th (or u >= v_th);  at a spike m = s = g = u_last = 0, else u_last = u.
// The backward differentiates the same lines with the reset written as a factor,
// m_t = m^_t (1 - S_t) (and so for s, g, u_last), and dS/du replaced by a surrogate.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "host_device.h"
#include "srm_core.h"

namespace snnspx {

// The surrogate derivatives of §9, in the order of the names the glue parses.
enum class Surrogate : int { Sigmoid = 0, Atan = 1, FastSigmoid = 2, Triangle = 3 };

// A surrogate's parameter alpha, turned once (in double, on the host) into the factors
// its derivative uses, rounded to acc_t:
//   sigmoid:      k1 = alpha                 sigma' = k1 e / (1 + e)^2,  e = exp(-k1 |z|)
//   atan:         k1 = alpha / 2, k2 = pi/2 alpha   sigma' = k1 / (1 + (k2 z)^2)
//   fast_sigmoid: k1 = alpha (the slope)     sigma' = 1 / (1 + k1 |z|)^2
//   triangle:     k1 = 1 / alpha (width)     sigma' = max(0, 1 - k1 |z|) k1
// alpha e / (1 + e)^2 with e = exp(-alpha |z|) is alpha sig(alpha z) (1 - sig(alpha z)),
// written with an exponent <= 0 so that it never overflows.
template <typename acc_t>
struct SurrogateParams {
  acc_t k1, k2;
};

template <typename acc_t>
inline SurrogateParams<acc_t> make_surrogate_params(Surrogate kind, double alpha) {
  const double pi = 3.14159265358979323846;
  switch (kind) {
    case Surrogate::Atan: return {static_cast<acc_t>(alpha / 2), static_cast<acc_t>(pi / 2 * alpha)};
    case Surrogate::Triangle: return {static_cast<acc_t>(1.0 / alpha), acc_t(0)};
    default: return {static_cast<acc_t>(alpha), acc_t(0)};
  }
}

// exp_nonpositive of L independent values, each statement written for all L before the next:
// a CPU loop vectorised over such groups keeps L dependency chains side by side in its
// instruction stream, where the out-of-order window sees them together. Host only.
template <int L>
inline void exp_nonpositive_lanes(float* v) {
  const float lo = -87.0f;
  bool under[L];
  float y[L], n[L], r[L], p[L], scale[L];
  for (int l = 0; l < L; ++l) under[l] = v[l] < lo;
  for (int l = 0; l < L; ++l) y[l] = under[l] ? lo : v[l];
  // n = round(y / ln2): adding and subtracting 1.5 * 2^23 rounds to an integer (|y / ln2| < 2^22).
  const float magic = 12582912.0f;
  for (int l = 0; l < L; ++l) n[l] = (y[l] * 1.44269504088896341f + magic) - magic;
  // r = y - n ln2 in two parts: n * ln2_hi is exact (ln2_hi has 8 trailing zero bits, |n| < 2^7).
  for (int l = 0; l < L; ++l) r[l] = (y[l] - n[l] * 0.693359375f) - n[l] * -2.12194440e-4f;
  for (int l = 0; l < L; ++l) p[l] = 1.9875691500e-4f;
  for (int l = 0; l < L; ++l) p[l] = p[l] * r[l] + 1.3981999507e-3f;
  for (int l = 0; l < L; ++l) p[l] = p[l] * r[l] + 8.3334519073e-3f;
  for (int l = 0; l < L; ++l) p[l] = p[l] * r[l] + 4.1665795894e-2f;
  for (int l = 0; l < L; ++l) p[l] = p[l] * r[l] + 1.6666665459e-1f;
  for (int l = 0; l < L; ++l) p[l] = p[l] * r[l] + 5.0000001201e-1f;
  for (int l = 0; l < L; ++l) p[l] = p[l] * r[l] * r[l] + r[l] + 1.0f;
  for (int l = 0; l < L; ++l) {
    const int32_t bits = (static_cast<int32_t>(n[l]) + 127) << 23;  // n in [-126, 0]: a normal power of 2
    std::memcpy(&scale[l], &bits, sizeof(float));
  }
  for (int l = 0; l < L; ++l) v[l] = under[l] ? 0.0f : p[l] * scale[l];
}

// exp(y) for y <= 0 in straight-line float arithmetic (no call, no branch), so that a CPU
// loop over neurons vectorises with any x86-64 target: 2^n by the exponent bits, e^r on
// [-ln2/2, ln2/2] by Cody and Waite's reduction and a degree-7 polynomial (under 1 ulp from
// the exact value on [-87, 0]). Below -87 it returns 0.
SNNSPX_HD float exp_nonpositive(float y) {
#if defined(__CUDA_ARCH__)
  return expf(y);
#else
  exp_nonpositive_lanes<1>(&y);
  return y;
#endif
}

SNNSPX_HD double exp_nonpositive(double y) {
#if defined(__CUDA_ARCH__)
  return exp(y);
#else
  return std::exp(y);
#endif
}

// The sigmoid's sigma'(z) in two parts, e = exp(-k1 |z|) and then k1 e / (1 + e)^2, for CPU
// loops that compute them apart (a shorter dependency chain per loop).
template <typename acc_t>
SNNSPX_HD acc_t sigmoid_grad_exponent(acc_t z, SurrogateParams<acc_t> p) {
  const acc_t az = z < acc_t(0) ? -z : z;
  return -(p.k1 * az);
}

template <typename acc_t>
SNNSPX_HD acc_t sigmoid_grad_exp(acc_t z, SurrogateParams<acc_t> p) {
  return exp_nonpositive(sigmoid_grad_exponent(z, p));
}

template <typename acc_t>
SNNSPX_HD acc_t sigmoid_grad_from_exp(acc_t e, SurrogateParams<acc_t> p) {
  const acc_t d = acc_t(1) + e;
  return p.k1 * e / (d * d);
}

// sigma'(z) of surrogate Kind, z = u - v_th.
template <Surrogate Kind, typename acc_t>
SNNSPX_HD acc_t surrogate_grad(acc_t z, SurrogateParams<acc_t> p) {
  const acc_t one(1);
  const acc_t az = z < acc_t(0) ? -z : z;
  if constexpr (Kind == Surrogate::Sigmoid) {
    return sigmoid_grad_from_exp(sigmoid_grad_exp(z, p), p);
  } else if constexpr (Kind == Surrogate::Atan) {
    const acc_t w = p.k2 * z;
    return p.k1 / (one + w * w);
  } else if constexpr (Kind == Surrogate::FastSigmoid) {
    const acc_t d = one + p.k1 * az;
    return one / (d * d);
  } else {
    const acc_t h = one - p.k1 * az;
    return (h > acc_t(0) ? h : acc_t(0)) * p.k1;
  }
}

// The per-channel constants a neuron reads: a_m, a_s, c, v_th (a_g is one number).
template <typename acc_t>
struct SGConstants {
  acc_t a_m, a_s, c, v_th;
};

template <typename acc_t>
SNNSPX_HD bool sg_fires(acc_t u, acc_t v_th, bool fire_ge) {
  return (u > v_th) | (fire_ge & (u == v_th));
}

// One forward step of one neuron from state (m, s, g, u_last); returns the spike. Also
// gives the sums before the decay (pm = m + x, ps = s + x, pg = g + x) and u, which the
// backward keeps for its walk back.
template <typename acc_t>
SNNSPX_HD bool sg_forward_step(acc_t& m, acc_t& s, acc_t& g, acc_t& u_last, acc_t x, const SGConstants<acc_t>& k,
                               acc_t a_g, bool fire_ge, acc_t& pm, acc_t& ps, acc_t& pg, acc_t& u) {
  pm = m + x;
  ps = s + x;
  pg = g + x;
  m = mul_rn(pm, k.a_m);
  s = mul_rn(ps, k.a_s);
  g = mul_rn(pg, a_g);
  u = mul_rn(k.c, m - s);
  const bool spike = sg_fires(u, k.v_th, fire_ge);
  m = spike ? acc_t(0) : m;
  s = spike ? acc_t(0) : s;
  g = spike ? acc_t(0) : g;
  u_last = spike ? acc_t(0) : u;
  return spike;
}

// The backward's running sums of one neuron: the adjoints of its state after step t
// (lm = dL/dm_t, ls = dL/ds_t, lg = dL/dg_t, lu = dL/du_last_t), and its parts of the
// constants' gradients (dL/da_m, dL/da_s, dL/dc, dL/dv_th) summed over the steps walked.
template <typename acc_t>
struct SGAdjoint {
  acc_t lm, ls, lg, lu;
  acc_t d_am, d_as, d_c, d_vth;
};

// One step of the walk back, t = T-1 down to 0: from the adjoints after step t to those
// before it; returns dL/dx[t]. G = dL/dspikes[t]; pm, ps, pg, u as sg_forward_step gave
// them. kState: the g and u_last adjoints may be non-zero (a gradient reached the returned
// state's g or u_last); without it they are taken as 0 and pg is not read. kParams: also add
// up the constants' gradients. kDetach: the reset's factor is a constant. (Compile-time
// flags: a run-time select on them keeps GCC from vectorising the CPU loop.)
//   m^ = pm a_m, s^ = ps a_s, g^ = pg a_g, keep = 1 - S
//   dS = G - [not detach] (lm m^ + ls s^ + lg g^ + lu u)
//   du = dS sigma'(u - v_th) + lu keep
//   dm^ = lm keep + c du,  ds^ = ls keep - c du,  dg^ = lg keep
//   before the step: lm = dm^ a_m, ls = ds^ a_s, lg = dg^ a_g, lu = 0; dL/dx = lm + ls + lg
//   dL/da_m += dm^ pm, dL/da_s += ds^ ps, dL/dc += du (m^ - s^), dL/dv_th -= dS sigma'
// sg_backward_step_given takes sg = surrogate_grad(u - v_th) computed by the caller (the CPU
// kernel computes it in the loop that recomputes the forward, which keeps the surrogate's
// long dependency chain out of the walk); sg_backward_step below computes it itself.
template <bool kDetach, bool kState, bool kParams, typename acc_t>
SNNSPX_HD acc_t sg_backward_step_given(SGAdjoint<acc_t>& a, acc_t G, acc_t pm, acc_t ps, acc_t pg, acc_t u, acc_t sg,
                                       const SGConstants<acc_t>& k, acc_t a_g, bool fire_ge) {
  const bool spike = sg_fires(u, k.v_th, fire_ge);
  const acc_t mh = mul_rn(pm, k.a_m), sh = mul_rn(ps, k.a_s);
  acc_t dS = G;
  if constexpr (!kDetach) {  // the reset's factor (1 - S) differentiated
    acc_t r = mul_rn(a.lm, mh) + mul_rn(a.ls, sh);
    if constexpr (kState) r = r + mul_rn(a.lg, mul_rn(pg, a_g)) + mul_rn(a.lu, u);
    dS = dS - r;
  }
  acc_t du = mul_rn(dS, sg);
  if constexpr (kState) du = du + (spike ? acc_t(0) : a.lu);
  const acc_t cdu = mul_rn(k.c, du);
  const acc_t dmh = (spike ? acc_t(0) : a.lm) + cdu;
  const acc_t dsh = (spike ? acc_t(0) : a.ls) - cdu;
  if constexpr (kParams) {
    a.d_am = a.d_am + mul_rn(dmh, pm);
    a.d_as = a.d_as + mul_rn(dsh, ps);
    a.d_c = a.d_c + mul_rn(du, mh - sh);
    a.d_vth = a.d_vth - mul_rn(dS, sg);
  }
  a.lm = mul_rn(dmh, k.a_m);
  a.ls = mul_rn(dsh, k.a_s);
  acc_t gx = a.lm + a.ls;
  if constexpr (kState) {
    a.lg = mul_rn(spike ? acc_t(0) : a.lg, a_g);
    a.lu = acc_t(0);
    gx = gx + a.lg;
  }
  return gx;
}

// The step above with sigma' computed here.
template <Surrogate Kind, bool kDetach, bool kState, bool kParams, typename acc_t>
SNNSPX_HD acc_t sg_backward_step(SGAdjoint<acc_t>& a, acc_t G, acc_t pm, acc_t ps, acc_t pg, acc_t u,
                                 const SGConstants<acc_t>& k, acc_t a_g, bool fire_ge, SurrogateParams<acc_t> sp) {
  const acc_t sg = surrogate_grad<Kind, acc_t>(u - k.v_th, sp);
  return sg_backward_step_given<kDetach, kState, kParams, acc_t>(a, G, pm, ps, pg, u, sg, k, a_g, fire_ge);
}

}  // namespace snnspx
