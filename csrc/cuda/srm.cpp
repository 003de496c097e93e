// CUDA registrations of the SRM ops: checks and allocation come from
// ../srm_glue.h (shared with the CPU), kernels from srm.cu. The kernels run the
// default neuron (variant 0) from a zero state only: the other variants, and a carried
// state, are rejected here.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>
#include <optional>

#include "../srm_glue.h"
#include "glue.h"
#include "launch.h"

namespace snnspx {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> srm_forward_cuda(const at::Tensor& x, double tau_m, double tau_s,
                                                                double tau_grad, double v_th, int64_t variant) {
  check_default_variant("srm_forward", variant);
  cuda::check_cuda_tensor(x, "x");
  c10::cuda::CUDAGuard guard(x.device());
  auto o = prepare_srm_forward(x, tau_m, tau_s, tau_grad, v_th, /*packed=*/false);
  cuda::srm_forward(cuda::launch_dtype(x.scalar_type()), o.x.data_ptr(), o.spikes.data_ptr(), o.du.data_ptr(),
                    o.dut.data_ptr(), o.T, o.N, tau_m, tau_s, tau_grad, v_th, 0.0, 0.0, /*packed=*/false,
                    c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {o.spikes, o.du, o.dut};
}

// The kernels start every neuron from zeros and do not return the end state: a given state,
// or return_state, is rejected (the Python wrappers never run these kernels where the state
// is wanted).
void check_no_state(const char* op, const std::optional<at::Tensor>& state, bool return_state) {
  TORCH_CHECK_VALUE(!(state.has_value() && state->defined()) && !return_state, op,
                    ": the CUDA kernels do not carry the neuron state (got a state or return_state=True): run CUDA "
                    "tensors with backend='torch'");
}

std::tuple<at::Tensor, at::Tensor> srm_neuron_fwd_cuda(const at::Tensor& x, double tau_m, double tau_s,
                                                       double tau_grad, double v_th, double du_inv_clamp,
                                                       double max_dudt_inv, int64_t variant,
                                                       const std::optional<at::Tensor>& state, bool return_state) {
  check_default_variant("srm_neuron_fwd", variant);
  check_no_state("srm_neuron_fwd", state, return_state);
  check_backward_params(du_inv_clamp, max_dudt_inv);
  cuda::check_cuda_tensor(x, "x");
  c10::cuda::CUDAGuard guard(x.device());
  auto o = prepare_srm_forward(x, tau_m, tau_s, tau_grad, v_th, /*traces=*/false);
  add_srm_state(o, std::nullopt, /*return_state=*/false);
  cuda::srm_forward(cuda::launch_dtype(x.scalar_type()), o.x.data_ptr(), o.spikes.data_ptr(), nullptr, nullptr, o.T,
                    o.N, tau_m, tau_s, tau_grad, v_th, du_inv_clamp, max_dudt_inv, /*packed=*/true,
                    c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {o.spikes, o.state_out};
}

void check_acc_dtype(const at::Tensor& state, const char* name, const at::Tensor& grad) {
  const auto want = srm_acc_type(grad.scalar_type());
  TORCH_CHECK(state.scalar_type() == want, name, " must be ", want, " for grad_spikes of dtype ",
              grad.scalar_type(), ", got ", state.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> srm_backward_cuda(const at::Tensor& grad_spikes, const at::Tensor& spikes,
                                                     const at::Tensor& du, const at::Tensor& dut, double tau_m,
                                                     double tau_s, double tau_grad, double du_inv_clamp,
                                                     double max_dudt_inv, int64_t variant) {
  check_default_variant("srm_backward", variant);
  cuda::check_cuda_tensor(grad_spikes, "grad_spikes");
  c10::cuda::CUDAGuard guard(grad_spikes.device());
  auto a = prepare_srm_backward(grad_spikes, spikes, du, dut, tau_m, tau_s, tau_grad, du_inv_clamp, max_dudt_inv);
  check_acc_dtype(a.du, "du", a.grad);
  const at::Tensor spk = a.spikes.to(a.grad.scalar_type());
  const at::Tensor tables = cuda::srm_tables_cuda(a.du, a.T, tau_m, tau_s, tau_grad);
  cuda::srm_backward(cuda::launch_dtype(a.grad.scalar_type()), a.grad.data_ptr(), spk.data_ptr(), a.du.data_ptr(),
                     a.dut.data_ptr(), a.grad_w.data_ptr(), a.grad_t.data_ptr(), tables.data_ptr(), a.T, a.N,
                     du_inv_clamp, max_dudt_inv, c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {a.grad_w, a.grad_t};
}

// The forward again from x into a temporary [2, T, N] of the backward's factors, then the
// walk back through them: between the forward and the backward, nothing but x is kept.
std::tuple<at::Tensor, at::Tensor> srm_neuron_bwd_cuda(const at::Tensor& grad_spikes, const at::Tensor& x,
                                                       const std::optional<at::Tensor>& state, double tau_m,
                                                       double tau_s, double tau_grad, double v_th,
                                                       double du_inv_clamp, double max_dudt_inv, int64_t variant,
                                                       bool with_t) {
  check_default_variant("srm_neuron_bwd", variant);
  check_no_state("srm_neuron_bwd", state, false);
  cuda::check_cuda_tensor(grad_spikes, "grad_spikes");
  c10::cuda::CUDAGuard guard(grad_spikes.device());
  auto a = prepare_srm_neuron_backward(grad_spikes, x, std::nullopt, tau_m, tau_s, tau_grad, v_th, du_inv_clamp,
                                       max_dudt_inv, with_t);
  const auto acc = a.x.options().dtype(srm_acc_type(a.x.scalar_type()));
  const at::Tensor factors = at::empty({2, a.T, a.N}, acc);
  auto* fp = static_cast<char*>(factors.data_ptr());
  const int64_t half = a.T * a.N * factors.element_size();
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const auto dtype = cuda::launch_dtype(a.grad.scalar_type());
  cuda::srm_forward(dtype, a.x.data_ptr(), nullptr, fp, fp + half, a.T, a.N, tau_m, tau_s, tau_grad, v_th,
                    du_inv_clamp, max_dudt_inv, /*packed=*/true, stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const at::Tensor tables = cuda::srm_tables_cuda(factors, a.T, tau_m, tau_s, tau_grad);
  cuda::srm_backward(dtype, a.grad.data_ptr(), nullptr, fp, fp + half, a.grad_w.data_ptr(),
                     with_t ? a.grad_t.data_ptr() : nullptr, tables.data_ptr(), a.T, a.N, du_inv_clamp, max_dudt_inv,
                     stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {a.grad_w, a.grad_t};
}

}  // namespace

TORCH_LIBRARY_IMPL(snnspx, CUDA, m) {
  m.impl("srm_forward", &srm_forward_cuda);
  m.impl("srm_backward", &srm_backward_cuda);
  m.impl("srm_neuron_fwd", &srm_neuron_fwd_cuda);
  m.impl("srm_neuron_bwd", &srm_neuron_bwd_cuda);
}

}  // namespace snnspx
