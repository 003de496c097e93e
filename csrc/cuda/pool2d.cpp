// CUDA registrations of the window pooling ops: checks and shapes come from ../pool2d_glue.h
// (shared with the CPU), kernels from pool2d.cu.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../pool2d_glue.h"
#include "glue.h"
#include "pool2d_launch.h"

namespace snnspx {
namespace {

at::Tensor spike_avg_pool2d_cuda(const at::Tensor& x_in, int64_t kh, int64_t kw) {
  cuda::check_cuda_tensor(x_in, "x");
  c10::cuda::CUDAGuard guard(x_in.device());
  const Pool2dShape s = check_pool2d_input(x_in, kh, kw);
  const at::Tensor x = x_in.contiguous();
  at::Tensor y = at::empty(pool2d_out_sizes(x_in, s), x_in.options().memory_format(at::MemoryFormat::Contiguous));
  if (y.numel() == 0) return y;
  cuda::spike_avg_pool2d_forward(cuda::launch_dtype(x.scalar_type()), x.const_data_ptr(), y.mutable_data_ptr(), s.P,
                                 s.H, s.W, kh, kw, c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return y;
}

at::Tensor spike_avg_pool2d_bwd_cuda(const at::Tensor& grad_y, const at::Tensor& x_in, int64_t kh, int64_t kw) {
  cuda::check_cuda_tensor(x_in, "x");
  c10::cuda::CUDAGuard guard(x_in.device());
  const Pool2dShape s = check_pool2d_backward(grad_y, x_in, kh, kw);
  const at::Tensor x = x_in.contiguous();
  const at::Tensor g = grad_y.contiguous();
  at::Tensor gx = at::empty(x_in.sizes(), grad_y.options().memory_format(at::MemoryFormat::Contiguous));
  if (gx.numel() == 0) return gx;
  cuda::spike_avg_pool2d_backward(cuda::launch_dtype(x.scalar_type()), g.const_data_ptr(), x.const_data_ptr(),
                                  gx.mutable_data_ptr(), s.P, s.H, s.W, kh, kw, c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return gx;
}

}  // namespace

TORCH_LIBRARY_IMPL(snnspx, CUDA, m) {
  m.impl("spike_avg_pool2d", &spike_avg_pool2d_cuda);
  m.impl("spike_avg_pool2d_bwd", &spike_avg_pool2d_bwd_cuda);
}

}  // namespace snnspx
