// CPU kernel of snnspx::_strategy: what each op's strategy function (strategy.h) picks.
#include <torch/library.h>

#include <string>

#include "../suppix_glue.h"
#include "strategy.h"

namespace snnspx {
namespace {

std::string strategy_cpu(c10::string_view op, const at::Tensor& x, const at::Tensor& labels, int64_t K,
                         c10::string_view mode) {
  TORCH_CHECK(x.dim() == 4, "_strategy: x must be the op's first tensor in its canonical 4-d layout, got shape ",
              x.sizes());
  (void)labels;
  if (op == "suppix_pool") {
    return cpu::kPoolStrategies[static_cast<int>(cpu::suppix_pool_strategy(x.scalar_type(), x.size(2), x.size(3)))];
  }
  if (op == "suppix_pool_backward" || op == "suppix_unpool") {
    const PoolMode m = op == "suppix_unpool" ? PoolMode::Sum : parse_pool_mode(mode, /*allow_avg_spike=*/true);
    return cpu::kGatherStrategies[static_cast<int>(cpu::suppix_gather_strategy(x.scalar_type(), m, K))];
  }
  if (op == "srm_suppix_pool" || op == "srm_suppix_pool_fwd" || op == "srm_suppix_pool_bwd") {
    return cpu::kFusedStrategies[static_cast<int>(cpu::srm_suppix_pool_strategy())];
  }
  TORCH_CHECK(false, "_strategy: op must be suppix_pool, suppix_pool_backward, suppix_unpool, srm_suppix_pool, "
              "srm_suppix_pool_fwd or srm_suppix_pool_bwd, got '", std::string(op), "'");
}

}  // namespace

TORCH_LIBRARY_IMPL(snnspx, CPU, m) { m.impl("_strategy", &strategy_cpu); }

}  // namespace snnspx
