// CPU kernels of the spike-count window pooling (snnspx/functional/pool2d.py): parallel over
// the [H, W] planes with at::parallel_for; a plane is walked one row of windows at a time,
// input rows in order, so every load and store is sequential.
//
// Forward: each window is summed in the accumulation type (float, double for double) in
// row-major order starting from 0, then divided by kh * kw and rounded once: the order of
// F.avg_pool2d's CPU kernel, so both give the same bits. The same pass counts each window's
// non-zero inputs (the values are loaded for the sum anyway) into the count tensor.
// Backward: reads no input, only the counts: per row of windows it divides each window's
// gradient by its count in the accumulation type (0 for an empty window), rounds once, and
// writes the quotient to the window's pixels; rows and columns in no window get 0.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <tuple>
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

// KW > 0: the window width as a compile-time constant (the inner loops unroll and
// vectorise); KW == 0: any width, read from kw. The half types are converted a row at a time
// into `conv` first (a plain loop of conversions; inside the window loops they stay calls).
// The counts add up per pixel column over the window's kh rows in `nz` (contiguous selects of
// 1 and 0 in the accumulation type, which vectorise; comparing the converted value keeps
// (v != 0) exact: NaN counts, -0 does not), then per window once per row of windows: exact,
// as every window has at most 2^24 pixels (checked), and stored as cnt_t (uint8 or int32).
template <typename scalar_t, typename cnt_t, int KW>
void forward_plane(const scalar_t* __restrict__ x, scalar_t* __restrict__ y, cnt_t* __restrict__ count,
                   const Pool2dShape& s, at::opmath_type<scalar_t>* __restrict__ sum,
                   at::opmath_type<scalar_t>* __restrict__ nz, at::opmath_type<scalar_t>* __restrict__ conv) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr bool kConvert = !std::is_same_v<scalar_t, acc_t>;
  const int64_t kw = KW > 0 ? KW : s.kw;
  const int64_t used_w = s.OW * kw;
  const acc_t div = static_cast<acc_t>(s.kh * kw);
  const acc_t one(1), zero(0);
  for (int64_t oh = 0; oh < s.OH; ++oh) {
    std::fill(sum, sum + s.OW, zero);
    std::fill(nz, nz + used_w, zero);
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
      for (int64_t w = 0; w < used_w; ++w) nz[w] += row[w] != zero ? one : zero;
    }
    scalar_t* __restrict__ out = y + oh * s.OW;
    cnt_t* __restrict__ cout = count + oh * s.OW;
    for (int64_t ow = 0; ow < s.OW; ++ow) {
      acc_t n = zero;
      for (int64_t j = 0; j < kw; ++j) n += nz[ow * kw + j];
      out[ow] = static_cast<scalar_t>(sum[ow] / div);
      cout[ow] = static_cast<cnt_t>(n);
    }
  }
}

// The backward's counts as its division loops read them, converted a row of windows at a time
// from the stored uint8/int32: in the input type for float and double, so that those loops
// vectorise (selects and divisions of one width); in int32 for the half types, whose
// conversions keep the loops scalar anyway. Exact: a count is at most 2^24.
template <typename scalar_t>
using div_count_t = std::conditional_t<std::is_same_v<scalar_t, at::opmath_type<scalar_t>>, scalar_t, int32_t>;

// g / n in the accumulation type, 0 where n = 0 (whatever g is, NaN included), rounded once.
template <typename scalar_t, typename c_t>
inline scalar_t spike_share(scalar_t g, c_t n) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t q = static_cast<acc_t>(g) / static_cast<acc_t>(std::max(n, c_t(1)));
  return static_cast<scalar_t>(n > c_t(0) ? q : acc_t(0));
}

// 2 x 2 windows, the common case: one loop over a row of windows divides and writes the two
// output rows.
template <typename scalar_t, typename cnt_t>
void backward_plane_2x2(const scalar_t* __restrict__ g, const cnt_t* __restrict__ count, scalar_t* __restrict__ gx,
                        const Pool2dShape& s, div_count_t<scalar_t>* __restrict__ n) {
  using c_t = div_count_t<scalar_t>;
  const int64_t used_w = s.OW * 2;
  for (int64_t oh = 0; oh < s.OH; ++oh) {
    scalar_t* __restrict__ o0 = gx + (2 * oh) * s.W;
    scalar_t* __restrict__ o1 = o0 + s.W;
    const scalar_t* __restrict__ grow = g + oh * s.OW;
    const cnt_t* __restrict__ crow = count + oh * s.OW;
    for (int64_t ow = 0; ow < s.OW; ++ow) n[ow] = static_cast<c_t>(crow[ow]);
    for (int64_t ow = 0; ow < s.OW; ++ow) {
      const scalar_t v = spike_share(grow[ow], n[ow]);
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

// Any window: per row of windows, one pass divides, one writes the kh output rows. KW > 0:
// the window width as a compile-time constant (the inner loops unroll and vectorise);
// KW == 0: any width, read from s.kw.
template <typename scalar_t, typename cnt_t, int KW>
void backward_plane(const scalar_t* __restrict__ g, const cnt_t* __restrict__ count, scalar_t* __restrict__ gx,
                    const Pool2dShape& s, div_count_t<scalar_t>* __restrict__ n, scalar_t* __restrict__ q) {
  using c_t = div_count_t<scalar_t>;
  const int64_t kw = KW > 0 ? KW : s.kw;
  const int64_t used_w = s.OW * kw;
  for (int64_t oh = 0; oh < s.OH; ++oh) {
    const scalar_t* __restrict__ grow = g + oh * s.OW;
    const cnt_t* __restrict__ crow = count + oh * s.OW;
    for (int64_t ow = 0; ow < s.OW; ++ow) n[ow] = static_cast<c_t>(crow[ow]);
    for (int64_t ow = 0; ow < s.OW; ++ow) q[ow] = spike_share(grow[ow], n[ow]);
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

template <typename scalar_t, typename cnt_t, int KW>
void forward_planes(const scalar_t* x, scalar_t* y, cnt_t* count, const Pool2dShape& s) {
  using acc_t = at::opmath_type<scalar_t>;
  at::parallel_for(0, s.P, plane_grain(s), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> sum(static_cast<size_t>(s.OW)), nz(static_cast<size_t>(s.OW * s.kw));
    std::vector<acc_t> conv(std::is_same_v<scalar_t, acc_t> ? 0 : static_cast<size_t>(s.W));
    for (int64_t p = begin; p < end; ++p) {
      forward_plane<scalar_t, cnt_t, KW>(x + p * s.H * s.W, y + p * s.OH * s.OW, count + p * s.OH * s.OW, s,
                                         sum.data(), nz.data(), conv.data());
    }
  });
}

template <typename scalar_t, typename cnt_t, int KW>
void backward_planes(const scalar_t* g, const cnt_t* count, scalar_t* gx, const Pool2dShape& s) {
  at::parallel_for(0, s.P, plane_grain(s), [&](int64_t begin, int64_t end) {
    std::vector<div_count_t<scalar_t>> n(static_cast<size_t>(s.OW));
    std::vector<scalar_t> q(static_cast<size_t>(s.OW));
    for (int64_t p = begin; p < end; ++p) {
      const scalar_t* gp = g + p * s.OH * s.OW;
      const cnt_t* cp = count + p * s.OH * s.OW;
      scalar_t* out = gx + p * s.H * s.W;
      if (KW == 2 && s.kh == 2) {
        backward_plane_2x2(gp, cp, out, s, n.data());
      } else {
        backward_plane<scalar_t, cnt_t, KW>(gp, cp, out, s, n.data(), q.data());
      }
    }
  });
}

// Calls f with a tag of the count type and the window width as a compile-time constant where
// it is 1, 2 or 3 (0: any width). Windows of more than 255 pixels (int32 counts) are too big
// for the constant widths to matter: they take the generic loops only.
template <typename F>
void with_count_and_width(int64_t kh, int64_t kw, F&& f) {
  if (pool2d_count_dtype(kh, kw) == at::kInt) {
    f(int32_t{}, std::integral_constant<int, 0>{});
    return;
  }
  switch (kw) {
    case 1: f(uint8_t{}, std::integral_constant<int, 1>{}); break;
    case 2: f(uint8_t{}, std::integral_constant<int, 2>{}); break;
    case 3: f(uint8_t{}, std::integral_constant<int, 3>{}); break;
    default: f(uint8_t{}, std::integral_constant<int, 0>{});
  }
}

std::tuple<at::Tensor, at::Tensor> spike_avg_pool2d_cpu(const at::Tensor& x_in, int64_t kh, int64_t kw) {
  const Pool2dShape s = check_pool2d_input(x_in, kh, kw);
  const at::Tensor x = x_in.contiguous();
  const auto out_sizes = pool2d_sizes(x_in, s.OH, s.OW);
  const auto opts = x_in.options().memory_format(at::MemoryFormat::Contiguous);
  at::Tensor y = at::empty(out_sizes, opts);
  at::Tensor count = at::empty(out_sizes, opts.dtype(pool2d_count_dtype(kh, kw)));
  if (y.numel() == 0) return {y, count};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "spike_avg_pool2d_cpu", [&] {
    with_count_and_width(kh, kw, [&](auto cnt_tag, auto width) {
      using cnt_t = decltype(cnt_tag);
      forward_planes<scalar_t, cnt_t, decltype(width)::value>(
          x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(), count.mutable_data_ptr<cnt_t>(), s);
    });
  });
  return {y, count};
}

at::Tensor spike_avg_pool2d_bwd_cpu(const at::Tensor& grad_y, const at::Tensor& count_in, int64_t kh, int64_t kw,
                                    int64_t H, int64_t W) {
  const Pool2dShape s = check_pool2d_backward(grad_y, count_in, kh, kw, H, W);
  const at::Tensor g = grad_y.contiguous();
  const at::Tensor count = count_in.contiguous();
  at::Tensor gx = at::empty(pool2d_sizes(grad_y, H, W), grad_y.options().memory_format(at::MemoryFormat::Contiguous));
  if (gx.numel() == 0) return gx;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "spike_avg_pool2d_bwd_cpu", [&] {
    with_count_and_width(kh, kw, [&](auto cnt_tag, auto width) {
      using cnt_t = decltype(cnt_tag);
      backward_planes<scalar_t, cnt_t, decltype(width)::value>(
          g.const_data_ptr<scalar_t>(), count.const_data_ptr<cnt_t>(), gx.mutable_data_ptr<scalar_t>(), s);
    });
  });
  return gx;
}

}  // namespace

TORCH_LIBRARY_IMPL(snnspx, CPU, m) {
  m.impl("spike_avg_pool2d", &spike_avg_pool2d_cpu);
  m.impl("spike_avg_pool2d_bwd", &spike_avg_pool2d_bwd_cpu);
}

}  // namespace snnspx
