// CPU kernel of the SRM layers' input-gradient finish (snnspx/functional/layers.py,
// spike_input_grad_): in place, grad = s_in != 0 ? grad * s_in * scale : 0 (mask) or
// grad * scale, in one pass with no temporary. The operations and their rounding are those
// of the same PyTorch expression: the product rounded to the tensor's dtype, then the scale
// (in the dtype's arithmetic type) applied and rounded again.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../layers_glue.h"

namespace snnspx {
namespace {

constexpr int64_t kGrain = 32768;

template <typename scalar_t>
void finish_input_grad(scalar_t* g, const scalar_t* s, int64_t n, double scale_in, bool mask) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t scale = static_cast<acc_t>(scale_in);
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
    if (mask) {
      for (int64_t i = begin; i < end; ++i) {
        const scalar_t prod = static_cast<scalar_t>(static_cast<acc_t>(g[i]) * static_cast<acc_t>(s[i]));
        // A select, not a product by the mask: an infinite gradient at a silent input is 0, not NaN.
        g[i] = s[i] != scalar_t(0) ? static_cast<scalar_t>(static_cast<acc_t>(prod) * scale) : scalar_t(0);
      }
    } else {
      for (int64_t i = begin; i < end; ++i) g[i] = static_cast<scalar_t>(static_cast<acc_t>(g[i]) * scale);
    }
  });
}

void spike_input_grad_cpu(at::Tensor& grad, const at::Tensor& s_in, double scale, bool mask) {
  check_input_grad_args(grad, s_in);
  if (input_grad_any_layout(grad, s_in, scale, mask)) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "spike_input_grad_cpu", [&] {
    finish_input_grad<scalar_t>(grad.data_ptr<scalar_t>(), s_in.data_ptr<scalar_t>(), grad.numel(), scale, mask);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(snnspx, CPU, m) { m.impl("spike_input_grad_", &spike_input_grad_cpu); }

}  // namespace snnspx
