// A per-process count of compiled-kernel launches, read by the tests to prove
// that a compiled kernel ran (and not a Python fallback).
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>

namespace snnspx {

inline std::map<std::string, std::atomic<int64_t>>& kernel_counter_map() {
  static std::map<std::string, std::atomic<int64_t>> counts;
  return counts;
}

inline std::mutex& kernel_counter_mutex() {
  static std::mutex mu;
  return mu;
}

inline void count_kernel(const std::string& name) {
  std::lock_guard<std::mutex> lock(kernel_counter_mutex());
  kernel_counter_map()[name] += 1;
}

inline int64_t kernel_calls(const std::string& name) {
  std::lock_guard<std::mutex> lock(kernel_counter_mutex());
  auto it = kernel_counter_map().find(name);
  return it == kernel_counter_map().end() ? 0 : it->second.load();
}

}  // namespace snnspx
