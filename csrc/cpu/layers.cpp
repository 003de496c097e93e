// CPU kernel of the SRM layers' input-gradient finish (snnspx/functional/layers.py,
// spike_input_grad_): in place, grad = s_in != 0 ? grad * s_in * scale : 0 (mask) or
// grad * scale, in one pass with no temporary. The operations and their rounding are those
// of the same PyTorch expression: the product rounded to the tensor's dtype, then the scale
// (in the dtype's arithmetic type) applied and rounded again.
#include <ATen/ATen.h>
#include <ATen/ScalarOps.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

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
  TORCH_CHECK(grad.sizes() == s_in.sizes(), "grad and s_in must have the same shape, got ", grad.sizes(), " and ",
              s_in.sizes());
  TORCH_CHECK_TYPE(grad.scalar_type() == s_in.scalar_type(), "grad and s_in must have the same dtype, got ",
                   grad.scalar_type(), " and ", s_in.scalar_type());
  TORCH_CHECK(at::isFloatingType(grad.scalar_type()), "grad must be a floating-point tensor, got ", grad.scalar_type());
  if (!grad.is_contiguous() || !s_in.is_contiguous()) {
    // Any other layout: the same operations as separate in-place ops (the PyTorch kernel's).
    // The scale as a wrapped number, as a Python float reaches mul: its kernels read it in the
    // arithmetic type (float for float16), where mul_(double) would round it to the dtype first.
    const at::Tensor s = at::native::wrapped_scalar_tensor(scale);
    if (mask) {
      grad.mul_(s_in).mul_(s).masked_fill_(s_in == 0, 0);
    } else {
      grad.mul_(s);
    }
    return;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "spike_input_grad_cpu", [&] {
    finish_input_grad<scalar_t>(grad.data_ptr<scalar_t>(), s_in.data_ptr<scalar_t>(), grad.numel(), scale, mask);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(snnspx, CPU, m) { m.impl("spike_input_grad_", &spike_input_grad_cpu); }

}  // namespace snnspx
