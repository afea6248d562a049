// Per-thread scratch of the CPU attention kernels starts on cache lines.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace fastxf {

// The first n elements of v from a 64-byte boundary (v grown as needed, never
// shrunk). malloc aligns to 16 bytes only; vector loads and the BLAS / AMX
// micro-kernels reading operands 16 bytes off a cache line touch two lines per
// load: measured 5-15% slower on small tiles (benchmarks/bench_attention_cpu.py).
template <typename E>
E* aligned64(std::vector<E>& v, size_t n) {
  static_assert(64 % sizeof(E) == 0, "element size must divide the cache line");
  constexpr size_t kPad = 64 / sizeof(E);
  if (v.size() < n + kPad) v.resize(n + kPad);
  return reinterpret_cast<E*>((reinterpret_cast<uintptr_t>(v.data()) + 63) / 64 * 64);
}

}  // namespace fastxf
