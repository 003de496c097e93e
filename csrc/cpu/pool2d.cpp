// CPU kernels of the spike-count window pooling (snnspx/functional/pool2d.py): parallel over
// the [H, W] planes with at::parallel_for; a plane is walked one row of windows at a time,
// input rows in order, so every load and store is sequential.
//
// Forward: each window is summed in the accumulation type (float, double for double) in
// row-major order starting from 0, then divided by kh * kw and rounded once: the order of
// F.avg_pool2d's CPU kernel, so both give the same bits.
// Backward: one pass per row of windows counts each window's non-zero inputs (integers,
// exact), divides the window's gradient by its count in the accumulation type (0 for an
// empty window), rounds once, and writes the quotient to the window's pixels; rows and
// columns in no window get 0.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "../pool2d_glue.h"

namespace snnspx {
namespace {

// Elements per parallel task, at least: enough work to pay for a task.
constexpr int64_t kGrainElements = 16384;

int64_t plane_grain(const Pool2dShape& s) {
  return std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, s.H * s.W));
}

// Whether an input is non-zero, as (x != 0) in PyTorch: NaN counts, -0 does not. For the
// half types by their bits (everything but the sign), which skips the conversion.
inline bool nonzero(float v) { return v != 0.0f; }
inline bool nonzero(double v) { return v != 0.0; }
inline bool nonzero(c10::Half v) { return (v.x & 0x7fff) != 0; }
inline bool nonzero(c10::BFloat16 v) { return (v.x & 0x7fff) != 0; }

// KW > 0: the window width as a compile-time constant (the inner loops unroll and
// vectorise); KW == 0: any width, read from kw. The half types are converted a row at a time
// into `conv` first (a plain loop of conversions; inside the window loops they stay calls).
template <typename scalar_t, int KW>
void forward_plane(const scalar_t* __restrict__ x, scalar_t* __restrict__ y, const Pool2dShape& s,
                   at::opmath_type<scalar_t>* __restrict__ sum, at::opmath_type<scalar_t>* __restrict__ conv) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr bool kConvert = !std::is_same_v<scalar_t, acc_t>;
  const int64_t kw = KW > 0 ? KW : s.kw;
  const int64_t used_w = s.OW * kw;
  const acc_t div = static_cast<acc_t>(s.kh * kw);
  for (int64_t oh = 0; oh < s.OH; ++oh) {
    std::fill(sum, sum + s.OW, acc_t(0));
    for (int64_t i = 0; i < s.kh; ++i) {
      const scalar_t* __restrict__ in = x + (oh * s.kh + i) * s.W;
      const acc_t* __restrict__ row;
      if constexpr (kConvert) {
        for (int64_t w = 0; w < used_w; ++w) conv[w] = static_cast<acc_t>(in[w]);
        row = conv;
      } else {
        row = in;
      }
      for (int64_t ow = 0; ow < s.OW; ++ow) {
        acc_t a = sum[ow];
        for (int64_t j = 0; j < kw; ++j) a += row[ow * kw + j];
        sum[ow] = a;
      }
    }
    scalar_t* __restrict__ out = y + oh * s.OW;
    for (int64_t ow = 0; ow < s.OW; ++ow) out[ow] = static_cast<scalar_t>(sum[ow] / div);
  }
}

// The backward's window counts: in the input type for float and double, so that the loops
// vectorise (written as selects, which GCC vectorises, rather than bool-to-float conversions,
// which it did not); in int32 for the half types, whose conversions keep the loops scalar, and
// whose selects then stay free of branches. A float count is exact up to 2^24, as the PyTorch
// kernel's float32 count; int32 counts would overflow past 2^31 pixels in one window.
template <typename scalar_t>
using count_t = std::conditional_t<std::is_same_v<scalar_t, at::opmath_type<scalar_t>>, scalar_t, int32_t>;

// g / n in the accumulation type, 0 where n = 0 (whatever g is, NaN included), rounded once.
template <typename scalar_t, typename c_t>
inline scalar_t spike_share(scalar_t g, c_t n) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t q = static_cast<acc_t>(g) / static_cast<acc_t>(std::max(n, c_t(1)));
  return static_cast<scalar_t>(n > c_t(0) ? q : acc_t(0));
}

// 2 x 2 windows, the common case: one loop over a row of windows reads its two input rows,
// counts, divides and writes the two output rows.
template <typename scalar_t>
void backward_plane_2x2(const scalar_t* __restrict__ g, const scalar_t* __restrict__ x, scalar_t* __restrict__ gx,
                        const Pool2dShape& s) {
  using c_t = count_t<scalar_t>;
  const int64_t used_w = s.OW * 2;
  const c_t one(1), zero(0);
  for (int64_t oh = 0; oh < s.OH; ++oh) {
    const scalar_t* __restrict__ r0 = x + (2 * oh) * s.W;
    const scalar_t* __restrict__ r1 = r0 + s.W;
    scalar_t* __restrict__ o0 = gx + (2 * oh) * s.W;
    scalar_t* __restrict__ o1 = o0 + s.W;
    const scalar_t* __restrict__ grow = g + oh * s.OW;
    for (int64_t ow = 0; ow < s.OW; ++ow) {
      const c_t n = (nonzero(r0[2 * ow]) ? one : zero) + (nonzero(r0[2 * ow + 1]) ? one : zero) +
                    (nonzero(r1[2 * ow]) ? one : zero) + (nonzero(r1[2 * ow + 1]) ? one : zero);
      const scalar_t v = spike_share(grow[ow], n);
      o0[2 * ow] = v;
      o0[2 * ow + 1] = v;
      o1[2 * ow] = v;
      o1[2 * ow + 1] = v;
    }
    std::fill(o0 + used_w, o0 + s.W, scalar_t(0));
    std::fill(o1 + used_w, o1 + s.W, scalar_t(0));
  }
  std::fill(gx + s.OH * 2 * s.W, gx + s.H * s.W, scalar_t(0));
}

// Any window: per row of windows, one pass over its kh input rows adds up the counts, one
// divides, one writes the kh output rows. KW > 0: the window width as a compile-time constant
// (the inner loops unroll and vectorise); KW == 0: any width, read from s.kw.
template <typename scalar_t, int KW>
void backward_plane(const scalar_t* __restrict__ g, const scalar_t* __restrict__ x, scalar_t* __restrict__ gx,
                    const Pool2dShape& s, count_t<scalar_t>* __restrict__ count, scalar_t* __restrict__ q) {
  using c_t = count_t<scalar_t>;
  const c_t one(1), zero(0);
  const int64_t kw = KW > 0 ? KW : s.kw;
  const int64_t used_w = s.OW * kw;
  for (int64_t oh = 0; oh < s.OH; ++oh) {
    std::fill(count, count + s.OW, zero);
    for (int64_t i = 0; i < s.kh; ++i) {
      const scalar_t* __restrict__ row = x + (oh * s.kh + i) * s.W;
      for (int64_t ow = 0; ow < s.OW; ++ow) {
        c_t n = count[ow];
        for (int64_t j = 0; j < kw; ++j) n += nonzero(row[ow * kw + j]) ? one : zero;
        count[ow] = n;
      }
    }
    const scalar_t* __restrict__ grow = g + oh * s.OW;
    for (int64_t ow = 0; ow < s.OW; ++ow) q[ow] = spike_share(grow[ow], count[ow]);
    for (int64_t i = 0; i < s.kh; ++i) {
      scalar_t* __restrict__ out = gx + (oh * s.kh + i) * s.W;
      for (int64_t ow = 0; ow < s.OW; ++ow) {
        const scalar_t v = q[ow];
        for (int64_t j = 0; j < kw; ++j) out[ow * kw + j] = v;
      }
      std::fill(out + used_w, out + s.W, scalar_t(0));
    }
  }
  std::fill(gx + s.OH * s.kh * s.W, gx + s.H * s.W, scalar_t(0));
}

template <typename scalar_t, int KW>
void forward_planes(const scalar_t* x, scalar_t* y, const Pool2dShape& s) {
  using acc_t = at::opmath_type<scalar_t>;
  at::parallel_for(0, s.P, plane_grain(s), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> sum(static_cast<size_t>(s.OW));
    std::vector<acc_t> conv(std::is_same_v<scalar_t, acc_t> ? 0 : static_cast<size_t>(s.W));
    for (int64_t p = begin; p < end; ++p) {
      forward_plane<scalar_t, KW>(x + p * s.H * s.W, y + p * s.OH * s.OW, s, sum.data(), conv.data());
    }
  });
}

template <typename scalar_t, int KW>
void backward_planes(const scalar_t* g, const scalar_t* x, scalar_t* gx, const Pool2dShape& s) {
  at::parallel_for(0, s.P, plane_grain(s), [&](int64_t begin, int64_t end) {
    std::vector<count_t<scalar_t>> count(static_cast<size_t>(s.OW));
    std::vector<scalar_t> q(static_cast<size_t>(s.OW));
    for (int64_t p = begin; p < end; ++p) {
      const scalar_t* gp = g + p * s.OH * s.OW;
      const scalar_t* xp = x + p * s.H * s.W;
      scalar_t* out = gx + p * s.H * s.W;
      if (KW == 2 && s.kh == 2) {
        backward_plane_2x2(gp, xp, out, s);
      } else {
        backward_plane<scalar_t, KW>(gp, xp, out, s, count.data(), q.data());
      }
    }
  });
}

at::Tensor spike_avg_pool2d_cpu(const at::Tensor& x_in, int64_t kh, int64_t kw) {
  const Pool2dShape s = check_pool2d_input(x_in, kh, kw);
  const at::Tensor x = x_in.contiguous();
  at::Tensor y = at::empty(pool2d_out_sizes(x_in, s), x_in.options().memory_format(at::MemoryFormat::Contiguous));
  if (y.numel() == 0) return y;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "spike_avg_pool2d_cpu", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    switch (kw) {
      case 1: forward_planes<scalar_t, 1>(xp, yp, s); break;
      case 2: forward_planes<scalar_t, 2>(xp, yp, s); break;
      case 3: forward_planes<scalar_t, 3>(xp, yp, s); break;
      default: forward_planes<scalar_t, 0>(xp, yp, s);
    }
  });
  return y;
}

at::Tensor spike_avg_pool2d_bwd_cpu(const at::Tensor& grad_y, const at::Tensor& x_in, int64_t kh, int64_t kw) {
  const Pool2dShape s = check_pool2d_backward(grad_y, x_in, kh, kw);
  const at::Tensor x = x_in.contiguous();
  const at::Tensor g = grad_y.contiguous();
  at::Tensor gx = at::empty(x_in.sizes(), grad_y.options().memory_format(at::MemoryFormat::Contiguous));
  if (gx.numel() == 0) return gx;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "spike_avg_pool2d_bwd_cpu", [&] {
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* out = gx.mutable_data_ptr<scalar_t>();
    switch (kw) {
      case 1: backward_planes<scalar_t, 1>(gp, xp, out, s); break;
      case 2: backward_planes<scalar_t, 2>(gp, xp, out, s); break;
      case 3: backward_planes<scalar_t, 3>(gp, xp, out, s); break;
      default: backward_planes<scalar_t, 0>(gp, xp, out, s);
    }
  });
  return gx;
}

}  // namespace

TORCH_LIBRARY_IMPL(snnspx, CPU, m) {
  m.impl("spike_avg_pool2d", &spike_avg_pool2d_cpu);
  m.impl("spike_avg_pool2d_bwd", &spike_avg_pool2d_bwd_cpu);
}

}  // namespace snnspx
