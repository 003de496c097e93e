// CUDA registration of the SRM layers' input-gradient finish (spike_input_grad_); the kernel
// is in layers.cu, the checks match ../cpu/layers.cpp's.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../layers_glue.h"

#include "glue.h"
#include "launch.h"

namespace snnspx {
namespace {

void spike_input_grad_cuda(at::Tensor& grad, const at::Tensor& s_in, double scale, bool mask) {
  check_input_grad_args(grad, s_in);
  cuda::check_cuda_tensor(grad, "grad");
  cuda::check_cuda_tensor(s_in, "s_in");
  c10::cuda::CUDAGuard guard(grad.device());
  if (input_grad_any_layout(grad, s_in, scale, mask)) return;
  cuda::spike_input_grad(cuda::launch_dtype(grad.scalar_type()), grad.data_ptr(), s_in.data_ptr(), grad.numel(), scale,
                         mask, c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

TORCH_LIBRARY_IMPL(snnspx, CUDA, m) { m.impl("spike_input_grad_", &spike_input_grad_cuda); }

}  // namespace snnspx
