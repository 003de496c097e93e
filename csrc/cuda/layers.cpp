// CUDA registration of the SRM layers' input-gradient finish (spike_input_grad_); the kernel
// is in layers.cu, the checks match ../cpu/layers.cpp's.
#include <ATen/ATen.h>
#include <ATen/ScalarOps.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "glue.h"
#include "launch.h"

namespace snnspx {
namespace {

void spike_input_grad_cuda(at::Tensor& grad, const at::Tensor& s_in, double scale, bool mask) {
  TORCH_CHECK(grad.sizes() == s_in.sizes(), "grad and s_in must have the same shape, got ", grad.sizes(), " and ",
              s_in.sizes());
  TORCH_CHECK_TYPE(grad.scalar_type() == s_in.scalar_type(), "grad and s_in must have the same dtype, got ",
                   grad.scalar_type(), " and ", s_in.scalar_type());
  TORCH_CHECK(at::isFloatingType(grad.scalar_type()), "grad must be a floating-point tensor, got ", grad.scalar_type());
  cuda::check_cuda_tensor(grad, "grad");
  cuda::check_cuda_tensor(s_in, "s_in");
  c10::cuda::CUDAGuard guard(grad.device());
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
  cuda::spike_input_grad(cuda::launch_dtype(grad.scalar_type()), grad.data_ptr(), s_in.data_ptr(), grad.numel(), scale,
                         mask, c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

TORCH_LIBRARY_IMPL(snnspx, CUDA, m) { m.impl("spike_input_grad_", &spike_input_grad_cuda); }

}  // namespace snnspx
