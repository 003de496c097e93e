// CUDA kernels of the fused SRM + superpixel pooling (SPEC §6).
//
// Forward: one thread per pixel-neuron walks all T steps (coalesced like the SRM
// kernel). At each step the spiking lanes of a warp that share a superpixel are
// grouped with __match_any_sync; the group's lowest lane adds the group size to
// an int32 counter (and, for "max", offers its pixel index to an atomicMin).
// Integer atomics give the same result in any order, so the output is
// deterministic; a finishing kernel turns counts into y. Nothing of size
// [T, B, C, P] is written unless the training variant saves the backward state.
#include <cmath>
#include <cstdint>

#include "../fused_core.h"
#include "common.cuh"
#include "fused_launch.h"

namespace snnspx {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kAhead = 4;
constexpr int64_t kSharedTableSteps = 2048;
constexpr int32_t kNoPixel = 0x7f7f7f7f;  // what cudaMemset(0x7f) leaves in an int32

inline unsigned int blocks_for(int64_t n) { return static_cast<unsigned int>((n + kThreads - 1) / kThreads); }

template <typename label_t>
__global__ void count_labels_kernel(const label_t* __restrict__ labels, int32_t* __restrict__ counts, int64_t maps,
                                    int64_t P, int64_t K) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= maps * P) return;
  const int64_t k = static_cast<int64_t>(labels[i]);
  if (k >= 0 && k < K) atomicAdd(counts + (i / P) * K + k, 1);
}

template <typename scalar_t, typename acc_t, typename label_t, bool kSave>
__global__ void __launch_bounds__(kThreads)
fused_forward_kernel(const scalar_t* __restrict__ x, const label_t* __restrict__ labels, FusedShape s,
                     SRMParams<acc_t> prm, acc_t du_inv_clamp, acc_t max_dudt_inv, acc_t* __restrict__ saved,
                     int32_t* __restrict__ cnt, int32_t* __restrict__ first) {
  const int64_t BC = s.B * s.C;
  const int64_t N = BC * s.P;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const bool active = n < N;
  const int64_t bc = active ? n / s.P : 0;
  const int64_t p = active ? n - bc * s.P : 0;
  const int64_t b = bc / s.C;
  const unsigned lane = threadIdx.x & 31u;
  // With one label map for all steps (the common case) a lane's superpixel and
  // its warp peers are fixed: find them once, and each step needs one ballot.
  const bool static_labels = s.layout.L == 1;
  int64_t key0 = -1;
  unsigned peers0 = 0;
  if (static_labels) {
    const int64_t k = active ? static_cast<int64_t>(labels[s.layout.offset(0, b) + p]) : -1;
    key0 = (k >= 0 && k < s.K) ? bc * s.K + k : -1;
    const unsigned labelled = __ballot_sync(0xffffffffu, key0 >= 0);
    if (key0 >= 0) peers0 = __match_any_sync(labelled, static_cast<unsigned long long>(key0));
  }
  SRMState<acc_t> st;
  for (int64_t t0 = 0; t0 < s.T; t0 += kAhead) {
    acc_t xs[kAhead];
#pragma unroll
    for (int j = 0; j < kAhead; ++j) {
      xs[j] = (active && t0 + j < s.T) ? to_acc<acc_t>(__ldcs(x + (t0 + j) * N + n)) : acc_t(0);
    }
#pragma unroll
    for (int j = 0; j < kAhead; ++j) {
      const int64_t t = t0 + j;
      if (t >= s.T) break;  // uniform across the warp
      bool spike = false;
      if (active) {
        acc_t d, dt;
        spike = srm_step<acc_t>(st, xs[j], prm, d, dt);
        if (kSave) {
          const int64_t k = t * N + n;
          __stcs(saved + k, spike ? inv_clamp(d, du_inv_clamp) : silent_mark<acc_t>());
          __stcs(saved + s.T * N + k, spike ? inv_clamp(dt, max_dudt_inv) : acc_t(0));
        }
      }
      if (static_labels) {
        const unsigned spiking = __ballot_sync(0xffffffffu, spike && key0 >= 0);
        if (spike && key0 >= 0) {
          const unsigned group = peers0 & spiking;
          if (lane == static_cast<unsigned>(__ffs(group) - 1)) {
            const int64_t slot = t * BC * s.K + key0;
            atomicAdd(cnt + slot, __popc(group));
            if (first != nullptr) atomicMin(first + slot, static_cast<int32_t>(p));
          }
        }
        continue;
      }
      int64_t key = -1;
      if (spike) {
        const int64_t k = static_cast<int64_t>(labels[s.layout.offset(t, b) + p]);
        if (k >= 0 && k < s.K) key = bc * s.K + k;
      }
      const unsigned voters = __ballot_sync(0xffffffffu, key >= 0);
      if (key >= 0) {
        const unsigned peers = __match_any_sync(voters, static_cast<unsigned long long>(key));
        if (lane == static_cast<unsigned>(__ffs(peers) - 1)) {
          // The lowest lane of the group holds its lowest pixel index.
          const int64_t slot = t * BC * s.K + key;
          atomicAdd(cnt + slot, __popc(peers));
          if (first != nullptr) atomicMin(first + slot, static_cast<int32_t>(p));
        }
      }
    }
  }
}

template <typename scalar_t, typename acc_t>
__global__ void fused_finish_kernel(const int32_t* __restrict__ cnt, const int32_t* __restrict__ first,
                                    const int32_t* __restrict__ counts, scalar_t* __restrict__ y,
                                    int32_t* __restrict__ argmax, FusedShape s) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t total = s.T * s.B * s.C * s.K;
  if (i >= total) return;
  const int64_t k = i % s.K;
  const int64_t tbc = i / s.K;
  const int64_t t = tbc / (s.B * s.C);
  const int64_t b = (tbc / s.C) % s.B;
  const int32_t n = counts[s.layout.count_row(t, b, s.K) + k];
  y[i] = from_acc<scalar_t, acc_t>(pooled_from_count<acc_t>(s.mode, cnt[i], n));
  if (argmax != nullptr) argmax[i] = first[i] >= kNoPixel ? -1 : first[i];
}

template <typename scalar_t, typename acc_t, typename label_t>
__global__ void __launch_bounds__(kThreads)
fused_backward_kernel(const scalar_t* __restrict__ grad_y, const acc_t* __restrict__ saved,
                      const label_t* __restrict__ labels, const int32_t* __restrict__ counts,
                      const int32_t* __restrict__ argmax, const acc_t* __restrict__ tables,
                      scalar_t* __restrict__ grad_x, FusedShape s) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const acc_t* tab = tables;
  if (s.T <= kSharedTableSteps) {
    acc_t* sh = reinterpret_cast<acc_t*>(smem_raw);
    for (int64_t i = threadIdx.x; i < 2 * s.T; i += kThreads) sh[i] = tables[i];
    __syncthreads();
    tab = sh;
  }
  const int64_t BC = s.B * s.C;
  const int64_t N = BC * s.P;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (n >= N) return;
  const int64_t bc = n / s.P;
  const int64_t p = n - bc * s.P;
  const int64_t b = bc / s.C;
  const acc_t* epsw = tab;
  const acc_t* epst = tab + s.T;
  SRMGradState<acc_t> st;
  for (int64_t t0 = s.T - 1; t0 >= 0; t0 -= kAhead) {
    acc_t lead[kAhead];
#pragma unroll
    for (int j = 0; j < kAhead; ++j) {
      lead[j] = t0 - j >= 0 ? __ldcs(saved + (t0 - j) * N + n) : acc_t(1);
    }
#pragma unroll
    for (int j = 0; j < kAhead; ++j) {
      const int64_t t = t0 - j;
      if (t < 0) break;
      const bool spike = lead[j] <= acc_t(0);
      acc_t G = acc_t(0), ft = acc_t(0);
      if (spike) {
        ft = __ldcs(saved + s.T * N + t * N + n);
        const int64_t k = static_cast<int64_t>(labels[s.layout.offset(t, b) + p]);
        if (k >= 0 && k < s.K) {
          const int64_t yi = (t * BC + bc) * s.K + k;
          const int32_t am = argmax != nullptr ? argmax[yi] : -1;
          G = pooled_grad<acc_t>(s.mode, to_acc<acc_t>(grad_y[yi]), counts[s.layout.count_row(t, b, s.K) + k], am,
                                 static_cast<int32_t>(p));
        }
      }
      acc_t gw, gt;
      srm_grad_step<acc_t>(st, spike, G, lead[j], ft, epsw, epst, gw, gt);
      __stcs(grad_x + t * N + n, from_acc<scalar_t, acc_t>(gw));
    }
  }
}

template <typename scalar_t, typename label_t>
void forward_typed(const void* x, const void* labels, const int32_t* counts, void* y, void* saved, int32_t* argmax,
                   int32_t* scratch_count, int32_t* scratch_first, const FusedShape& s, double tau_m, double tau_s,
                   double tau_grad, double v_th, double du_inv_clamp, double max_dudt_inv, cudaStream_t stream) {
  using acc_t = typename Acc<scalar_t>::type;
  const int64_t out = s.T * s.B * s.C * s.K;
  if (out == 0) return;
  cudaMemsetAsync(scratch_count, 0, sizeof(int32_t) * out, stream);
  if (scratch_first != nullptr) cudaMemsetAsync(scratch_first, 0x7f, sizeof(int32_t) * out, stream);
  const SRMParams<acc_t> prm = make_srm_params<acc_t>(tau_m, tau_s, tau_grad, v_th);
  const int64_t N = s.B * s.C * s.P;
  const auto* xp = static_cast<const scalar_t*>(x);
  const auto* lp = static_cast<const label_t*>(labels);
  const acc_t c1 = static_cast<acc_t>(du_inv_clamp), c2 = static_cast<acc_t>(max_dudt_inv);
  if (N > 0) {
    if (saved != nullptr) {
      fused_forward_kernel<scalar_t, acc_t, label_t, true><<<blocks_for(N), kThreads, 0, stream>>>(
          xp, lp, s, prm, c1, c2, static_cast<acc_t*>(saved), scratch_count, scratch_first);
    } else {
      fused_forward_kernel<scalar_t, acc_t, label_t, false><<<blocks_for(N), kThreads, 0, stream>>>(
          xp, lp, s, prm, c1, c2, nullptr, scratch_count, scratch_first);
    }
  }
  fused_finish_kernel<scalar_t, acc_t><<<blocks_for(out), kThreads, 0, stream>>>(
      scratch_count, scratch_first, counts, static_cast<scalar_t*>(y), argmax, s);
}

template <typename scalar_t, typename label_t>
void backward_typed(const void* grad_y, const void* saved, const void* labels, const int32_t* counts,
                    const int32_t* argmax, void* tables, void* grad_x, const FusedShape& s, double tau_m, double tau_s,
                    double tau_grad, cudaStream_t stream) {
  using acc_t = typename Acc<scalar_t>::type;
  const int64_t N = s.B * s.C * s.P;
  if (N == 0 || s.T == 0) return;
  auto* tab = static_cast<acc_t*>(tables);
  launch_srm_tables<acc_t>(tab, s.T, tau_m, tau_s, tau_grad, stream);
  const size_t smem = s.T <= kSharedTableSteps ? static_cast<size_t>(2 * s.T) * sizeof(acc_t) : 0;
  fused_backward_kernel<scalar_t, acc_t, label_t><<<blocks_for(N), kThreads, smem, stream>>>(
      static_cast<const scalar_t*>(grad_y), static_cast<const acc_t*>(saved), static_cast<const label_t*>(labels),
      counts, argmax, tab, static_cast<scalar_t*>(grad_x), s);
}

template <template <typename, typename> class F, typename... Args>
void dispatch(DType dtype, LabelType lt, Args&&... args) {
  // F<scalar_t, label_t>::run(args...)
  if (lt == LabelType::Int32) {
    switch (dtype) {
      case DType::Float: return F<float, int32_t>::run(args...);
      case DType::Double: return F<double, int32_t>::run(args...);
      case DType::Half: return F<__half, int32_t>::run(args...);
      case DType::BFloat16: return F<__nv_bfloat16, int32_t>::run(args...);
    }
  } else {
    switch (dtype) {
      case DType::Float: return F<float, int64_t>::run(args...);
      case DType::Double: return F<double, int64_t>::run(args...);
      case DType::Half: return F<__half, int64_t>::run(args...);
      case DType::BFloat16: return F<__nv_bfloat16, int64_t>::run(args...);
    }
  }
}

template <typename scalar_t, typename label_t>
struct Forward {
  template <typename... Args>
  static void run(Args&&... args) { forward_typed<scalar_t, label_t>(args...); }
};
template <typename scalar_t, typename label_t>
struct Backward {
  template <typename... Args>
  static void run(Args&&... args) { backward_typed<scalar_t, label_t>(args...); }
};

}  // namespace

void count_labels(LabelType lt, const void* labels, int32_t* counts, const FusedShape& s, cudaStream_t stream) {
  const int64_t maps = s.layout.L * s.layout.LB;
  if (maps * s.K == 0) return;
  cudaMemsetAsync(counts, 0, sizeof(int32_t) * maps * s.K, stream);
  if (maps * s.P == 0) return;
  if (lt == LabelType::Int32) {
    count_labels_kernel<int32_t><<<blocks_for(maps * s.P), kThreads, 0, stream>>>(
        static_cast<const int32_t*>(labels), counts, maps, s.P, s.K);
  } else {
    count_labels_kernel<int64_t><<<blocks_for(maps * s.P), kThreads, 0, stream>>>(
        static_cast<const int64_t*>(labels), counts, maps, s.P, s.K);
  }
}

void fused_forward(DType dtype, LabelType lt, const void* x, const void* labels, const int32_t* counts, void* y,
                   void* saved, int32_t* argmax, int32_t* scratch_count, int32_t* scratch_first,
                   const FusedShape& s, double tau_m, double tau_s, double tau_grad, double v_th,
                   double du_inv_clamp, double max_dudt_inv, cudaStream_t stream) {
  dispatch<Forward>(dtype, lt, x, labels, counts, y, saved, argmax, scratch_count, scratch_first, s, tau_m, tau_s,
                    tau_grad, v_th, du_inv_clamp, max_dudt_inv, stream);
}

void fused_backward(DType dtype, LabelType lt, const void* grad_y, const void* saved, const void* labels,
                    const int32_t* counts, const int32_t* argmax, void* tables, void* grad_x, const FusedShape& s,
                    double tau_m, double tau_s, double tau_grad, cudaStream_t stream) {
  dispatch<Backward>(dtype, lt, grad_y, saved, labels, counts, argmax, tables, grad_x, s, tau_m, tau_s, tau_grad,
                     stream);
}

}  // namespace cuda
}  // namespace snnspx
