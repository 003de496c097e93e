// CUDA kernels of the surrogate-mode SRM neuron (docs/maths.md §9-§11): one thread per
// neuron walks all T steps; the threads of a warp hold consecutive neurons, so every load
// and store is coalesced. The maths lives in ../surrogate_core.h.
//
// The backward cannot keep a whole sequence per thread, so it checkpoints: a first pass
// runs the forward and stores the state (m, s, g) at the start of each segment of kSeg
// steps; then, from the last segment to the first, it recomputes the segment into
// registers from its checkpoint and walks back through it. Scratch: 3 values per neuron
// and segment; x is read twice.
#include "common.cuh"
#include "surrogate_launch.h"
#include "../surrogate_core.h"

namespace snnspx {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kSeg = 16;

template <typename acc_t>
__device__ __forceinline__ SGConstants<acc_t> neuron_constants(const acc_t* consts, int64_t Cc, int64_t P, int64_t n) {
  const int64_t ch = Cc == 1 ? 0 : (n / P) % Cc;
  return {consts[ch], consts[Cc + ch], consts[2 * Cc + ch], consts[3 * Cc + ch]};
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
sg_forward_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ spikes, const acc_t* __restrict__ st_in,
                  acc_t* __restrict__ st_out, int64_t T, int64_t N, const acc_t* __restrict__ consts, int64_t Cc,
                  int64_t P, acc_t a_g, bool fire_ge) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (n >= N) return;
  const SGConstants<acc_t> k = neuron_constants(consts, Cc, P, n);
  acc_t m = st_in ? st_in[n] : acc_t(0), s = st_in ? st_in[N + n] : acc_t(0);
  acc_t g = st_in ? st_in[2 * N + n] : acc_t(0), ul = st_in ? st_in[3 * N + n] : acc_t(0);
  const scalar_t one = from_acc<scalar_t, acc_t>(acc_t(1)), zero = from_acc<scalar_t, acc_t>(acc_t(0));
  for (int64_t t = 0; t < T; ++t) {
    acc_t pm, ps, pg, u;
    const bool spk = sg_forward_step<acc_t>(m, s, g, ul, to_acc<acc_t>(__ldcs(x + t * N + n)), k, a_g, fire_ge, pm,
                                            ps, pg, u);
    __stcs(spikes + t * N + n, spk ? one : zero);
  }
  st_out[n] = m, st_out[N + n] = s, st_out[2 * N + n] = g, st_out[3 * N + n] = ul;
}

template <Surrogate Kind, bool kDetach, typename acc_t>
__global__ void __launch_bounds__(kThreads)
sg_backward_kernel(const acc_t* __restrict__ x, const acc_t* __restrict__ grad, const acc_t* __restrict__ st_in,
                   const acc_t* __restrict__ gst, acc_t* __restrict__ gx, acc_t* __restrict__ gst_in,
                   acc_t* __restrict__ partials, acc_t* __restrict__ scratch, const acc_t* __restrict__ consts,
                   int64_t T, int64_t N, int64_t Cc, int64_t P, acc_t a_g, bool fire_ge, SurrogateParams<acc_t> sp) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (n >= N) return;
  const SGConstants<acc_t> k = neuron_constants(consts, Cc, P, n);
  const int64_t segs = (T + kSeg - 1) / kSeg;
  acc_t m = st_in ? st_in[n] : acc_t(0), s = st_in ? st_in[N + n] : acc_t(0);
  acc_t g = st_in ? st_in[2 * N + n] : acc_t(0), ul = acc_t(0);
  for (int64_t seg = 0; seg < segs; ++seg) {  // the forward, checkpointed
    acc_t* ck = scratch + 3 * seg * N + n;
    ck[0] = m, ck[N] = s, ck[2 * N] = g;
    const int64_t t0 = seg * kSeg;
    for (int j = 0; j < kSeg && t0 + j < T; ++j) {
      acc_t pm, ps, pg, u;
      sg_forward_step<acc_t>(m, s, g, ul, x[(t0 + j) * N + n], k, a_g, fire_ge, pm, ps, pg, u);
    }
  }
  const bool state_grad = gst != nullptr && (gst[2 * N + n] != acc_t(0) || gst[3 * N + n] != acc_t(0));
  SGAdjoint<acc_t> a{gst ? gst[n] : acc_t(0), gst ? gst[N + n] : acc_t(0), state_grad ? gst[2 * N + n] : acc_t(0),
                     state_grad ? gst[3 * N + n] : acc_t(0), acc_t(0), acc_t(0), acc_t(0), acc_t(0)};
  for (int64_t seg = segs - 1; seg >= 0; --seg) {
    const acc_t* ck = scratch + 3 * seg * N + n;
    m = ck[0], s = ck[N], g = ck[2 * N];
    const int64_t t0 = seg * kSeg;
    const int len = static_cast<int>(T - t0 < kSeg ? T - t0 : kSeg);
    acc_t pm[kSeg], ps[kSeg], pg[kSeg], u[kSeg];
#pragma unroll
    for (int j = 0; j < kSeg; ++j) {
      if (j < len) sg_forward_step<acc_t>(m, s, g, ul, x[(t0 + j) * N + n], k, a_g, fire_ge, pm[j], ps[j], pg[j], u[j]);
    }
#pragma unroll
    for (int j = kSeg - 1; j >= 0; --j) {
      if (j >= len) continue;
      const int64_t i = (t0 + j) * N + n;
      const acc_t G = __ldcs(grad + i);
      gx[i] = state_grad
                  ? sg_backward_step<Kind, kDetach, true, true, acc_t>(a, G, pm[j], ps[j], pg[j], u[j], k, a_g, fire_ge, sp)
                  : sg_backward_step<Kind, kDetach, false, true, acc_t>(a, G, pm[j], ps[j], pg[j], u[j], k, a_g,
                                                                        fire_ge, sp);
    }
  }
  gst_in[n] = a.lm, gst_in[N + n] = a.ls, gst_in[2 * N + n] = state_grad ? a.lg : acc_t(0), gst_in[3 * N + n] = acc_t(0);
  if (partials != nullptr) {  // the constants' sums cost little here; they are stored only when wanted
    partials[n] = a.d_am, partials[N + n] = a.d_as, partials[2 * N + n] = a.d_c, partials[3 * N + n] = a.d_vth;
  }
}

inline unsigned int blocks_for(int64_t n) { return static_cast<unsigned int>((n + kThreads - 1) / kThreads); }

template <typename acc_t, Surrogate Kind>
void backward_kind(bool detach, const void* x, const void* grad, const void* st_in, const void* gst, void* gx,
                   void* gst_in, void* partials, void* scratch, const void* consts, int64_t T, int64_t N, int64_t Cc,
                   int64_t P, double a_g, bool fire_ge, double alpha, cudaStream_t stream) {
  const auto sp = make_surrogate_params<acc_t>(Kind, alpha);
  auto c = [](const void* p) { return static_cast<const acc_t*>(p); };
  auto w = [](void* p) { return static_cast<acc_t*>(p); };
  const acc_t ag = static_cast<acc_t>(a_g);
  if (detach) {
    sg_backward_kernel<Kind, true, acc_t><<<blocks_for(N), kThreads, 0, stream>>>(
        c(x), c(grad), c(st_in), c(gst), w(gx), w(gst_in), w(partials), w(scratch), c(consts), T, N, Cc, P, ag,
        fire_ge, sp);
  } else {
    sg_backward_kernel<Kind, false, acc_t><<<blocks_for(N), kThreads, 0, stream>>>(
        c(x), c(grad), c(st_in), c(gst), w(gx), w(gst_in), w(partials), w(scratch), c(consts), T, N, Cc, P, ag,
        fire_ge, sp);
  }
}

template <typename acc_t>
void backward_typed(int kind, bool detach, const void* x, const void* grad, const void* st_in, const void* gst,
                    void* gx, void* gst_in, void* partials, void* scratch, const void* consts, int64_t T, int64_t N,
                    int64_t Cc, int64_t P, double a_g, bool fire_ge, double alpha, cudaStream_t stream) {
  switch (static_cast<Surrogate>(kind)) {
    case Surrogate::Atan:
      return backward_kind<acc_t, Surrogate::Atan>(detach, x, grad, st_in, gst, gx, gst_in, partials, scratch, consts,
                                                   T, N, Cc, P, a_g, fire_ge, alpha, stream);
    case Surrogate::FastSigmoid:
      return backward_kind<acc_t, Surrogate::FastSigmoid>(detach, x, grad, st_in, gst, gx, gst_in, partials, scratch,
                                                          consts, T, N, Cc, P, a_g, fire_ge, alpha, stream);
    case Surrogate::Triangle:
      return backward_kind<acc_t, Surrogate::Triangle>(detach, x, grad, st_in, gst, gx, gst_in, partials, scratch,
                                                       consts, T, N, Cc, P, a_g, fire_ge, alpha, stream);
    case Surrogate::Sigmoid:
      break;
  }
  backward_kind<acc_t, Surrogate::Sigmoid>(detach, x, grad, st_in, gst, gx, gst_in, partials, scratch, consts, T, N,
                                           Cc, P, a_g, fire_ge, alpha, stream);
}

}  // namespace

void sg_forward(DType dtype, const void* x, void* spikes, const void* state_in, void* state_out, int64_t T, int64_t N,
                const void* consts, int64_t Cc, int64_t P, double a_g, bool fire_ge, cudaStream_t stream) {
  if (N == 0) return;
  with_scalar(dtype, [&](auto tag) {
    using scalar_t = typename decltype(tag)::type;
    using acc_t = typename Acc<scalar_t>::type;
    sg_forward_kernel<scalar_t, acc_t><<<blocks_for(N), kThreads, 0, stream>>>(
        static_cast<const scalar_t*>(x), static_cast<scalar_t*>(spikes), static_cast<const acc_t*>(state_in),
        static_cast<acc_t*>(state_out), T, N, static_cast<const acc_t*>(consts), Cc, P, static_cast<acc_t>(a_g),
        fire_ge);
  });
}

int64_t sg_backward_segments(int64_t T) { return (T + kSeg - 1) / kSeg; }

void sg_backward(DType acc, int kind, bool detach, const void* x, const void* grad, const void* state_in,
                 const void* grad_state, void* grad_x, void* grad_state_in, void* partials, void* scratch,
                 const void* consts, int64_t T, int64_t N, int64_t Cc, int64_t P, double a_g, bool fire_ge,
                 double alpha, cudaStream_t stream) {
  if (N == 0 || T == 0) return;
  if (acc == DType::Double) {
    backward_typed<double>(kind, detach, x, grad, state_in, grad_state, grad_x, grad_state_in, partials, scratch,
                           consts, T, N, Cc, P, a_g, fire_ge, alpha, stream);
  } else {
    backward_typed<float>(kind, detach, x, grad, state_in, grad_state, grad_x, grad_state_in, partials, scratch,
                          consts, T, N, Cc, P, a_g, fire_ge, alpha, stream);
  }
}

}  // namespace cuda
}  // namespace snnspx
