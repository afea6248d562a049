// Sharing the work items of a CPU kernel out over torch's threads.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

namespace fastxf {

// Runs worker(next) once on each of up to `threads` threads of torch's pool (on
// the calling thread alone when that is one, or inside another parallel region),
// where next() hands out 0, 1, 2, ... from a shared counter, each index once: a
// worker loops `for (int64_t i; (i = next()) < n;)` and may set itself up before.
// Why not at::parallel_for's fixed contiguous ranges: items cost different
// amounts (padding, causal rows, sequence lengths) and the threads of a shared
// machine do not run at one speed, so with fixed halves one thread waits at the
// barrier for the other; taking the next item keeps them within about one item
// of each other (encoder batch of lengths 33..64: one thread was idle 10% of
// the call). The order of the items is the caller's: costliest first is best.
template <typename Worker>
void parallel_take(int64_t n, int64_t threads, const Worker& worker) {
  std::atomic<int64_t> counter{0};
  auto next = [&counter] { return counter.fetch_add(1, std::memory_order_relaxed); };
  const int64_t workers = std::min(threads, n);
  if (workers <= 1) {
    worker(next);
    return;
  }
  at::parallel_for(0, workers, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) worker(next);
  });
}

}  // namespace fastxf
