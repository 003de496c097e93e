// CUDA registrations of the window pooling ops: checks and shapes come from ../pool2d_glue.h
// (shared with the CPU), kernels from pool2d.cu.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "../pool2d_glue.h"
#include "glue.h"
#include "pool2d_launch.h"

namespace snnspx {
namespace {

std::tuple<at::Tensor, at::Tensor> spike_avg_pool2d_cuda(const at::Tensor& x_in, int64_t kh, int64_t kw) {
  cuda::check_cuda_tensor(x_in, "x");
  c10::cuda::CUDAGuard guard(x_in.device());
  const Pool2dShape s = check_pool2d_input(x_in, kh, kw);
  const at::Tensor x = x_in.contiguous();
  const auto out_sizes = pool2d_sizes(x_in, s.OH, s.OW);
  const auto opts = x_in.options().memory_format(at::MemoryFormat::Contiguous);
  const auto count_dtype = pool2d_count_dtype(kh, kw);
  at::Tensor y = at::empty(out_sizes, opts);
  at::Tensor count = at::empty(out_sizes, opts.dtype(count_dtype));
  if (y.numel() == 0) return {y, count};
  cuda::spike_avg_pool2d_forward(cuda::launch_dtype(x.scalar_type()), x.const_data_ptr(), y.mutable_data_ptr(),
                                 count.mutable_data_ptr(), count_dtype == at::kInt, s.P, s.H, s.W, kh, kw,
                                 c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {y, count};
}

at::Tensor spike_avg_pool2d_bwd_cuda(const at::Tensor& grad_y, const at::Tensor& count_in, int64_t kh, int64_t kw,
                                     int64_t H, int64_t W) {
  cuda::check_cuda_tensor(grad_y, "grad_y");
  c10::cuda::CUDAGuard guard(grad_y.device());
  const Pool2dShape s = check_pool2d_backward(grad_y, count_in, kh, kw, H, W);
  const at::Tensor g = grad_y.contiguous();
  const at::Tensor count = count_in.contiguous();
  at::Tensor gx = at::empty(pool2d_sizes(grad_y, H, W), grad_y.options().memory_format(at::MemoryFormat::Contiguous));
  if (gx.numel() == 0) return gx;
  cuda::spike_avg_pool2d_backward(cuda::launch_dtype(g.scalar_type()), g.const_data_ptr(), count.const_data_ptr(),
                                  count.scalar_type() == at::kInt, gx.mutable_data_ptr(), s.P, s.H, s.W, kh, kw,
                                  c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return gx;
}

}  // namespace

TORCH_LIBRARY_IMPL(snnspx, CUDA, m) {
  m.impl("spike_avg_pool2d", &spike_avg_pool2d_cuda);
  m.impl("spike_avg_pool2d_bwd", &spike_avg_pool2d_bwd_cuda);
}

}  // namespace snnspx
