// The two CUDA attention paths behind fastxf::attention. Both launch on the
// current CUDA stream, never synchronise with the host, and write p.out.
#pragma once

#include "attention/attention.h"

namespace fastxf {

// Decode / short-query path (csrc/attention/decode*): split-KV over long caches,
// all query heads of a KV group served from one read of K/V. Returns false when
// it does not handle this problem (then the prefill path runs).
bool decode_attention_cuda(const AttentionProblem& p);

// Prefill path (csrc/attention/prefill*): FlashAttention-2-style forward.
void prefill_attention_cuda(const AttentionProblem& p);

}  // namespace fastxf
