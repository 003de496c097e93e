// CUDA kernel of the SRM layers' input-gradient finish (spike_input_grad_, see
// ../cpu/layers.cpp): in place, one thread per element, the operations and roundings of the
// PyTorch expression grad * s_in * scale (masked by s_in != 0) or grad * scale.
#include <algorithm>

#include "common.cuh"
#include "launch.h"

namespace snnspx {
namespace cuda {
namespace {

constexpr int kThreads = 256;

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
input_grad_kernel(scalar_t* __restrict__ g, const scalar_t* __restrict__ s, int64_t n, acc_t scale, bool mask) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < n; i += stride) {
    if (!mask) {
      g[i] = from_acc<scalar_t, acc_t>(to_acc<acc_t>(g[i]) * scale);
      continue;
    }
    const acc_t sv = to_acc<acc_t>(s[i]);
    // The product rounded to the element type first, as the two PyTorch ops round it; a select,
    // not a product by the mask, so that an infinite gradient at a silent input gives 0, not NaN.
    const acc_t prod = to_acc<acc_t>(from_acc<scalar_t, acc_t>(to_acc<acc_t>(g[i]) * sv));
    g[i] = sv != acc_t(0) ? from_acc<scalar_t, acc_t>(prod * scale) : from_acc<scalar_t, acc_t>(acc_t(0));
  }
}

}  // namespace

void spike_input_grad(DType dtype, void* grad, const void* s_in, int64_t n, double scale, bool mask,
                      cudaStream_t stream) {
  if (n == 0) return;
  const int64_t blocks = std::min<int64_t>((n + kThreads - 1) / kThreads, int64_t(1) << 16);
  with_scalar(dtype, [&](auto tag) {
    using scalar_t = typename decltype(tag)::type;
    using acc_t = typename Acc<scalar_t>::type;
    input_grad_kernel<scalar_t, acc_t><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
        static_cast<scalar_t*>(grad), static_cast<const scalar_t*>(s_in), n, static_cast<acc_t>(scale), mask);
  });
}

}  // namespace cuda
}  // namespace snnspx
