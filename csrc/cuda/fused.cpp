// CUDA registrations of the fused SRM + superpixel pooling ops: checks and allocation
// from ../fused_glue.h (shared with the CPU), the kernel choice from strategy.h, kernels
// from fused_forward.cu, fused_backward.cu and count.cu. The kernels run the default
// neuron (variant 0) only: the other variants are rejected here.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../fused_glue.h"
#include "fused_launch.h"
#include "glue.h"
#include "strategy.h"
#include "suppix_launch.h"

namespace snnspx {
namespace {

cuda::LabelType label_type(const at::Tensor& labels) {
  return labels.scalar_type() == at::kInt ? cuda::LabelType::Int32 : cuda::LabelType::Int64;
}

cuda::FusedShape shape_of(const FusedArgs& a) {
  // One thread per neuron and per output entry, in 1-D grids of 256-thread blocks.
  TORCH_CHECK(a.B * a.C * a.P < (int64_t(1) << 39) && a.T * a.B * a.C * a.K < (int64_t(1) << 39),
              "srm_suppix_pool on CUDA takes fewer than 2^39 neurons per step and 2^39 outputs");
  return cuda::FusedShape{a.T, a.B, a.C, a.P, a.K, a.layout, a.mode};
}

// Pixels per superpixel of each label map, int32 [L, Bl, K], by the count kernel of pooling.
at::Tensor counts_cuda(const FusedArgs& a, cudaStream_t stream) {
  at::Tensor counts = at::zeros({a.layout.L, a.layout.Bl, a.K}, a.labels.options().dtype(at::kInt));
  cuda::suppix_count(a.labels.data_ptr(), a.labels.scalar_type() == at::kLong, counts.data_ptr<int32_t>(),
                     /*top=*/nullptr, a.layout.maps(), a.P, a.K, stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return counts;
}

// The forward kernel of `op` for prepared arguments.
cuda::FusedKernel forward_strategy(const char* op, const FusedArgs& a, bool training, c10::string_view strategy) {
  const auto dtype = cuda::launch_dtype(a.x.scalar_type());
  const auto lt = label_type(a.labels);
  const auto s = shape_of(a);
  const void* x = a.x.data_ptr();
  const void* labels = a.labels.data_ptr();
  return resolve_strategy(op, strategy, cuda::kFusedForwardStrategies,
                          cuda::srm_suppix_pool_strategy(dtype, lt, x, labels, s, training),
                          [&](cuda::FusedKernel k) {
                            return cuda::fused_forward_rejects(k, dtype, lt, x, labels, s, training);
                          });
}

// argmax: the training forward's (written for "max"), nullptr for inference.
void forward_cuda(const FusedArgs& a, double tau_m, double tau_s, double tau_grad, double v_th,
                  const at::Tensor& counts, at::Tensor& y, at::Tensor* argmax, cuda::FusedKernel kernel,
                  cudaStream_t stream) {
  const auto iopt = counts.options();
  at::Tensor scratch = at::empty({a.T * a.B * a.C * a.K}, iopt);
  const bool want_max = argmax != nullptr && a.mode == PoolMode::Max;
  at::Tensor scratch_first = want_max ? at::empty({a.T * a.B * a.C * a.K}, iopt) : at::Tensor();
  const bool ran = cuda::fused_forward(
      cuda::launch_dtype(a.x.scalar_type()), label_type(a.labels), a.x.data_ptr(), a.labels.data_ptr(),
      counts.data_ptr<int32_t>(), y.data_ptr(), want_max ? argmax->data_ptr<int32_t>() : nullptr,
      scratch.data_ptr<int32_t>(), want_max ? scratch_first.data_ptr<int32_t>() : nullptr, shape_of(a), tau_m, tau_s,
      tau_grad, v_th, kernel, stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  TORCH_INTERNAL_ASSERT(ran, "the fused forward kernel ", static_cast<int>(kernel), " did not apply");
}

at::Tensor srm_suppix_pool_cuda(const at::Tensor& x, const at::Tensor& labels, int64_t K, c10::string_view mode,
                                double tau_m, double tau_s, double tau_grad, double v_th, int64_t variant,
                                bool check_labels, c10::string_view strategy) {
  check_default_variant("srm_suppix_pool", variant);
  cuda::check_cuda_tensor(x, "x");
  c10::cuda::CUDAGuard guard(x.device());
  check_srm_neuron_params(tau_m, tau_s, tau_grad, v_th);
  auto a = prepare_fused(x, labels, K, mode);
  const auto kernel = forward_strategy("srm_suppix_pool", a, /*training=*/false, strategy);
  cuda::DeviceLabelCheck check(a.labels, K, check_labels && cuda::can_read_back());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor counts = counts_cuda(a, stream);
  at::Tensor y = fused_output(a);
  forward_cuda(a, tau_m, tau_s, tau_grad, v_th, counts, y, nullptr, kernel, stream);
  check.verify();  // the kernels skipped labels >= K; now the verdict
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> srm_suppix_pool_fwd_cuda(
    const at::Tensor& x, const at::Tensor& labels, int64_t K, c10::string_view mode, double tau_m, double tau_s,
    double tau_grad, double v_th, double du_inv_clamp, double max_dudt_inv, int64_t variant, bool check_labels,
    c10::string_view strategy) {
  check_default_variant("srm_suppix_pool_fwd", variant);
  cuda::check_cuda_tensor(x, "x");
  c10::cuda::CUDAGuard guard(x.device());
  check_srm_neuron_params(tau_m, tau_s, tau_grad, v_th);
  check_backward_params(du_inv_clamp, max_dudt_inv);
  auto a = prepare_fused(x, labels, K, mode);
  const auto kernel = forward_strategy("srm_suppix_pool_fwd", a, /*training=*/true, strategy);
  cuda::DeviceLabelCheck check(a.labels, K, check_labels && cuda::can_read_back());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor counts = counts_cuda(a, stream);
  at::Tensor y = fused_output(a);
  at::Tensor argmax = a.mode == PoolMode::Max ? at::empty({a.T, a.B, a.C, a.K}, counts.options())
                                              : at::empty({0}, counts.options());
  forward_cuda(a, tau_m, tau_s, tau_grad, v_th, counts, y, &argmax, kernel, stream);
  check.verify();
  return {y, counts, argmax};
}

// The neuron's forward again from x into a temporary [2, T, B, C, P] of the backward's
// factors (srm_forward's packed form: the same steps as the fused forward, so the same
// spikes), then the fused backward through them: between the forward and the backward,
// nothing per neuron-step is kept but x.
at::Tensor srm_suppix_pool_bwd_cuda(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& labels,
                                    const at::Tensor& counts, const at::Tensor& argmax, c10::string_view mode,
                                    double tau_m, double tau_s, double tau_grad, double v_th, double du_inv_clamp,
                                    double max_dudt_inv, int64_t variant, c10::string_view strategy) {
  check_default_variant("srm_suppix_pool_bwd", variant);
  cuda::check_cuda_tensor(grad_y, "grad_y");
  c10::cuda::CUDAGuard guard(grad_y.device());
  check_srm_neuron_params(tau_m, tau_s, tau_grad, v_th);
  check_backward_params(du_inv_clamp, max_dudt_inv);
  auto a = prepare_fused_backward(grad_y, x, labels, mode);
  check_fused_backward(grad_y, counts, argmax, a);
  const auto s = shape_of(a);
  const auto kernel = resolve_strategy("srm_suppix_pool_bwd", strategy, cuda::kFusedBackwardStrategies,
                                       cuda::srm_suppix_pool_bwd_strategy(s),
                                       [&](cuda::FusedBackwardKernel k) { return cuda::fused_backward_rejects(k, s); });
  const at::Tensor g = grad_y.contiguous();
  const at::Tensor cn = counts.contiguous();
  const at::Tensor am = argmax.contiguous();
  at::Tensor grad_x = at::empty({a.T, a.B, a.C, a.P}, grad_y.options());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const auto dtype = cuda::launch_dtype(g.scalar_type());
  const int64_t N = a.B * a.C * a.P;
  const at::Tensor factors = at::empty({2, a.T, a.B, a.C, a.P}, a.x.options().dtype(srm_acc_type(a.x.scalar_type())));
  auto* fp = static_cast<char*>(factors.data_ptr());
  cuda::srm_forward(dtype, a.x.data_ptr(), nullptr, fp, fp + a.T * N * factors.element_size(), a.T, N, tau_m, tau_s,
                    tau_grad, v_th, du_inv_clamp, max_dudt_inv, /*packed=*/true, stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const at::Tensor tables = cuda::srm_tables_cuda(factors, a.T, tau_m, tau_s, tau_grad);
  cuda::fused_backward(dtype, label_type(a.labels), g.data_ptr(), factors.data_ptr(), a.labels.data_ptr(),
                       cn.data_ptr<int32_t>(), a.mode == PoolMode::Max ? am.data_ptr<int32_t>() : nullptr,
                       tables.data_ptr(), grad_x.data_ptr(), s, kernel, stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return grad_x;
}

}  // namespace

TORCH_LIBRARY_IMPL(snnspx, CUDA, m) {
  m.impl("srm_suppix_pool", &srm_suppix_pool_cuda);
  m.impl("srm_suppix_pool_fwd", &srm_suppix_pool_fwd_cuda);
  m.impl("srm_suppix_pool_bwd", &srm_suppix_pool_bwd_cuda);
}

}  // namespace snnspx
