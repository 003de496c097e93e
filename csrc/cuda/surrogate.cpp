// CUDA registrations of the surrogate-mode SRM ops: checks, constants and buffers come
// from ../surrogate_glue.h (shared with the CPU), kernels from surrogate.cu. Not a default:
// CUDA tensors run these only with backend="cuda" until a GPU check passes (_backend.py).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../surrogate_glue.h"
#include "glue.h"
#include "surrogate_launch.h"

namespace snnspx {
namespace {

std::tuple<at::Tensor, at::Tensor> srm_sg_fwd_cuda(const at::Tensor& x, const at::Tensor& tau_m,
                                                   const at::Tensor& tau_s, const at::Tensor& v_th,
                                                   const c10::optional<at::Tensor>& state, double tau_grad,
                                                   bool fire_ge, c10::string_view surrogate, double alpha,
                                                   bool detach_reset) {
  cuda::check_cuda_tensor(x, "x");
  c10::cuda::CUDAGuard guard(x.device());
  const SGArgs a = prepare_sg(x, tau_m, tau_s, v_th, state, tau_grad, std::string(surrogate), alpha);
  SGForwardOut o = sg_forward_outputs(a, x);
  if (a.T == 0) return {o.spikes, o.state_out};
  cuda::sg_forward(cuda::launch_dtype(x.scalar_type()), a.x.data_ptr(), o.spikes.data_ptr(),
                   a.state.defined() ? a.state.data_ptr() : nullptr, o.state_out.data_ptr(), a.T, a.N,
                   a.consts.data_ptr(), a.Cc, a.P, a.a_g, fire_ge, c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {o.spikes, o.state_out};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> srm_sg_bwd_cuda(
    const at::Tensor& grad_spikes, const c10::optional<at::Tensor>& grad_state, const at::Tensor& x,
    const at::Tensor& tau_m, const at::Tensor& tau_s, const at::Tensor& v_th, const c10::optional<at::Tensor>& state,
    double tau_grad, bool fire_ge, c10::string_view surrogate, double alpha, bool detach_reset,
    bool constants_grad) {
  cuda::check_cuda_tensor(x, "x");
  c10::cuda::CUDAGuard guard(x.device());
  const std::string name(surrogate);
  const SGArgs a = prepare_sg(x, tau_m, tau_s, v_th, state, tau_grad, name, alpha);
  SGBackwardBuffers b = sg_backward_buffers(a, x, grad_spikes, grad_state, constants_grad);
  if (a.T > 0 && a.N > 0) {
    at::Tensor scratch = at::empty({3 * cuda::sg_backward_segments(a.T), a.N}, b.x.options());
    cuda::sg_backward(cuda::launch_dtype(a.acc), static_cast<int>(parse_surrogate(name)), detach_reset,
                      b.x.data_ptr(), b.grad.data_ptr(), a.state.defined() ? a.state.data_ptr() : nullptr,
                      b.grad_state.defined() ? b.grad_state.data_ptr() : nullptr, b.grad_x.data_ptr(),
                      b.grad_state_in.data_ptr(), b.partials.defined() ? b.partials.data_ptr() : nullptr,
                      scratch.data_ptr(), a.consts.data_ptr(), a.T,
                      a.N, a.Cc, a.P, a.a_g, fire_ge, alpha, c10::cuda::getCurrentCUDAStream());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return sg_backward_finish(b, a, x, tau_m, tau_s, v_th);
}

}  // namespace

TORCH_LIBRARY_IMPL(snnspx, CUDA, m) {
  m.impl("srm_sg_fwd", &srm_sg_fwd_cuda);
  m.impl("srm_sg_bwd", &srm_sg_bwd_cuda);
}

}  // namespace snnspx
