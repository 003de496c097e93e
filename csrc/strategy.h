// The strategy argument of the superpixel and fused ops. Each op has one function per
// device that picks its kernel from the inputs (shape, dtype, alignment) and a list of
// named strategies; "" runs that function's choice, a name forces that strategy where it
// applies to the inputs. Host-only (ATen).
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <cstddef>
#include <string>

namespace snnspx {

// The names of the strategies of an op, indexed by the value of its strategy enum.
template <size_t N>
using StrategyNames = std::array<const char*, N>;

template <size_t N>
std::string join_names(const StrategyNames<N>& names) {
  std::string out;
  for (size_t i = 0; i < N; ++i) out += (i ? ", '" : "'") + std::string(names[i]) + "'";
  return out;
}

// The strategy that `op` runs: `chosen` when `requested` is "", else the strategy named
// `requested`, which must be one of `names` and apply to the inputs: rejects(s) returns
// nullptr when strategy s applies, else why not.
template <typename Strategy, size_t N, typename Rejects>
Strategy resolve_strategy(const char* op, c10::string_view requested, const StrategyNames<N>& names,
                          Strategy chosen, Rejects&& rejects) {
  if (requested.empty()) return chosen;
  for (size_t i = 0; i < N; ++i) {
    if (requested != names[i]) continue;
    const auto s = static_cast<Strategy>(i);
    const char* why = rejects(s);
    TORCH_CHECK(why == nullptr, op, ": strategy '", std::string(requested), "' does not apply to these inputs (",
                why == nullptr ? "" : why, "); this device's strategies are ", join_names(names),
                ", or '' for the default");
    return s;
  }
  TORCH_CHECK(false, op, ": unknown strategy '", std::string(requested), "'; this device's strategies are ",
              join_names(names), ", or '' for the default");
}

}  // namespace snnspx
