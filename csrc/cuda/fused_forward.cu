// CUDA forward kernels of the fused SRM + superpixel pooling (docs/maths.md §6). Each
// is a strategy of cuda/strategy.h; all count spikes per superpixel as integers, so they
// give the same y bit for bit. Nothing of size [T, B, C, P] is written, in training
// either: the backward recomputes the neuron from x (fused.cpp).
//
// "atomic": one thread per pixel-neuron walks all T steps (coalesced like the SRM
// kernel). At each step the spiking lanes of a warp that share a superpixel are
// grouped with __match_any_sync; the group's lowest lane adds the group size to
// an int32 counter (and, for "max", offers its pixel index to an atomicMin).
// Integer atomics give the same result in any order, so the output is
// deterministic; a finishing kernel turns counts into y. Any shape.
//
// "plane": a block owns the pixels of one (b, c) plane, or a slice of one, and keeps
// the int32 histograms of all T steps in shared memory, so spikes cost shared atomics
// only. A block that owns a whole plane writes y (and argmax) itself; slices of a plane
// add their histograms into the global scratch and the finishing kernel makes y.
//
// "quad", the plane kernel's inference form for one label map per image
// (L == 1) and P % 4 == 0: each thread runs 4 neighbouring neurons, reads their 4
// inputs of a step with one vector load and their labels once, and adds their
// spikes with one shared atomic when the 4 share a superpixel.
#include <cmath>
#include <cstdint>

#include "fused.cuh"

namespace snnspx {
namespace cuda {
namespace {

// The plane kernel's histograms must fit the default dynamic shared memory of a
// block (no opt-in attribute needed): T * K int32 counts, twice that with argmax.
constexpr int64_t kPlaneSharedBytes = 48 * 1024;
// Steps of x loaded ahead by the plane kernel: each of its threads walks several
// pixels one after the other, so it keeps more loads in flight per pixel.
constexpr int kPlaneAhead = 8;

// The "no pixel" sentinel of the max scratch (a memset cannot write 0x7fffffff).
__global__ void fill_no_pixel_kernel(int32_t* __restrict__ p, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i < n) p[i] = kNoPixel;
}

inline void fill_no_pixel(int32_t* p, int64_t n, cudaStream_t stream) {
  if (n > 0) fill_no_pixel_kernel<<<blocks_for(n), kThreads, 0, stream>>>(p, n);
}

template <typename scalar_t, typename acc_t, typename label_t>
__global__ void __launch_bounds__(kThreads)
fused_forward_kernel(const scalar_t* __restrict__ x, const label_t* __restrict__ labels, FusedShape s,
                     SRMParams<acc_t> prm, int32_t* __restrict__ cnt, int32_t* __restrict__ first) {
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

// y[t, b, c, k] from the superpixel's spike count `cnt` at step t: the one place the
// finishing, plane and quad kernels turn counts into outputs.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ scalar_t pooled_y(const int32_t* __restrict__ counts, const FusedShape& s, int64_t t,
                                             int64_t b, int64_t k, int32_t cnt) {
  return from_acc<scalar_t, acc_t>(pooled_from_count<acc_t>(s.mode, cnt, counts[s.layout.count_row(t, b, s.K) + k]));
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
  y[i] = pooled_y<scalar_t, acc_t>(counts, s, t, b, k, cnt[i]);
  if (argmax != nullptr) argmax[i] = first[i] >= kNoPixel ? -1 : first[i];
}

// The plane forward. Block i works on plane bc = i / split, pixels
// [part * chunk, min(P, (part + 1) * chunk)) with part = i % split. Shared
// memory: cnt[T * K] (and first[T * K] when kFirst), index t * K + k.
// direct (split == 1): the block writes y and argmax of its plane. Otherwise it
// adds its nonzero counts to g_cnt (and mins into g_first), which the caller
// zeroed (kNoPixel-filled) and turns into y with fused_finish_kernel.
// No warp-synchronous operations: threads may leave the pixel loop at any time;
// the two __syncthreads are reached by every thread of the block.
template <typename scalar_t, typename acc_t, typename label_t, bool kFirst>
__global__ void __launch_bounds__(kThreads)
fused_plane_kernel(const scalar_t* __restrict__ x, const label_t* __restrict__ labels,
                   const int32_t* __restrict__ counts, FusedShape s, SRMParams<acc_t> prm, scalar_t* __restrict__ y,
                   int32_t* __restrict__ argmax, int32_t* __restrict__ g_cnt, int32_t* __restrict__ g_first,
                   int64_t split, int64_t chunk, bool direct) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  // T * K <= kPlaneSharedBytes / 4, so int indices suffice in shared memory.
  const int TK = static_cast<int>(s.T * s.K);
  const int K = static_cast<int>(s.K);
  int32_t* sh_cnt = reinterpret_cast<int32_t*>(smem_raw);
  int32_t* sh_first = sh_cnt + TK;  // only touched when kFirst
  for (int i = threadIdx.x; i < TK; i += kThreads) {
    sh_cnt[i] = 0;
    if (kFirst) sh_first[i] = kNoPixel;
  }
  __syncthreads();

  const int64_t BC = s.B * s.C;
  const int64_t N = BC * s.P;
  const int64_t bc = static_cast<int64_t>(blockIdx.x) / split;
  const int64_t part = static_cast<int64_t>(blockIdx.x) - bc * split;
  const int64_t b = bc / s.C;
  const int64_t start = part * chunk;
  const int64_t end = start + chunk < s.P ? start + chunk : s.P;
  const bool static_labels = s.layout.L == 1;
  const int64_t lab_step = static_labels ? 0 : s.layout.Bl * s.P;  // between the label maps of t and t + 1
  const label_t* lab0 = labels + s.layout.offset(0, b);
  for (int64_t p = start + threadIdx.x; p < end; p += kThreads) {
    // Running pointers (no per-step 64-bit index products, which cost registers).
    const scalar_t* xq = x + bc * s.P + p;
    const label_t* lq = lab0 + p;
    int k0 = -1;  // the pixel's superpixel with one label map for all steps
    if (static_labels) {
      const int64_t k = static_cast<int64_t>(*lq);
      k0 = (k >= 0 && k < s.K) ? static_cast<int>(k) : -1;
    }
    SRMState<acc_t> st;
    int row = 0;  // t * K
    for (int64_t t0 = 0; t0 < s.T; t0 += kPlaneAhead) {
      acc_t xs[kPlaneAhead];
#pragma unroll
      for (int j = 0; j < kPlaneAhead; ++j) {
        xs[j] = t0 + j < s.T ? to_acc<acc_t>(__ldcs(xq)) : acc_t(0);
        if (t0 + j + 1 < s.T) xq += N;  // never past the last step (no out-of-range pointer)
      }
#pragma unroll
      for (int j = 0; j < kPlaneAhead; ++j) {
        if (t0 + j >= s.T) break;
        acc_t d, dt;
        const bool spike = srm_step<acc_t>(st, xs[j], prm, d, dt);
        if (spike) {
          int k = k0;
          if (!static_labels) {
            const int64_t kt = static_cast<int64_t>(*lq);
            k = (kt >= 0 && kt < s.K) ? static_cast<int>(kt) : -1;
          }
          if (k >= 0) {
            atomicAdd(sh_cnt + row + k, 1);
            if (kFirst) atomicMin(sh_first + row + k, static_cast<int32_t>(p));
          }
        }
        if (t0 + j + 1 < s.T) lq += lab_step;  // advance to step t + 1 only if it exists
        row += K;
      }
    }
  }
  __syncthreads();

  for (int i = threadIdx.x; i < TK; i += kThreads) {
    const int t = i / K;
    const int k = i - t * K;
    const int64_t yi = (static_cast<int64_t>(t) * BC + bc) * s.K + k;
    const int32_t c = sh_cnt[i];
    if (direct) {
      y[yi] = pooled_y<scalar_t, acc_t>(counts, s, t, b, k, c);
      if (kFirst) argmax[yi] = sh_first[i] >= kNoPixel ? -1 : sh_first[i];
    } else {
      if (c != 0) atomicAdd(g_cnt + yi, c);
      if (kFirst && sh_first[i] < kNoPixel) atomicMin(g_first + yi, sh_first[i]);
    }
  }
}

// The quad forward (inference). Block bc owns plane bc whole and writes its y.
// Shared memory: cnt[T * K], index t * K + k. Needs L == 1, P % 4 == 0, Quad-aligned
// x and labels, and the histograms within kPlaneSharedBytes. Counts equal the other
// kernels' (integers), so y has the same bits.
template <typename scalar_t, typename acc_t, typename label_t>
__global__ void __launch_bounds__(kThreads, 4)
fused_quad_kernel(const scalar_t* __restrict__ x, const label_t* __restrict__ labels,
                  const int32_t* __restrict__ counts, FusedShape s, SRMParams<acc_t> prm, scalar_t* __restrict__ y) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int TK = static_cast<int>(s.T * s.K);
  const int K = static_cast<int>(s.K);
  int32_t* sh_cnt = reinterpret_cast<int32_t*>(smem_raw);
  for (int i = threadIdx.x; i < TK; i += kThreads) sh_cnt[i] = 0;
  __syncthreads();

  const int64_t BC = s.B * s.C;
  const int64_t N = BC * s.P;
  const int64_t bc = blockIdx.x;
  const int64_t b = bc / s.C;
  const label_t* lab = labels + s.layout.offset(0, b);
  for (int64_t p = 4 * int64_t(threadIdx.x); p < s.P; p += 4 * int64_t(kThreads)) {
    const Quad<label_t> lq = *reinterpret_cast<const Quad<label_t>*>(lab + p);
    int k[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t kk = static_cast<int64_t>(lq.v[i]);
      k[i] = (kk >= 0 && kk < s.K) ? static_cast<int>(kk) : -1;
    }
    const bool same = k[0] == k[1] && k[1] == k[2] && k[2] == k[3];
    const scalar_t* xq = x + bc * s.P + p;
    SRMState<acc_t> st[4];
    int row = 0;  // t * K
    for (int64_t t0 = 0; t0 < s.T; t0 += kAhead) {
      Quad<scalar_t> xs[kAhead];
#pragma unroll
      for (int j = 0; j < kAhead; ++j) {
        if (t0 + j < s.T) xs[j] = *reinterpret_cast<const Quad<scalar_t>*>(xq + (t0 + j) * N);
      }
#pragma unroll
      for (int j = 0; j < kAhead; ++j) {
        if (t0 + j >= s.T) break;
        int sp[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          acc_t d, dt;
          sp[i] = srm_step<acc_t>(st[i], to_acc<acc_t>(xs[j].v[i]), prm, d, dt) ? 1 : 0;
        }
        if (same) {
          const int c = sp[0] + sp[1] + sp[2] + sp[3];
          if (c != 0 && k[0] >= 0) atomicAdd(sh_cnt + row + k[0], c);
        } else {
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            if (sp[i] != 0 && k[i] >= 0) atomicAdd(sh_cnt + row + k[i], 1);
          }
        }
        row += K;
      }
    }
  }
  __syncthreads();

  for (int i = threadIdx.x; i < TK; i += kThreads) {
    const int t = i / K;
    const int kk = i - t * K;
    y[(static_cast<int64_t>(t) * BC + bc) * s.K + kk] = pooled_y<scalar_t, acc_t>(counts, s, t, b, kk, sh_cnt[i]);
  }
}

inline int64_t plane_shared_bytes(const FusedShape& s, bool with_first) {
  return s.T * s.K * static_cast<int64_t>(sizeof(int32_t)) * (with_first ? 2 : 1);
}

inline bool plane_fits(const FusedShape& s, bool with_first) {
  return plane_shared_bytes(s, with_first) <= kPlaneSharedBytes;
}

// Blocks per plane for the plane kernel. Enough planes (B * C >= 2 per SM) fill
// the GPU with one block each; fewer planes are cut into slices of at least
// kThreads pixels (a multiple of 32) so that about 4 blocks per SM run.
inline void plane_split(const FusedShape& s, int64_t& split, int64_t& chunk) {
  const int64_t BC = s.B * s.C;
  int dev = 0, sms = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || sms <= 0) {
    sms = 1;
  }
  split = 1;
  if (BC < 2 * static_cast<int64_t>(sms)) {
    const int64_t want = (4 * static_cast<int64_t>(sms) + BC - 1) / BC;
    const int64_t most = (s.P + kThreads - 1) / kThreads;
    split = want < most ? want : most;
    if (split < 1) split = 1;
  }
  chunk = (s.P + split - 1) / split;
  chunk = (chunk + 31) / 32 * 32;
  if (chunk > 0) split = (s.P + chunk - 1) / chunk;  // no empty slices
  if (split < 1) split = 1;
}

// The plane forward (see fused_plane_kernel). Returns false, having done nothing,
// when the histograms do not fit kPlaneSharedBytes or the slices of planes exceed one
// grid (see fused_forward_applies).
template <typename scalar_t, typename label_t>
bool forward_plane_typed(const void* x, const void* labels, const int32_t* counts, void* y, int32_t* argmax,
                         int32_t* scratch_count, int32_t* scratch_first, const FusedShape& s, double tau_m,
                         double tau_s, double tau_grad, double v_th, cudaStream_t stream) {
  using acc_t = typename Acc<scalar_t>::type;
  const bool with_first = argmax != nullptr && scratch_first != nullptr;
  const int64_t TK = s.T * s.K;
  if (!plane_fits(s, with_first)) return false;
  const int64_t smem = plane_shared_bytes(s, with_first);
  const int64_t BC = s.B * s.C;
  const int64_t out = TK * BC;
  if (out == 0) return true;  // nothing to count
  int64_t split = 1, chunk = 0;
  plane_split(s, split, chunk);
  if (BC * split > int64_t(0x7fffffff)) return false;  // beyond one grid
  const bool direct = split == 1;
  if (!direct) {
    cudaMemsetAsync(scratch_count, 0, sizeof(int32_t) * out, stream);
    if (with_first) fill_no_pixel(scratch_first, out, stream);
  }
  const SRMParams<acc_t> prm = make_srm_params<acc_t>(tau_m, tau_s, tau_grad, v_th);
  const auto* xp = static_cast<const scalar_t*>(x);
  const auto* lp = static_cast<const label_t*>(labels);
  auto* yp = static_cast<scalar_t*>(y);
  const unsigned int blocks = static_cast<unsigned int>(BC * split);
  const size_t bytes = static_cast<size_t>(smem);
  if (!with_first) {
    fused_plane_kernel<scalar_t, acc_t, label_t, false><<<blocks, kThreads, bytes, stream>>>(
        xp, lp, counts, s, prm, yp, nullptr, scratch_count, nullptr, split, chunk, direct);
  } else {
    fused_plane_kernel<scalar_t, acc_t, label_t, true><<<blocks, kThreads, bytes, stream>>>(
        xp, lp, counts, s, prm, yp, argmax, scratch_count, scratch_first, split, chunk, direct);
  }
  if (!direct) {
    fused_finish_kernel<scalar_t, acc_t><<<blocks_for(out), kThreads, 0, stream>>>(
        scratch_count, with_first ? scratch_first : nullptr, counts, yp, with_first ? argmax : nullptr, s);
  }
  return true;
}

// The quad forward (see fused_quad_kernel), or false (nothing done) where it does not
// apply: float64, per-step label maps, P % 4 != 0, unaligned x or labels,
// histograms beyond kPlaneSharedBytes, or where the plane kernel would split planes into
// slices (fewer than 2 planes per SM and P > 256).
template <typename scalar_t, typename label_t>
bool forward_quad_typed(const void* x, const void* labels, const int32_t* counts, void* y, const FusedShape& s, double tau_m, double tau_s, double tau_grad, double v_th,
                        cudaStream_t stream) {
  using acc_t = typename Acc<scalar_t>::type;
  if (s.layout.L != 1 || s.P % 4 != 0 || !quad_aligned<scalar_t>(x) ||
      !quad_aligned<label_t>(labels) || !plane_fits(s, false)) {
    return false;
  }
  const int64_t BC = s.B * s.C;
  if (s.T == 0 || BC == 0 || s.K == 0) return false;  // nothing to count: the plane path returns at once
  int64_t split = 1, chunk = 0;
  plane_split(s, split, chunk);
  if (split != 1 || BC > int64_t(0x7fffffff)) return false;  // slices of planes: the plane kernel
  // No float64 instance: 4 neuron states in double exceed the register budget of 4 blocks
  // per SM (it spills), so float64 takes the plane kernel.
  if constexpr (sizeof(acc_t) == sizeof(float)) {
    const SRMParams<acc_t> prm = make_srm_params<acc_t>(tau_m, tau_s, tau_grad, v_th);
    fused_quad_kernel<scalar_t, acc_t, label_t>
        <<<static_cast<unsigned int>(BC), kThreads, static_cast<size_t>(plane_shared_bytes(s, false)), stream>>>(
            static_cast<const scalar_t*>(x), static_cast<const label_t*>(labels), counts, s, prm,
            static_cast<scalar_t*>(y));
    return true;
  }
  return false;
}

// The forward by `kernel`; false (nothing done) when it does not apply (see
// fused_forward_applies).
template <typename scalar_t, typename label_t>
bool forward_typed(const void* x, const void* labels, const int32_t* counts, void* y, int32_t* argmax,
                   int32_t* scratch_count, int32_t* scratch_first, const FusedShape& s, double tau_m, double tau_s,
                   double tau_grad, double v_th, FusedKernel kernel, cudaStream_t stream) {
  if (kernel == FusedKernel::Quad) {
    return argmax == nullptr &&
           forward_quad_typed<scalar_t, label_t>(x, labels, counts, y, s, tau_m, tau_s, tau_grad, v_th, stream);
  }
  if (kernel == FusedKernel::Plane) {
    return forward_plane_typed<scalar_t, label_t>(x, labels, counts, y, argmax, scratch_count, scratch_first, s,
                                                  tau_m, tau_s, tau_grad, v_th, stream);
  }
  using acc_t = typename Acc<scalar_t>::type;
  const int64_t out = s.T * s.B * s.C * s.K;
  // With K == 0 (every label negative) there is nothing to pool (and nothing is saved: the
  // backward recomputes the neuron from x).
  if (out == 0) return true;
  cudaMemsetAsync(scratch_count, 0, sizeof(int32_t) * out, stream);
  if (scratch_first != nullptr) fill_no_pixel(scratch_first, out, stream);
  const SRMParams<acc_t> prm = make_srm_params<acc_t>(tau_m, tau_s, tau_grad, v_th);
  const int64_t N = s.B * s.C * s.P;
  const auto* xp = static_cast<const scalar_t*>(x);
  const auto* lp = static_cast<const label_t*>(labels);
  if (N > 0) {
    fused_forward_kernel<scalar_t, acc_t, label_t><<<blocks_for(N), kThreads, 0, stream>>>(xp, lp, s, prm,
                                                                                          scratch_count, scratch_first);
  }
  fused_finish_kernel<scalar_t, acc_t><<<blocks_for(out), kThreads, 0, stream>>>(
      scratch_count, scratch_first, counts, static_cast<scalar_t*>(y), argmax, s);
  return true;
}

// Whether `kernel` applies to a forward call (training: for max, argmax is written), the
// test fused_forward runs before launching it.
template <typename scalar_t, typename label_t>
bool applies_typed(FusedKernel kernel, const void* x, const void* labels, const FusedShape& s, bool training) {
  const bool with_first = training && s.mode == PoolMode::Max;
  if (kernel == FusedKernel::Atomic) return true;
  if (!plane_fits(s, with_first)) return false;
  int64_t split = 1, chunk = 0;
  plane_split(s, split, chunk);
  const int64_t BC = s.B * s.C;
  if (kernel == FusedKernel::Plane) return BC * split <= int64_t(0x7fffffff);
  using acc_t = typename Acc<scalar_t>::type;
  return sizeof(acc_t) == sizeof(float) && !training && s.layout.L == 1 && s.P % 4 == 0 &&
         quad_aligned<scalar_t>(x) && quad_aligned<label_t>(labels) && s.T > 0 && BC > 0 && s.K > 0 && split == 1 &&
         BC <= int64_t(0x7fffffff);
}

}  // namespace

bool fused_forward_applies(FusedKernel kernel, DType dtype, LabelType lt, const void* x, const void* labels,
                           const FusedShape& s, bool training) {
  return with_scalar(dtype, [&](auto sc) {
    return with_label(lt == LabelType::Int64, [&](auto lb) {
      return applies_typed<typename decltype(sc)::type, typename decltype(lb)::type>(kernel, x, labels, s, training);
    });
  });
}

bool fused_forward(DType dtype, LabelType lt, const void* x, const void* labels, const int32_t* counts, void* y,
                   int32_t* argmax, int32_t* scratch_count, int32_t* scratch_first, const FusedShape& s,
                   double tau_m, double tau_s, double tau_grad, double v_th, FusedKernel kernel,
                   cudaStream_t stream) {
  return with_scalar(dtype, [&](auto sc) {
    return with_label(lt == LabelType::Int64, [&](auto lb) {
      return forward_typed<typename decltype(sc)::type, typename decltype(lb)::type>(
          x, labels, counts, y, argmax, scratch_count, scratch_first, s, tau_m, tau_s, tau_grad, v_th, kernel,
          stream);
    });
  });
}

}  // namespace cuda
}  // namespace snnspx
