// Which instruction set the CPU kernels' hot loops run with.
//
// The extension is compiled for baseline x86-64 so that it loads on any CPU;
// the hot loops (attention tiles, norm rows) are compiled three times instead,
// for baseline x86-64, AVX2 + FMA and AVX-512 (see cpu_isa_instances.inc), and
// cpu_isa() picks the best version for the running CPU.
#pragma once

#include <c10/util/Exception.h>

#include <cstdlib>
#include <string_view>

namespace fastxf {

enum class CpuIsa { kBase, kAvx2, kAvx512 };

// The best version this CPU runs; the environment variable `force_env`
// (=base|avx2|avx512, for the tests) forces one, an error if the CPU lacks it.
inline CpuIsa cpu_isa(const char* force_env) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  static const bool has_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                               __builtin_cpu_supports("f16c");
  static const bool has_avx512 = has_avx2 && __builtin_cpu_supports("avx512f") &&
                                 __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
                                 __builtin_cpu_supports("avx512dq");
  const char* env = std::getenv(force_env);
  const std::string_view want = env ? env : "";
  if (want == "base") return CpuIsa::kBase;
  TORCH_CHECK(want != "avx512" || has_avx512, force_env, "=avx512 but this CPU lacks AVX-512");
  TORCH_CHECK(want != "avx2" || has_avx2, force_env, "=avx2 but this CPU lacks AVX2 / FMA");
  if (want == "avx2") return CpuIsa::kAvx2;
  if (has_avx512) return CpuIsa::kAvx512;
  if (has_avx2) return CpuIsa::kAvx2;
#else
  (void)force_env;
#endif
  return CpuIsa::kBase;
}

}  // namespace fastxf
