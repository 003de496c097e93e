// CUDA backward kernel of the fused SRM + superpixel pooling (docs/maths.md §6): docs/maths.md
// §5's pooling backward composed with §3's grad_w, one thread per neuron.
#include <cstdint>

#include "fused.cuh"

namespace snnspx {
namespace cuda {
namespace {

// Up to this many steps, a block copies the kernel tables to shared memory.
constexpr int64_t kSharedTableSteps = 2048;

// The backward: one thread per neuron walks t = T-1 .. 0. Each chunk of kAhead steps
// loads its du factors first (recomputed from x by the glue; they say which steps spiked),
// then, in one batch,
// what the spiking steps need: the dut factor and, with one label map for all steps
// (kStatic: the label and its pixel count read once), dL/dy and the argmax of the
// pixel's superpixel. A spike thus waits for one batch of loads per chunk instead of a
// chain of dependent loads per spike ("batched", one label map for all steps only).
// kStatic == false ("per_spike", any label maps) loads them per spike. Same values
// either way.
template <typename scalar_t, typename acc_t, typename label_t, bool kStatic>
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
  int64_t k0 = -1;  // kStatic: the pixel's superpixel (-1: pooled nowhere) and its size
  int32_t n0 = 0;
  if (kStatic) {
    const int64_t k = static_cast<int64_t>(labels[s.layout.offset(0, b) + p]);
    if (k >= 0 && k < s.K) {
      k0 = k;
      n0 = counts[s.layout.count_row(0, b, s.K) + k];
    }
  }
  SRMGradState<acc_t> st;
  for (int64_t t0 = s.T - 1; t0 >= 0; t0 -= kAhead) {
    acc_t lead[kAhead];
#pragma unroll
    for (int j = 0; j < kAhead; ++j) {
      lead[j] = t0 - j >= 0 ? __ldcs(saved + (t0 - j) * N + n) : acc_t(1);
    }
    acc_t fts[kAhead], gys[kAhead];
    int32_t ams[kAhead];
    if (kStatic) {
#pragma unroll
      for (int j = 0; j < kAhead; ++j) {
        fts[j] = acc_t(0);
        gys[j] = acc_t(0);
        ams[j] = -1;
        if (t0 - j >= 0 && is_spike_factor(lead[j])) {  // lead = 1 for the steps before 0
          fts[j] = __ldcs(saved + s.T * N + (t0 - j) * N + n);
          if (k0 >= 0) {
            const int64_t yi = ((t0 - j) * BC + bc) * s.K + k0;
            gys[j] = to_acc<acc_t>(grad_y[yi]);
            if (argmax != nullptr) ams[j] = argmax[yi];
          }
        }
      }
    }
#pragma unroll
    for (int j = 0; j < kAhead; ++j) {
      const int64_t t = t0 - j;
      if (t < 0) break;
      const bool spike = is_spike_factor(lead[j]);
      acc_t G = acc_t(0), ft = acc_t(0);
      if (spike) {
        if (kStatic) {
          ft = fts[j];
          if (k0 >= 0) G = pooled_grad<acc_t>(s.mode, gys[j], n0, ams[j], static_cast<int32_t>(p));
        } else {
          ft = __ldcs(saved + s.T * N + t * N + n);
          const int64_t k = static_cast<int64_t>(labels[s.layout.offset(t, b) + p]);
          if (k >= 0 && k < s.K) {
            const int64_t yi = (t * BC + bc) * s.K + k;
            const int32_t am = argmax != nullptr ? argmax[yi] : -1;
            G = pooled_grad<acc_t>(s.mode, to_acc<acc_t>(grad_y[yi]), counts[s.layout.count_row(t, b, s.K) + k],
                                   am, static_cast<int32_t>(p));
          }
        }
      }
      acc_t gw, gt;
      srm_grad_step<acc_t>(st, spike, G, lead[j], ft, epsw, epst, gw, gt);
      __stcs(grad_x + t * N + n, from_acc<scalar_t, acc_t>(gw));
    }
  }
}

template <typename scalar_t, typename label_t>
void backward_typed(const void* grad_y, const void* saved, const void* labels, const int32_t* counts,
                    const int32_t* argmax, const void* tables, void* grad_x, const FusedShape& s, FusedBackwardKernel kernel,
                    cudaStream_t stream) {
  using acc_t = typename Acc<scalar_t>::type;
  const int64_t N = s.B * s.C * s.P;
  if (N == 0 || s.T == 0) return;
  const auto* tab = static_cast<const acc_t*>(tables);
  const size_t smem = s.T <= kSharedTableSteps ? static_cast<size_t>(2 * s.T) * sizeof(acc_t) : 0;
  const auto* gp = static_cast<const scalar_t*>(grad_y);
  const auto* sp = static_cast<const acc_t*>(saved);
  const auto* lp = static_cast<const label_t*>(labels);
  auto* gx = static_cast<scalar_t*>(grad_x);
  if (kernel == FusedBackwardKernel::Batched) {
    fused_backward_kernel<scalar_t, acc_t, label_t, true><<<blocks_for(N), kThreads, smem, stream>>>(
        gp, sp, lp, counts, argmax, tab, gx, s);
  } else {
    fused_backward_kernel<scalar_t, acc_t, label_t, false><<<blocks_for(N), kThreads, smem, stream>>>(
        gp, sp, lp, counts, argmax, tab, gx, s);
  }
}

}  // namespace

void fused_backward(DType dtype, LabelType lt, const void* grad_y, const void* saved, const void* labels,
                    const int32_t* counts, const int32_t* argmax, const void* tables, void* grad_x,
                    const FusedShape& s, FusedBackwardKernel kernel, cudaStream_t stream) {
  with_scalar(dtype, [&](auto sc) {
    with_label(lt == LabelType::Int64, [&](auto lb) {
      backward_typed<typename decltype(sc)::type, typename decltype(lb)::type>(grad_y, saved, labels, counts, argmax,
                                                                                tables, grad_x, s, kernel, stream);
    });
  });
}

}  // namespace cuda
}  // namespace snnspx
