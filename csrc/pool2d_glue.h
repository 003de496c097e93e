// Argument checks and output shapes of the window pooling ops (spike_avg_pool2d and its
// backward, snnspx/functional/pool2d.py), shared by the CPU and CUDA registrations. The
// messages and error types are those of the PyTorch kernels' checks. Host-only (ATen).
#pragma once

#include <ATen/ATen.h>

#include <vector>

namespace snnspx {

// x [..., H, W] seen as P planes of H x W; OH x OW windows of kh x kw (floor mode).
struct Pool2dShape {
  int64_t P, H, W, kh, kw, OH, OW;
};

inline Pool2dShape check_pool2d_input(const at::Tensor& x, int64_t kh, int64_t kw) {
  const auto t = x.scalar_type();
  TORCH_CHECK_TYPE(t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16,
                   "x must be float32, float64, float16 or bfloat16, got ", t);
  TORCH_CHECK_VALUE(kh >= 1 && kw >= 1, "kernel_size must be >= 1, got (", kh, ", ", kw, ")");
  TORCH_CHECK_VALUE(x.dim() >= 3, "x must have at least 3 dimensions ([..., H, W]), got shape ", x.sizes());
  Pool2dShape s;
  s.H = x.size(-2);
  s.W = x.size(-1);
  TORCH_CHECK_VALUE(s.H >= kh && s.W >= kw, "x's last two dimensions (", s.H, ", ", s.W,
                    ") must be at least the kernel (", kh, ", ", kw, ")");
  s.P = 1;
  for (int64_t d = 0; d < x.dim() - 2; ++d) s.P *= x.size(d);
  s.kh = kh;
  s.kw = kw;
  s.OH = s.H / kh;
  s.OW = s.W / kw;
  return s;
}

inline std::vector<int64_t> pool2d_out_sizes(const at::Tensor& x, const Pool2dShape& s) {
  std::vector<int64_t> out(x.sizes().begin(), x.sizes().end() - 2);
  out.push_back(s.OH);
  out.push_back(s.OW);
  return out;
}

// The backward's arguments: x as above, grad_y of the forward's output shape, dtype and device.
inline Pool2dShape check_pool2d_backward(const at::Tensor& grad_y, const at::Tensor& x, int64_t kh, int64_t kw) {
  const Pool2dShape s = check_pool2d_input(x, kh, kw);
  const auto want = pool2d_out_sizes(x, s);
  TORCH_CHECK_VALUE(grad_y.sizes() == at::IntArrayRef(want), "grad_y must have the output shape ",
                    at::IntArrayRef(want), " of x ", x.sizes(), ", got ", grad_y.sizes());
  TORCH_CHECK_TYPE(grad_y.scalar_type() == x.scalar_type(), "grad_y must have the dtype of x (", x.scalar_type(),
                   "), got ", grad_y.scalar_type());
  TORCH_CHECK_VALUE(grad_y.device() == x.device(),
                    "snnspx::spike_avg_pool2d_bwd needs all its tensors on one device, got grad_y on ",
                    grad_y.device(), ", x on ", x.device());
  return s;
}

}  // namespace snnspx
