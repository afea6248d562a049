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

// fastxf::attention_varlen, checked by its entry (attention_varlen_cuda.cu):
// packed q (total_q, Hq, D), k / v (total_k, Hkv, D) with contiguous last dims,
// int32 (B + 1,) offsets on q's device (values unchecked: the kernel clamps them),
// out (total_q, Hq, D) contiguous.
struct VarlenProblem {
  at::Tensor q, k, v, cu_seqlens_q, cu_seqlens_k, out;
  int64_t max_seqlen_q = 0;
  bool causal = false;
  double scale = 1.0;
  int64_t window = 0;
  double softcap = 0.0;
};

// The prefill kernel's varlen variant: one CTA per (query tile, head, sequence).
void prefill_attention_varlen_cuda(const VarlenProblem& p);

}  // namespace fastxf
