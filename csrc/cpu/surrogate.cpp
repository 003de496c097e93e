// CPU kernels of the surrogate-mode SRM neuron (docs/maths.md §9-§11): srm_sg_fwd and
// srm_sg_bwd, parallel over neurons with at::parallel_for. A task walks blocks of
// neurons through the steps, step-major, with the state in structure-of-arrays form so
// that the loop over the neurons of a block vectorises; each neuron's constants are read
// once per block. The backward recomputes a block's forward into a per-task buffer
// (the sums before the decay, u and the surrogate derivative, for every step), then walks
// back through it: no allocation per step, and nothing but x and the input state kept from
// the forward.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "../surrogate_core.h"
#include "../surrogate_glue.h"
#include "strategy.h"

namespace snnspx {
namespace {

// Neurons per forward block, and most neurons per backward block (its stack arrays' size).
// Long rows help the hardware prefetcher: a block reads a row of x per step, T rows N
// apart (1-thread microbench, T=16, 131072 neurons: forward 2.6 ms with 256, 1.9 with 1024;
// backward 6.0 ms with 64, 5.6 with 256).
constexpr int64_t kFwdBlock = 1024;
constexpr int64_t kMaxBwdBlock = 256;

// The kernels' loops are compiled twice: for any x86-64 (SSE2) and, on CPUs that have it,
// for AVX2 (twice the vector width). The loop bodies are always-inline templates that the
// two entry points instantiate under their own target; the arithmetic is the same
// elementwise IEEE operations in both, so the results are the same bits.
#ifdef SNNSPX_CPU_X86
#define SNNSPX_AVX2 __attribute__((target("avx2")))
#endif
#define SNNSPX_INLINE __attribute__((always_inline)) inline

// Asks the cache for the `len` values from p, one request per 64-byte line. A block reads
// one short row per step, each row N values from the last: the hardware prefetcher has to
// learn every row anew, so the kernels ask for the next step's rows one step ahead.
template <int kWrite, typename T>
SNNSPX_INLINE void prefetch_row(const T* p, int64_t len) {
  const char* c = reinterpret_cast<const char*>(p);
  const int64_t bytes = len * static_cast<int64_t>(sizeof(T));
  for (int64_t i = 0; i < bytes; i += 64) __builtin_prefetch(c + i, kWrite, 3);
}

// The constants of neurons n0 .. n0 + len - 1; neuron n has channel (n / P) % Cc, followed
// along the block without a division per neuron (a 64-bit division costs tens of cycles).
template <typename acc_t>
SNNSPX_INLINE void load_constants(const acc_t* consts, int64_t Cc, int64_t P, int64_t n0, int64_t len, acc_t* am,
                                  acc_t* as, acc_t* cc, acc_t* vt) {
  int64_t ch = Cc == 1 ? 0 : (n0 / P) % Cc, p = Cc == 1 ? 0 : n0 % P;
  for (int64_t i = 0; i < len; ++i) {
    am[i] = consts[ch], as[i] = consts[Cc + ch], cc[i] = consts[2 * Cc + ch], vt[i] = consts[3 * Cc + ch];
    if (Cc > 1 && ++p == P) p = 0, ch = ch + 1 == Cc ? 0 : ch + 1;
  }
}

// st: [4, N] or nullptr (zeros).
template <typename acc_t>
SNNSPX_INLINE void load_state(const acc_t* st, int64_t N, int64_t n0, int64_t len, acc_t* m, acc_t* s, acc_t* g,
                              acc_t* ul) {
  for (int64_t i = 0; i < len; ++i) {
    m[i] = st ? st[n0 + i] : acc_t(0);
    s[i] = st ? st[N + n0 + i] : acc_t(0);
    g[i] = st ? st[2 * N + n0 + i] : acc_t(0);
    ul[i] = st ? st[3 * N + n0 + i] : acc_t(0);
  }
}

template <typename scalar_t, typename acc_t>
struct SGForwardArgs {
  const scalar_t* x;      // [T, N]
  scalar_t* spikes;       // [T, N]
  const acc_t* st_in;     // [4, N] or nullptr
  acc_t* st_out;          // [4, N]
  const acc_t* consts;    // [4, Cc]
  int64_t T, N, Cc, P;
  acc_t a_g;
  bool fire_ge;
};

// Neurons [begin, end) of the forward. `args` is copied into a local first: through a
// reference, its scalars could alias the float outputs, and the compiler would reload them
// after every store instead of vectorising the loop.
template <typename scalar_t, typename acc_t>
SNNSPX_INLINE void sg_forward_range(const SGForwardArgs<scalar_t, acc_t>& args, int64_t begin, int64_t end) {
  const SGForwardArgs<scalar_t, acc_t> A = args;
  const int64_t N = A.N;
  alignas(64) acc_t m[kFwdBlock], s[kFwdBlock], g[kFwdBlock], ul[kFwdBlock];
  alignas(64) acc_t am[kFwdBlock], as[kFwdBlock], cc[kFwdBlock], vt[kFwdBlock];
  for (int64_t n0 = begin; n0 < end; n0 += kFwdBlock) {
    const int64_t len = std::min(kFwdBlock, end - n0);
    load_state(A.st_in, N, n0, len, m, s, g, ul);
    load_constants(A.consts, A.Cc, A.P, n0, len, am, as, cc, vt);
    for (int64_t t = 0; t < A.T; ++t) {
      const scalar_t* __restrict__ xt = A.x + t * N + n0;
      scalar_t* __restrict__ out = A.spikes + t * N + n0;
      if (t + 1 < A.T) prefetch_row<0>(xt + N, len);
      for (int64_t i = 0; i < len; ++i) {
        acc_t mi = m[i], si = s[i], gi = g[i], ui = ul[i], pm, ps, pg, u;
        const bool sp = sg_forward_step<acc_t>(mi, si, gi, ui, static_cast<acc_t>(xt[i]),
                                               SGConstants<acc_t>{am[i], as[i], cc[i], vt[i]}, A.a_g, A.fire_ge, pm,
                                               ps, pg, u);
        m[i] = mi, s[i] = si, g[i] = gi, ul[i] = ui;
        out[i] = static_cast<scalar_t>(sp ? acc_t(1) : acc_t(0));
      }
    }
    std::copy(m, m + len, A.st_out + n0);
    std::copy(s, s + len, A.st_out + N + n0);
    std::copy(g, g + len, A.st_out + 2 * N + n0);
    std::copy(ul, ul + len, A.st_out + 3 * N + n0);
  }
}

template <typename scalar_t, typename acc_t>
void sg_forward_range_base(const SGForwardArgs<scalar_t, acc_t>& A, int64_t begin, int64_t end) {
  sg_forward_range(A, begin, end);
}

#ifdef SNNSPX_CPU_X86
template <typename scalar_t, typename acc_t>
SNNSPX_AVX2 void sg_forward_range_avx2(const SGForwardArgs<scalar_t, acc_t>& A, int64_t begin, int64_t end) {
  sg_forward_range(A, begin, end);
}
#endif

template <typename scalar_t, typename acc_t>
void sg_forward_kernel(const SGForwardArgs<scalar_t, acc_t>& A) {
  const int64_t grain = std::max<int64_t>(kFwdBlock, 32768 / std::max<int64_t>(A.T, 1));
  at::parallel_for(0, A.N, grain, [&](int64_t begin, int64_t end) {
#ifdef SNNSPX_CPU_X86
    if (cpu::has_avx2()) return sg_forward_range_avx2(A, begin, end);
#endif
    sg_forward_range_base(A, begin, end);
  });
}

template <typename acc_t>
struct SGBackwardArgs {
  const acc_t* x;         // [T, N]
  const acc_t* grad;      // [T, N] dL/dspikes
  const acc_t* st_in;     // [4, N] or nullptr
  const acc_t* gst;       // [4, N] dL/dstate_out or nullptr
  acc_t* gx;              // [T, N]
  acc_t* gst_in;          // [4, N] dL/dstate
  acc_t* partials;        // [4, N] per-neuron dL/da_m, dL/da_s, dL/dc, dL/dv_th; nullptr: not wanted
  const acc_t* consts;    // [4, Cc]
  int64_t T, N, Cc, P;
  acc_t a_g;
  bool fire_ge;
  SurrogateParams<acc_t> sp;
};

// Neurons per backward block: kMaxBwdBlock, fewer for long T so that a block's buffers (5
// values per neuron and step, 4 of them used without a state gradient) stay within about
// 256 KiB (float), a core's L2; at least 8.
inline int64_t backward_block(int64_t T) {
  const int64_t k = (int64_t(1) << 16) / (5 * std::max<int64_t>(T, 1));
  return std::max<int64_t>(8, std::min<int64_t>(kMaxBwdBlock, k / 8 * 8));
}

// z[i] = surrogate_grad(z[i]) for a row of a block, in loops of its own apart from the
// forward's: the sigmoid's in two (the exponential, then the rest), each loop a shorter
// dependency chain per value, which the out-of-order window overlaps across values better.
template <Surrogate Kind, typename acc_t>
SNNSPX_INLINE void surrogate_row(acc_t* __restrict__ z, int64_t len, SurrogateParams<acc_t> sp) {
  if constexpr (Kind == Surrogate::Sigmoid && std::is_same_v<acc_t, float>) {
    // The exponentials of the two halves of the row side by side (exp_nonpositive_lanes).
    const int64_t h = len / 2;
    float* __restrict__ z0 = z;
    float* __restrict__ z1 = z + h;
    for (int64_t i = 0; i < h; ++i) {
      float y[2] = {sigmoid_grad_exponent(z0[i], sp), sigmoid_grad_exponent(z1[i], sp)};
      exp_nonpositive_lanes<2>(y);
      z0[i] = y[0], z1[i] = y[1];
    }
    if (len % 2) z[len - 1] = sigmoid_grad_exp(z[len - 1], sp);
    for (int64_t i = 0; i < len; ++i) z[i] = sigmoid_grad_from_exp(z[i], sp);
  } else if constexpr (Kind == Surrogate::Sigmoid) {
    for (int64_t i = 0; i < len; ++i) z[i] = sigmoid_grad_exp(z[i], sp);
    for (int64_t i = 0; i < len; ++i) z[i] = sigmoid_grad_from_exp(z[i], sp);
  } else {
    for (int64_t i = 0; i < len; ++i) z[i] = surrogate_grad<Kind, acc_t>(z[i], sp);
  }
}

// The backward of one block of `len` (<= K) neurons from n0, with `buf` the task's buffers
// for the forward's pm, ps, pg, u and sigma'(u - v_th) ([T][K] each). kState: some neuron
// of the block has a gradient for its returned g or u_last; kParams: add up the constants'
// gradients.
// Instantiated for (kState, kParams) = (0, 0), (0, 1) and (1, 1) only.
template <Surrogate Kind, bool kDetach, bool kState, bool kParams, typename acc_t>
SNNSPX_INLINE void sg_backward_block(const SGBackwardArgs<acc_t>& A, acc_t* buf, int64_t K, int64_t n0,
                                     int64_t len) {
  const int64_t T = A.T, N = A.N, TK = T * K;
  alignas(64) acc_t am[kMaxBwdBlock], as[kMaxBwdBlock], cc[kMaxBwdBlock], vt[kMaxBwdBlock];
  alignas(64) acc_t m[kMaxBwdBlock], s[kMaxBwdBlock], g[kMaxBwdBlock], ul[kMaxBwdBlock];
  load_constants(A.consts, A.Cc, A.P, n0, len, am, as, cc, vt);
  load_state(A.st_in, N, n0, len, m, s, g, ul);
  for (int64_t t = 0; t < T; ++t) {
    const acc_t* __restrict__ xt = A.x + t * N + n0;
    acc_t* __restrict__ bpm = buf + t * K;
    acc_t* __restrict__ bps = bpm + TK;
    acc_t* __restrict__ bpg = bps + TK;
    acc_t* __restrict__ bu = bpg + TK;
    acc_t* __restrict__ bsg = bu + TK;
    if (t + 1 < T) {
      prefetch_row<0>(xt + N, len);
    } else {  // the walk back starts at the last step's dL/dspikes
      prefetch_row<0>(A.grad + t * N + n0, len);
    }
    for (int64_t i = 0; i < len; ++i) {
      acc_t mi = m[i], si = s[i], gi = g[i], ui = ul[i], pm, ps, pg, u;
      sg_forward_step<acc_t>(mi, si, gi, ui, xt[i], SGConstants<acc_t>{am[i], as[i], cc[i], vt[i]}, A.a_g, A.fire_ge,
                             pm, ps, pg, u);
      m[i] = mi, s[i] = si;
      if (kState) g[i] = gi;
      bpm[i] = pm, bps[i] = ps, bu[i] = u;
      bsg[i] = u - vt[i];
      if (kState) bpg[i] = pg;
    }
    surrogate_row<Kind>(bsg, len, A.sp);
  }
  // The walk back; m, s, g, ul now hold the adjoints lm, ls, lg, lu.
  alignas(64) acc_t dam[kMaxBwdBlock], das[kMaxBwdBlock], dc[kMaxBwdBlock], dv[kMaxBwdBlock];
  for (int64_t i = 0; i < len; ++i) {
    m[i] = A.gst ? A.gst[n0 + i] : acc_t(0);
    s[i] = A.gst ? A.gst[N + n0 + i] : acc_t(0);
    g[i] = kState ? A.gst[2 * N + n0 + i] : acc_t(0);
    ul[i] = kState ? A.gst[3 * N + n0 + i] : acc_t(0);
    dam[i] = das[i] = dc[i] = dv[i] = acc_t(0);
  }
  for (int64_t t = T - 1; t >= 0; --t) {
    const acc_t* __restrict__ gt = A.grad + t * N + n0;
    acc_t* __restrict__ gxt = A.gx + t * N + n0;
    const acc_t* __restrict__ bpm = buf + t * K;
    const acc_t* __restrict__ bps = bpm + TK;
    const acc_t* __restrict__ bpg = bps + TK;
    const acc_t* __restrict__ bu = bpg + TK;
    const acc_t* __restrict__ bsg = bu + TK;
    if (t > 0) prefetch_row<0>(gt - N, len), prefetch_row<1>(gxt - N, len);
    for (int64_t i = 0; i < len; ++i) {
      SGAdjoint<acc_t> a{m[i], s[i], g[i], ul[i], acc_t(0), acc_t(0), acc_t(0), acc_t(0)};
      if (kParams) a.d_am = dam[i], a.d_as = das[i], a.d_c = dc[i], a.d_vth = dv[i];
      gxt[i] = sg_backward_step_given<kDetach, kState, kParams, acc_t>(
          a, gt[i], bpm[i], bps[i], kState ? bpg[i] : acc_t(0), bu[i], bsg[i],
          SGConstants<acc_t>{am[i], as[i], cc[i], vt[i]}, A.a_g, A.fire_ge);
      m[i] = a.lm, s[i] = a.ls, g[i] = a.lg, ul[i] = a.lu;
      if (kParams) dam[i] = a.d_am, das[i] = a.d_as, dc[i] = a.d_c, dv[i] = a.d_vth;
    }
  }
  for (int64_t i = 0; i < len; ++i) {
    const int64_t n = n0 + i;
    A.gst_in[n] = m[i], A.gst_in[N + n] = s[i], A.gst_in[2 * N + n] = g[i], A.gst_in[3 * N + n] = acc_t(0);
    if (kParams && A.partials) {
      A.partials[n] = dam[i], A.partials[N + n] = das[i], A.partials[2 * N + n] = dc[i], A.partials[3 * N + n] = dv[i];
    }
  }
}

// Neurons [begin, end) of the backward, in blocks of K (args copied as in sg_forward_range).
template <Surrogate Kind, bool kDetach, typename acc_t>
SNNSPX_INLINE void sg_backward_range(const SGBackwardArgs<acc_t>& args, acc_t* buf, int64_t K, int64_t begin,
                                     int64_t end) {
  const SGBackwardArgs<acc_t> A = args;
  for (int64_t n0 = begin; n0 < end; n0 += K) {
    const int64_t len = std::min(K, end - n0);
    bool state = false;
    if (A.gst) {
      for (int64_t i = 0; i < len; ++i) {
        state |= (A.gst[2 * A.N + n0 + i] != acc_t(0)) | (A.gst[3 * A.N + n0 + i] != acc_t(0));
      }
    }
    if (state) {  // with the constants' sums (written only if wanted): one function less
      sg_backward_block<Kind, kDetach, true, true>(A, buf, K, n0, len);
    } else if (A.partials) {
      sg_backward_block<Kind, kDetach, false, true>(A, buf, K, n0, len);
    } else {
      sg_backward_block<Kind, kDetach, false, false>(A, buf, K, n0, len);
    }
  }
}

template <Surrogate Kind, bool kDetach, typename acc_t>
void sg_backward_range_base(const SGBackwardArgs<acc_t>& A, acc_t* buf, int64_t K, int64_t begin, int64_t end) {
  sg_backward_range<Kind, kDetach>(A, buf, K, begin, end);
}

#ifdef SNNSPX_CPU_X86
template <Surrogate Kind, bool kDetach, typename acc_t>
SNNSPX_AVX2 void sg_backward_range_avx2(const SGBackwardArgs<acc_t>& A, acc_t* buf, int64_t K, int64_t begin,
                                        int64_t end) {
  sg_backward_range<Kind, kDetach>(A, buf, K, begin, end);
}
#endif

template <Surrogate Kind, bool kDetach, typename acc_t>
void sg_backward_blocks(const SGBackwardArgs<acc_t>& A) {
  const int64_t K = backward_block(A.T);
  const int64_t grain = std::max<int64_t>(K, 32768 / std::max<int64_t>(A.T, 1));
  at::parallel_for(0, A.N, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> buf(static_cast<size_t>(5 * A.T * K));  // once per task
#ifdef SNNSPX_CPU_X86
    if (cpu::has_avx2()) return sg_backward_range_avx2<Kind, kDetach>(A, buf.data(), K, begin, end);
#endif
    sg_backward_range_base<Kind, kDetach>(A, buf.data(), K, begin, end);
  });
}

template <Surrogate Kind, typename acc_t>
void sg_backward_kind(const SGBackwardArgs<acc_t>& A, bool detach) {
  if (detach) {
    sg_backward_blocks<Kind, true>(A);
  } else {
    sg_backward_blocks<Kind, false>(A);
  }
}

template <typename acc_t>
void sg_backward(const SGBackwardArgs<acc_t>& A, Surrogate kind, bool detach) {
  switch (kind) {
    case Surrogate::Sigmoid: return sg_backward_kind<Surrogate::Sigmoid>(A, detach);
    case Surrogate::Atan: return sg_backward_kind<Surrogate::Atan>(A, detach);
    case Surrogate::FastSigmoid: return sg_backward_kind<Surrogate::FastSigmoid>(A, detach);
    case Surrogate::Triangle: return sg_backward_kind<Surrogate::Triangle>(A, detach);
  }
}

std::tuple<at::Tensor, at::Tensor> srm_sg_fwd_cpu(const at::Tensor& x, const at::Tensor& tau_m, const at::Tensor& tau_s,
                                                  const at::Tensor& v_th, const c10::optional<at::Tensor>& state,
                                                  double tau_grad, bool fire_ge, c10::string_view surrogate,
                                                  double alpha, bool detach_reset) {
  const SGArgs a = prepare_sg(x, tau_m, tau_s, v_th, state, tau_grad, std::string(surrogate), alpha);
  SGForwardOut o = sg_forward_outputs(a, x);
  if (a.T == 0) return {o.spikes, o.state_out};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "srm_sg_fwd_cpu", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    sg_forward_kernel(SGForwardArgs<scalar_t, acc_t>{
        a.x.data_ptr<scalar_t>(), o.spikes.data_ptr<scalar_t>(), a.state.defined() ? a.state.data_ptr<acc_t>() : nullptr,
        o.state_out.data_ptr<acc_t>(), a.consts.data_ptr<acc_t>(), a.T, a.N, a.Cc, a.P, static_cast<acc_t>(a.a_g),
        fire_ge});
  });
  return {o.spikes, o.state_out};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> srm_sg_bwd_cpu(
    const at::Tensor& grad_spikes, const c10::optional<at::Tensor>& grad_state, const at::Tensor& x,
    const at::Tensor& tau_m, const at::Tensor& tau_s, const at::Tensor& v_th, const c10::optional<at::Tensor>& state,
    double tau_grad, bool fire_ge, c10::string_view surrogate, double alpha, bool detach_reset,
    bool constants_grad) {
  const std::string name(surrogate);
  const SGArgs a = prepare_sg(x, tau_m, tau_s, v_th, state, tau_grad, name, alpha);
  SGBackwardBuffers b = sg_backward_buffers(a, x, grad_spikes, grad_state, constants_grad);
  if (a.T > 0) {
    AT_DISPATCH_FLOATING_TYPES(a.acc, "srm_sg_bwd_cpu", [&] {
      using acc_t = scalar_t;
      const Surrogate kind = parse_surrogate(name);
      const SGBackwardArgs<acc_t> A{b.x.data_ptr<acc_t>(), b.grad.data_ptr<acc_t>(),
                                    a.state.defined() ? a.state.data_ptr<acc_t>() : nullptr,
                                    b.grad_state.defined() ? b.grad_state.data_ptr<acc_t>() : nullptr,
                                    b.grad_x.data_ptr<acc_t>(), b.grad_state_in.data_ptr<acc_t>(),
                                    b.partials.defined() ? b.partials.data_ptr<acc_t>() : nullptr,
                                    a.consts.data_ptr<acc_t>(), a.T, a.N, a.Cc, a.P, static_cast<acc_t>(a.a_g),
                                    fire_ge, make_surrogate_params<acc_t>(kind, alpha)};
      sg_backward<acc_t>(A, kind, detach_reset);
    });
  }
  return sg_backward_finish(b, a, x, tau_m, tau_s, v_th);
}

}  // namespace

TORCH_LIBRARY_IMPL(snnspx, CPU, m) {
  m.impl("srm_sg_fwd", &srm_sg_fwd_cpu);
  m.impl("srm_sg_bwd", &srm_sg_bwd_cpu);
}

}  // namespace snnspx
