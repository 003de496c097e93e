// Argument checks and the any-layout path of spike_input_grad_ (the SRM layers' input-gradient
// finish, snnspx/functional/layers.py), shared by the CPU and CUDA registrations. Host-only.
#pragma once

#include <ATen/ATen.h>
#include <ATen/ScalarOps.h>

namespace snnspx {

inline void check_input_grad_args(const at::Tensor& grad, const at::Tensor& s_in) {
  TORCH_CHECK(grad.sizes() == s_in.sizes(), "grad and s_in must have the same shape, got ", grad.sizes(), " and ",
              s_in.sizes());
  TORCH_CHECK_TYPE(grad.scalar_type() == s_in.scalar_type(), "grad and s_in must have the same dtype, got ",
                   grad.scalar_type(), " and ", s_in.scalar_type());
  TORCH_CHECK(at::isFloatingType(grad.scalar_type()), "grad must be a floating-point tensor, got ", grad.scalar_type());
}

// Layouts the kernels do not take (either tensor not contiguous): the PyTorch kernel's in-place
// ops. The scale goes in as a wrapped number, as a Python float reaches mul: its kernels read
// it in the arithmetic type (float for float16), where mul_(double) would round it to the dtype
// first. Returns whether it handled the call.
inline bool input_grad_any_layout(at::Tensor& grad, const at::Tensor& s_in, double scale, bool mask) {
  if (grad.is_contiguous() && s_in.is_contiguous()) return false;
  const at::Tensor s = at::native::wrapped_scalar_tensor(scale);
  if (mask) {
    grad.mul_(s_in).mul_(s).masked_fill_(s_in == 0, 0);
  } else {
    grad.mul_(s);
  }
  return true;
}

}  // namespace snnspx
