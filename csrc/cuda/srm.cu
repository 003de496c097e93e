// CUDA kernels of the SRM neuron (docs/maths.md §2-§3): one thread per neuron walks all
// T steps; at each step the threads of a warp touch consecutive neurons, so
// every load and store is coalesced. The maths lives in ../srm_core.h.
#include <cmath>

#include "common.cuh"
#include "launch.h"

namespace snnspx {
namespace cuda {
namespace {

constexpr int kThreads = 256;
// Loads issued ahead of the recurrence: the state update is serial in t, the
// loads are not, so keeping several in flight hides memory latency.
constexpr int kAhead = 4;

template <typename scalar_t, typename acc_t, bool kPacked>
__global__ void __launch_bounds__(kThreads)
srm_forward_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ spikes, acc_t* __restrict__ du,
                   acc_t* __restrict__ dut, int64_t T, int64_t N, SRMParams<acc_t> p, acc_t du_inv_clamp,
                   acc_t max_dudt_inv) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (n >= N) return;
  SRMState<acc_t> st;
  const scalar_t one = from_acc<scalar_t, acc_t>(acc_t(1));
  const scalar_t zero = from_acc<scalar_t, acc_t>(acc_t(0));
  for (int64_t t0 = 0; t0 < T; t0 += kAhead) {
    acc_t xs[kAhead];
#pragma unroll
    for (int j = 0; j < kAhead; ++j) {
      xs[j] = (t0 + j < T) ? to_acc<acc_t>(__ldcs(x + (t0 + j) * N + n)) : acc_t(0);
    }
#pragma unroll
    for (int j = 0; j < kAhead; ++j) {
      if (t0 + j >= T) break;
      const int64_t k = (t0 + j) * N + n;
      acc_t d, dt;
      const bool s = srm_step<acc_t>(st, xs[j], p, d, dt);
      if (spikes != nullptr) __stcs(spikes + k, s ? one : zero);
      if (du == nullptr) continue;  // the spikes only
      if (kPacked) {  // the backward's factors (see ../srm_core.h)
        __stcs(du + k, s ? inv_clamp(d, du_inv_clamp) : silent_mark<acc_t>());
        __stcs(dut + k, s ? inv_clamp(dt, max_dudt_inv) : acc_t(0));
      } else {
        __stcs(du + k, d);
        __stcs(dut + k, dt);
      }
    }
  }
}

// Tables up to this many steps are staged in shared memory (the lag lookups of
// a warp diverge; shared memory serves them without L1 misses).
constexpr int64_t kSharedTableSteps = 2048;

template <typename scalar_t, typename acc_t, bool kPacked>
__global__ void __launch_bounds__(kThreads)
srm_backward_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ spikes,
                    const acc_t* __restrict__ du, const acc_t* __restrict__ dut, scalar_t* __restrict__ grad_w,
                    scalar_t* __restrict__ grad_t, const acc_t* __restrict__ tables, int64_t T, int64_t N,
                    acc_t du_inv_clamp, acc_t max_dudt_inv) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const acc_t* tab = tables;
  if (T <= kSharedTableSteps) {
    acc_t* sh = reinterpret_cast<acc_t*>(smem_raw);
    for (int64_t i = threadIdx.x; i < 2 * T; i += kThreads) sh[i] = tables[i];
    __syncthreads();
    tab = sh;
  }
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (n >= N) return;
  const acc_t* epsw = tab;
  const acc_t* epst = tab + T;
  SRMGradState<acc_t> st;
  for (int64_t t0 = T - 1; t0 >= 0; t0 -= kAhead) {
    // The spike test of the next kAhead steps, loaded together; the rest of a
    // step's data is read only when it spiked.
    acc_t lead[kAhead];
#pragma unroll
    for (int j = 0; j < kAhead; ++j) {
      const int64_t t = t0 - j;
      if (t < 0) {
        lead[j] = acc_t(0);
      } else if (kPacked) {
        lead[j] = __ldcs(du + t * N + n);
      } else {
        lead[j] = to_acc<acc_t>(__ldcs(spikes + t * N + n));
      }
    }
#pragma unroll
    for (int j = 0; j < kAhead; ++j) {
      const int64_t t = t0 - j;
      if (t < 0) break;
      const int64_t k = t * N + n;
      bool s;
      acc_t fw = acc_t(0), ft = acc_t(0), G = acc_t(0);
      if (kPacked) {
        s = is_spike_factor(lead[j]);
        if (s) {
          fw = lead[j];
          ft = __ldcs(dut + k);
        }
      } else {
        s = lead[j] == acc_t(1);
        if (s) {
          fw = inv_clamp(__ldcs(du + k), du_inv_clamp);
          ft = inv_clamp(__ldcs(dut + k), max_dudt_inv);
        }
      }
      // G and dut are read only at spikes: no traffic for the silent steps.
      if (s) G = to_acc<acc_t>(__ldcs(grad + k));
      acc_t gw, gt;
      srm_grad_step<acc_t>(st, s, G, fw, ft, epsw, epst, gw, gt);
      __stcs(grad_w + k, from_acc<scalar_t, acc_t>(gw));
      if (grad_t != nullptr) __stcs(grad_t + k, from_acc<scalar_t, acc_t>(gt));
    }
  }
}

inline unsigned int blocks_for(int64_t n) { return static_cast<unsigned int>((n + kThreads - 1) / kThreads); }

template <typename scalar_t>
void forward_typed(const void* x, void* spikes, void* du, void* dut, int64_t T, int64_t N, double tau_m,
                   double tau_s, double tau_grad, double v_th, double du_inv_clamp, double max_dudt_inv,
                   bool packed, cudaStream_t stream) {
  using acc_t = typename Acc<scalar_t>::type;
  if (N == 0 || T == 0) return;
  const SRMParams<acc_t> p = make_srm_params<acc_t>(tau_m, tau_s, tau_grad, v_th);
  const auto* xp = static_cast<const scalar_t*>(x);
  auto* sp = static_cast<scalar_t*>(spikes);
  auto* dup = static_cast<acc_t*>(du);
  auto* dutp = static_cast<acc_t*>(dut);
  const acc_t c1 = param_to_acc<acc_t>(du_inv_clamp), c2 = param_to_acc<acc_t>(max_dudt_inv);
  if (packed) {
    srm_forward_kernel<scalar_t, acc_t, true>
        <<<blocks_for(N), kThreads, 0, stream>>>(xp, sp, dup, dutp, T, N, p, c1, c2);
  } else {
    srm_forward_kernel<scalar_t, acc_t, false>
        <<<blocks_for(N), kThreads, 0, stream>>>(xp, sp, dup, dutp, T, N, p, c1, c2);
  }
}

template <typename scalar_t>
void backward_typed(const void* grad, const void* spikes, const void* du, const void* dut, void* grad_w,
                    void* grad_t, const void* tables, int64_t T, int64_t N, double du_inv_clamp,
                    double max_dudt_inv, cudaStream_t stream) {
  using acc_t = typename Acc<scalar_t>::type;
  if (N == 0 || T == 0) return;
  const auto* tab = static_cast<const acc_t*>(tables);
  const auto* g = static_cast<const scalar_t*>(grad);
  const auto* sp = static_cast<const scalar_t*>(spikes);
  const auto* dup = static_cast<const acc_t*>(du);
  const auto* dutp = static_cast<const acc_t*>(dut);
  auto* gw = static_cast<scalar_t*>(grad_w);
  auto* gt = static_cast<scalar_t*>(grad_t);
  const acc_t c1 = param_to_acc<acc_t>(du_inv_clamp), c2 = param_to_acc<acc_t>(max_dudt_inv);
  const size_t smem = T <= kSharedTableSteps ? static_cast<size_t>(2 * T) * sizeof(acc_t) : 0;
  if (spikes == nullptr) {
    srm_backward_kernel<scalar_t, acc_t, true>
        <<<blocks_for(N), kThreads, smem, stream>>>(g, sp, dup, dutp, gw, gt, tab, T, N, c1, c2);
  } else {
    srm_backward_kernel<scalar_t, acc_t, false>
        <<<blocks_for(N), kThreads, smem, stream>>>(g, sp, dup, dutp, gw, gt, tab, T, N, c1, c2);
  }
}

}  // namespace

void srm_forward(DType dtype, const void* x, void* spikes, void* du, void* dut, int64_t T, int64_t N, double tau_m,
                 double tau_s, double tau_grad, double v_th, double du_inv_clamp, double max_dudt_inv, bool packed,
                 cudaStream_t stream) {
  with_scalar(dtype, [&](auto sc) {
    forward_typed<typename decltype(sc)::type>(x, spikes, du, dut, T, N, tau_m, tau_s, tau_grad, v_th, du_inv_clamp,
                                               max_dudt_inv, packed, stream);
  });
}

namespace {

// The backward's tables epsw, epst (2 * T entries), one thread per entry.
template <typename acc_t>
__global__ void srm_tables_kernel(acc_t* tables, int64_t T, double tau_m, double tau_s, double tau_grad) {
  const int64_t d = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (d < T) srm_table_entry<acc_t>(tables, T, d, tau_m, tau_s, tau_grad);
}

}  // namespace

void srm_tables(DType acc, void* tables, int64_t T, double tau_m, double tau_s, double tau_grad,
                cudaStream_t stream) {
  if (T <= 0) return;
  constexpr int threads = 256;
  const auto blocks = static_cast<unsigned int>((T + threads - 1) / threads);
  if (acc == DType::Double) {
    srm_tables_kernel<double><<<blocks, threads, 0, stream>>>(static_cast<double*>(tables), T, tau_m, tau_s, tau_grad);
  } else {
    srm_tables_kernel<float><<<blocks, threads, 0, stream>>>(static_cast<float*>(tables), T, tau_m, tau_s, tau_grad);
  }
}

void srm_backward(DType dtype, const void* grad, const void* spikes, const void* du, const void* dut, void* grad_w,
                  void* grad_t, const void* tables, int64_t T, int64_t N, double du_inv_clamp,
                  double max_dudt_inv, cudaStream_t stream) {
  with_scalar(dtype, [&](auto sc) {
    backward_typed<typename decltype(sc)::type>(grad, spikes, du, dut, grad_w, grad_t, tables, T, N, du_inv_clamp,
                                                max_dudt_inv, stream);
  });
}

}  // namespace cuda
}  // namespace snnspx
