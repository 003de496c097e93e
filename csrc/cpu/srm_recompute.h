// The event-mode backwards' recomputation of the SRM forward (srm.cpp's srm_neuron_bwd,
// fused.cpp's srm_suppix_pool_bwd): between the forward and the backward only x is kept, and
// each backward runs the same srm_step loop again, per block of neurons, into a scratch of
// the factors that its walk back reads. The same steps in the same order, so the same bits
// as a forward that had written them.
#pragma once

#include <algorithm>
#include <cstdint>

#include "../srm_core.h"

namespace snnspx {
namespace cpu {

// Neurons per block of a recomputing backward, at most `most` (the callers' stack arrays):
// the scratch holds two factors per step and neuron (2 * T * lanes values), kept to about
// 256 KiB of float so that it stays in L2 up to T = 2048; beyond, 16 lanes (128 T bytes of
// float scratch per task). A multiple of 16 (whole vectors), and at least 16.
inline int64_t recompute_lanes(int64_t T, int64_t most) {
  const int64_t lanes = (int64_t(32768) / std::max<int64_t>(T, 1)) & ~int64_t(15);
  return std::clamp<int64_t>(lanes, 16, most);
}

// Runs srm_step over t = 0 .. T-1 for `len` <= `lanes` neurons: neuron i's input at step t is
// x[t * stride + i], its state the rows m, sy, g, ul (set by the caller to the start state;
// left at the end state). Step t's factors go to scratch[2 t lanes + i] (fw) and
// scratch[(2 t + 1) lanes + i] (ft): inv_clamp(du) and inv_clamp(dut) at a spike,
// silent_mark() and 0 at a silent step (is_spike_factor tells them apart). spk: `len` int32 of room.
template <typename scalar_t, typename acc_t, bool kVariants>
void recompute_factors(const scalar_t* x, int64_t stride, int64_t T, int64_t len, int64_t lanes,
                       const SRMParams<acc_t>& p, acc_t du_inv_clamp, acc_t max_dudt_inv, acc_t* __restrict__ m,
                       acc_t* __restrict__ sy, acc_t* __restrict__ g, acc_t* __restrict__ ul,
                       int32_t* __restrict__ spk, acc_t* __restrict__ scratch) {
  for (int64_t t = 0; t < T; ++t) {
    const scalar_t* __restrict__ xt = x + t * stride;
    acc_t* __restrict__ fw = scratch + 2 * t * lanes;
    acc_t* __restrict__ ft = fw + lanes;
    for (int64_t i = 0; i < len; ++i) {
      SRMState<acc_t> st{m[i], sy[i], g[i], ul[i]};
      acc_t d, dt;
      spk[i] = srm_step<acc_t, kVariants>(st, static_cast<acc_t>(xt[i]), p, d, dt);
      m[i] = st.m, sy[i] = st.s, g[i] = st.g, ul[i] = st.u_last;
      fw[i] = d, ft[i] = dt;
    }
    // A second, branch-free pass turns (du, dut) into the factors: the divisions run
    // unconditionally, so this loop vectorises.
    for (int64_t i = 0; i < len; ++i) {
      const acc_t f_w = inv_clamp(fw[i], du_inv_clamp), f_t = inv_clamp(ft[i], max_dudt_inv);
      fw[i] = spk[i] ? f_w : silent_mark<acc_t>();
      ft[i] = spk[i] ? f_t : acc_t(0);
    }
  }
}

}  // namespace cpu
}  // namespace snnspx
