// Argument checks and output shapes of the window pooling ops (spike_avg_pool2d and its
// backward, snnspx/functional/pool2d.py), shared by the CPU and CUDA registrations. The
// messages and error types are those of the PyTorch kernels' checks. Host-only (ATen).
#pragma once

#include <ATen/ATen.h>

#include <vector>

namespace snnspx {

// Pixels per window, at most: the kernels count a window's non-zero inputs in float, exact
// up to 2^24.
constexpr int64_t kPool2dMaxWindow = int64_t(1) << 24;

// [..., H, W] seen as P planes of H x W; OH x OW windows of kh x kw (floor mode).
struct Pool2dShape {
  int64_t P, H, W, kh, kw, OH, OW;
};

// The dtype of the window counts: uint8 where a window has at most 255 pixels, else int32.
inline at::ScalarType pool2d_count_dtype(int64_t kh, int64_t kw) { return kh * kw <= 255 ? at::kByte : at::kInt; }

inline void check_pool2d_float(const at::Tensor& t, const char* name) {
  const auto d = t.scalar_type();
  TORCH_CHECK_TYPE(d == at::kFloat || d == at::kDouble || d == at::kHalf || d == at::kBFloat16, name,
                   " must be float32, float64, float16 or bfloat16, got ", d);
}

inline void check_pool2d_kernel(int64_t kh, int64_t kw) {
  TORCH_CHECK_VALUE(kh >= 1 && kw >= 1, "kernel_size must be >= 1, got (", kh, ", ", kw, ")");
  TORCH_CHECK_VALUE(kh <= kPool2dMaxWindow / kw, "kernel_size (", kh, ", ", kw,
                    ") must have at most 2**24 pixels per window, got ", kh * kw);
}

inline Pool2dShape pool2d_shape(const at::Tensor& t, int64_t H, int64_t W, int64_t kh, int64_t kw) {
  Pool2dShape s;
  s.P = 1;
  for (int64_t d = 0; d < t.dim() - 2; ++d) s.P *= t.size(d);
  s.H = H;
  s.W = W;
  s.kh = kh;
  s.kw = kw;
  s.OH = H / kh;
  s.OW = W / kw;
  return s;
}

inline Pool2dShape check_pool2d_input(const at::Tensor& x, int64_t kh, int64_t kw) {
  check_pool2d_float(x, "x");
  check_pool2d_kernel(kh, kw);
  TORCH_CHECK_VALUE(x.dim() >= 3, "x must have at least 3 dimensions ([..., H, W]), got shape ", x.sizes());
  const int64_t H = x.size(-2), W = x.size(-1);
  TORCH_CHECK_VALUE(H >= kh && W >= kw, "x's last two dimensions (", H, ", ", W, ") must be at least the kernel (", kh,
                    ", ", kw, ")");
  return pool2d_shape(x, H, W, kh, kw);
}

// t's sizes with the last two replaced by (h, w).
inline std::vector<int64_t> pool2d_sizes(const at::Tensor& t, int64_t h, int64_t w) {
  std::vector<int64_t> out(t.sizes().begin(), t.sizes().end() - 2);
  out.push_back(h);
  out.push_back(w);
  return out;
}

// The backward's arguments: grad_y [..., OH, OW] of the output shape of an input [..., H, W],
// count of grad_y's shape and of pool2d_count_dtype, both on one device.
inline Pool2dShape check_pool2d_backward(const at::Tensor& grad_y, const at::Tensor& count, int64_t kh, int64_t kw,
                                         int64_t H, int64_t W) {
  check_pool2d_float(grad_y, "grad_y");
  check_pool2d_kernel(kh, kw);
  TORCH_CHECK_VALUE(grad_y.dim() >= 3, "grad_y must have at least 3 dimensions ([..., OH, OW]), got shape ",
                    grad_y.sizes());
  TORCH_CHECK_VALUE(H >= kh && W >= kw, "the input size (H, W) = (", H, ", ", W, ") must be at least the kernel (", kh,
                    ", ", kw, ")");
  const auto want = pool2d_sizes(grad_y, H / kh, W / kw);
  TORCH_CHECK_VALUE(grad_y.sizes() == at::IntArrayRef(want), "grad_y must have the output shape ",
                    at::IntArrayRef(want), " of an input [..., ", H, ", ", W, "], got ", grad_y.sizes());
  TORCH_CHECK_VALUE(count.sizes() == at::IntArrayRef(want), "count must have the shape of grad_y ",
                    at::IntArrayRef(want), ", got ", count.sizes());
  const auto want_dtype = pool2d_count_dtype(kh, kw);
  TORCH_CHECK_TYPE(count.scalar_type() == want_dtype, "count must be ", want_dtype, " for the kernel (", kh, ", ", kw,
                   ") (uint8 up to 255 pixels per window, int32 above), got ", count.scalar_type());
  TORCH_CHECK_VALUE(count.device() == grad_y.device(),
                    "snnspx::spike_avg_pool2d_bwd needs all its tensors on one device, got grad_y on ",
                    grad_y.device(), ", count on ", count.device());
  return pool2d_shape(grad_y, H, W, kh, kw);
}

}  // namespace snnspx
