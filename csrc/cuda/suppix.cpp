// CUDA registrations of the superpixel ops: checks and allocation come from
// ../suppix_glue.h (shared with the CPU), the kernel choice from strategy.h, kernels
// from pool_*.cu, gather.cu and count.cu.
//
// The "sorted" pooling needs each label map's pixels grouped by superpixel. They are
// built here with deterministic ATen ops, once per call and per label map (not per
// step or channel): a stable sort of the labels gives `order` (pixel indices,
// ascending within each superpixel) and a searchsorted of 0..K in the sorted
// labels gives `offsets`. Negative labels sort before offsets[0] and labels >= K
// (possible only without the range check) after offsets[K]: both are skipped.
//
// The no-sort strategies take the counts (and the largest label, for the range check)
// from one count kernel. The range check never syncs the stream (DeviceLabelCheck in
// glue.h): the host waits for the largest label alone, after the kernels are queued.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <limits>
#include <optional>

#include "../suppix_glue.h"
#include "glue.h"
#include "strategy.h"
#include "suppix_launch.h"

namespace snnspx {
namespace {

cuda::SupPixShape launch_shape(const SupPixDims& d) {
  // Grid sizes are 32-bit: at most ~2^31 blocks of 1024 pixels.
  TORCH_CHECK(d.planes() * std::max<int64_t>(d.P, 1) < (int64_t(1) << 40) && d.planes() * d.K < (int64_t(1) << 40),
              "superpixel pooling on CUDA takes at most 2^40 elements per tensor");
  // Each kernel's grid has at most max(T * B * C, L * Bl) * ceil(P / 1024) blocks (the gather
  // has exactly T * B * C of them per 1024 pixels); a grid's x size is below 2^31.
  const int64_t tiles = std::max<int64_t>(1, (d.P + 1023) / 1024);
  TORCH_CHECK(std::max(d.planes(), d.L * d.Bl) * tiles <= std::numeric_limits<int32_t>::max(),
              "superpixel pooling on CUDA takes T * B * C * ceil(H * W / 1024) below 2^31 (the grid size), got T * B * C = ",
              d.planes(), " and H * W = ", d.P);
  return cuda::SupPixShape{d.T, d.B, d.C, d.P, d.K, d.L, d.Bl};
}

struct Segments {
  at::Tensor order;    // int32 [L, Bl, P]
  at::Tensor offsets;  // int32 [L, Bl, K + 1]
};

Segments build_segments(const at::Tensor& labels, int64_t K) {
  Segments s;
  const int64_t L = labels.size(0), Bl = labels.size(1), P = labels.size(2);
  if (P == 0) {
    s.order = at::empty({L, Bl, 0}, labels.options().dtype(at::kInt));
    s.offsets = at::zeros({L, Bl, K + 1}, labels.options().dtype(at::kInt));
    return s;
  }
  auto sorted = at::sort(labels, /*stable=*/std::optional<bool>(true), /*dim=*/-1, /*descending=*/false);
  s.order = std::get<1>(sorted).to(at::kInt);
  const at::Tensor bounds = at::arange(K + 1, labels.options()).expand({L, Bl, K + 1}).contiguous();
  s.offsets = at::searchsorted(std::get<0>(sorted), bounds, /*out_int32=*/true, /*right=*/false);
  return s;
}

at::Tensor counts_from_offsets(const at::Tensor& offsets, int64_t K) {
  return (offsets.narrow(2, 1, K) - offsets.narrow(2, 0, K)).contiguous();
}

// The no-sort strategies ("nosort", "nosort_quad", "max_key"), which apply to `a`.
// `a` was prepared without the range check, which runs here when check_labels.
std::tuple<at::Tensor, at::Tensor> suppix_pool_nosort_cuda(const SupPixPoolArgs& a, cuda::PoolStrategy strategy,
                                                           bool check_labels) {
  const auto& d = a.d;
  const auto dtype = cuda::launch_dtype(a.x.scalar_type());
  TORCH_INTERNAL_ASSERT(d.K * int64_t(sizeof(int32_t)) <= 48 * 1024);  // the count kernel's histogram
  const auto shape = launch_shape(d);
  auto [y, aux] = allocate_suppix_pool(a);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const bool labels64 = a.labels.scalar_type() == at::kLong;
  at::Tensor counts;  // int32 [L, Bl, K]: sum/avg's aux itself, avg_spike's divisor
  if (a.mode == PoolMode::Sum || a.mode == PoolMode::Avg) {
    counts = aux.zero_();
  } else if (a.mode == PoolMode::AvgSpike) {
    counts = at::zeros({d.L, d.Bl, d.K}, aux.options());
  }
  at::Tensor top;
  if (check_labels) top = at::full({1}, std::numeric_limits<int64_t>::min(), a.labels.options().dtype(at::kLong));
  if (counts.defined() || check_labels) {
    cuda::suppix_count(a.labels.data_ptr(), labels64, counts.defined() ? counts.data_ptr<int32_t>() : nullptr,
                       check_labels ? top.data_ptr<int64_t>() : nullptr, d.L * d.Bl, d.P, d.K, stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  cuda::DeviceLabelCheck check(d.K);
  if (check_labels) check.start(top);
  const bool aux_out = a.mode == PoolMode::Max || a.mode == PoolMode::AvgSpike;
  const int32_t* cp = counts.defined() ? counts.data_ptr<int32_t>() : nullptr;
  int32_t* ap = aux_out ? aux.data_ptr<int32_t>() : nullptr;
  switch (strategy) {
    case cuda::PoolStrategy::NoSortQuad:
      cuda::suppix_pool_nosort_quad(dtype, a.mode, a.x.data_ptr(), a.labels.data_ptr(), labels64, cp, y.data_ptr(), ap,
                                    shape, stream);
      break;
    case cuda::PoolStrategy::MaxKey:
      cuda::suppix_pool_max_key(dtype, a.x.data_ptr(), a.labels.data_ptr(), labels64, y.data_ptr(), ap, shape, stream);
      break;
    default:
      cuda::suppix_pool_nosort(dtype, a.mode, a.x.data_ptr(), a.labels.data_ptr(), labels64, cp, y.data_ptr(), ap,
                               shape, stream);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  // Labels >= K were ignored by the kernels (never out of bounds); now the verdict.
  check.verify();
  return {y, aux};
}

// The "sorted" strategy, for prepared arguments (range already checked where asked).
std::tuple<at::Tensor, at::Tensor> suppix_pool_sorted_cuda(const SupPixPoolArgs& a) {
  auto [y, aux] = allocate_suppix_pool(a);
  const auto shape = launch_shape(a.d);
  Segments seg = build_segments(a.labels, a.d.K);
  const bool aux_out = a.mode == PoolMode::Max || a.mode == PoolMode::AvgSpike;
  cuda::suppix_pool_sorted(cuda::launch_dtype(a.x.scalar_type()), a.mode, a.x.data_ptr(),
                           seg.order.data_ptr<int32_t>(), seg.offsets.data_ptr<int32_t>(), y.data_ptr(),
                           aux_out ? aux.data_ptr<int32_t>() : nullptr, shape, c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (!aux_out) aux.copy_(counts_from_offsets(seg.offsets, a.d.K));
  return {y, aux};
}

std::tuple<at::Tensor, at::Tensor> suppix_pool_cuda(const at::Tensor& x, const at::Tensor& labels,
                                                    int64_t num_superpixels, c10::string_view mode,
                                                    bool check_labels, c10::string_view strategy) {
  cuda::check_cuda_tensor(x, "x");
  c10::cuda::CUDAGuard guard(x.device());
  auto a = prepare_suppix_pool(x, labels, num_superpixels, mode, /*check_labels=*/false);
  const auto dtype = cuda::launch_dtype(a.x.scalar_type());
  const cuda::SupPixShape s{a.d.T, a.d.B, a.d.C, a.d.P, a.d.K, a.d.L, a.d.Bl};
  const auto chosen = resolve_strategy("suppix_pool", strategy, cuda::kPoolStrategies,
                                       cuda::suppix_pool_strategy(dtype, a.mode, s),
                                       [&](cuda::PoolStrategy p) { return cuda::pool_rejects(p, dtype, a.mode, s); });
  const bool check = check_labels && cuda::can_read_back();
  if (chosen != cuda::PoolStrategy::Sorted) return suppix_pool_nosort_cuda(a, chosen, check);
  cuda::DeviceLabelCheck deferred(a.labels, a.d.K, check);
  auto out = suppix_pool_sorted_cuda(a);
  deferred.verify();
  return out;
}

// The gather kernel of `op` for prepared arguments, before the output exists (it will
// be a fresh, aligned tensor).
cuda::GatherKernel gather_strategy(const char* op, const SupPixGatherArgs& a, c10::string_view strategy) {
  const auto shape = launch_shape(a.d);
  const bool labels_aligned = cuda::quad_aligned_bytes(a.labels.data_ptr(), a.labels.element_size());
  return resolve_strategy(op, strategy, cuda::kGatherStrategies,
                          cuda::suppix_gather_strategy(shape, labels_aligned, /*out_aligned=*/true),
                          [&](cuda::GatherKernel k) {
                            return cuda::gather_rejects(k, shape, labels_aligned, /*out_aligned=*/true);
                          });
}

void run_gather_cuda(SupPixGatherArgs& a, cuda::GatherKernel kernel) {
  allocate_suppix_gather(a);
  const auto shape = launch_shape(a.d);
  TORCH_INTERNAL_ASSERT(kernel == cuda::GatherKernel::OnePixel ||
                        cuda::quad_aligned_bytes(a.out.data_ptr(), a.out.element_size()));
  cuda::suppix_gather(cuda::launch_dtype(a.src.scalar_type()), a.mode, a.src.data_ptr(), a.labels.data_ptr(),
                      a.labels.scalar_type() == at::kLong, a.aux.defined() ? a.aux.data_ptr<int32_t>() : nullptr,
                      a.out.data_ptr(), shape, kernel, c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor suppix_pool_backward_cuda(const at::Tensor& grad_y, const at::Tensor& labels, const at::Tensor& aux,
                                     c10::string_view mode, c10::string_view strategy) {
  cuda::check_cuda_tensor(grad_y, "grad_y");
  c10::cuda::CUDAGuard guard(grad_y.device());
  auto a = prepare_suppix_gather(grad_y, "grad_y", labels, &aux, parse_pool_mode(mode, /*allow_avg_spike=*/true));
  run_gather_cuda(a, gather_strategy("suppix_pool_backward", a, strategy));
  return a.out;
}

at::Tensor suppix_unpool_cuda(const at::Tensor& y, const at::Tensor& labels, bool check_labels,
                              c10::string_view strategy) {
  cuda::check_cuda_tensor(y, "y");
  c10::cuda::CUDAGuard guard(y.device());
  auto a = prepare_suppix_gather(y, "y", labels, nullptr, PoolMode::Sum);
  const auto kernel = gather_strategy("suppix_unpool", a, strategy);
  cuda::DeviceLabelCheck check(a.labels, a.d.K, check_labels && cuda::can_read_back());
  run_gather_cuda(a, kernel);  // writes 0 for labels >= K
  check.verify();
  return a.out;
}

at::Tensor suppix_counts_cuda(const at::Tensor& labels, int64_t num_superpixels) {
  cuda::check_cuda_tensor(labels, "labels");
  c10::cuda::CUDAGuard guard(labels.device());
  check_num_superpixels(num_superpixels);
  check_suppix_labels(labels, labels, "labels", labels.dim() == 3 ? labels.size(0) : 1,
                      labels.dim() == 3 ? labels.size(1) : 1, -1);
  Segments seg = build_segments(labels.contiguous(), num_superpixels);
  return counts_from_offsets(seg.offsets, num_superpixels);
}

}  // namespace

TORCH_LIBRARY_IMPL(snnspx, CUDA, m) {
  m.impl("suppix_pool", &suppix_pool_cuda);
  m.impl("suppix_pool_backward", &suppix_pool_backward_cuda);
  m.impl("suppix_unpool", &suppix_unpool_cuda);
  m.impl("suppix_counts", &suppix_counts_cuda);
}

}  // namespace snnspx
