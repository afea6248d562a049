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
// barrier for the other; taking the next item keeps them within about one chunk
// of each other (encoder batch of lengths 33..64: one thread was idle 10% of
// the call). Items are taken in chunks of up to 1/16 of a thread's share: the
// counter's cache line moving between cores cost ~0.5 us per take (3% of an
// encoder call that took its 384 tiles one by one). The order of the items is
// the caller's: costliest first is best.
template <typename Worker>
void parallel_take(int64_t n, int64_t threads, const Worker& worker) {
  const int64_t workers = std::min(threads, n);
  if (workers <= 1) {
    int64_t i = 0;
    worker([&i] { return i++; });
    return;
  }
  const int64_t chunk = std::max<int64_t>(1, n / (16 * workers));
  std::atomic<int64_t> counter{0};
  at::parallel_for(0, workers, 1, [&](int64_t begin, int64_t end) {
    for (int64_t w = begin; w < end; ++w) {
      int64_t next_index = 0, chunk_end = 0;  // this worker's current chunk
      worker([&] {
        if (next_index == chunk_end) {
          next_index = counter.fetch_add(chunk, std::memory_order_relaxed);
          chunk_end = next_index + chunk;
        }
        return next_index++;
      });
    }
  });
}

}  // namespace fastxf
