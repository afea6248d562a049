// The packed half-precision path of the CPU attention kernel (see half_tiles.cpp).
#pragma once

#include "attention/attention.h"

namespace fastxf {

// Runs an fp16 / bf16 attention problem with K / V packed once per call into the
// layout of oneDNN's AMX micro-kernels (torch's cpublas::brgemm) and returns
// true; or does nothing and returns false when that path does not apply (no AMX
// for the dtype, torch without the cpublas symbols, odd head dim, decode-sized
// problems, FASTXF_CPU_ATTENTION_BRGEMM=0), and the caller runs its generic tiles.
bool attention_cpu_packed_half(const AttentionProblem& p);

}  // namespace fastxf
