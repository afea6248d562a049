// Argument checking and problem description shared by the CPU and CUDA
// implementations of fastxf::attention.
#pragma once

#include <ATen/ATen.h>
#include <optional>

#include "common.h"

namespace fastxf {

// Everything an attention kernel needs. Strides are in elements; the last dim
// of q, k, v is contiguous.
struct AttentionProblem {
  int64_t batch = 0, q_heads = 0, kv_heads = 0, q_len = 0, k_len = 0, head_dim = 0;
  at::Tensor q, k, v;    // (B, Hq, Sq, D), (B, Hkv, Sk, D), (B, Hkv, Sk, D) views
  at::Tensor key_mask;   // (B, Sk) bool contiguous, or undefined (every key valid)
  at::Tensor q_offset;   // (B,) int32 contiguous, or undefined (Sk - Sq for every sequence)
  at::Tensor out;        // (B, Sq, Hq, D) contiguous, q's dtype
  at::Tensor out_view;   // out.transpose(1, 2): what the op returns
  float scale = 1.f;
  bool causal = false;
  int64_t window = 0;    // > 0: key j visible from position p iff j > p - window
  float softcap = 0.f;   // > 0: scores -> softcap * tanh(scores / softcap)
  at::Tensor alibi;      // (B, Hq) fp32 contiguous ALiBi slopes, or undefined (no bias)
};

// Validates the arguments (TORCH_CHECKs that name the argument) and allocates
// the output.
AttentionProblem make_attention_problem(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                        const std::optional<at::Tensor>& key_padding_mask,
                                        const std::optional<at::Tensor>& q_offset, bool causal,
                                        std::optional<double> scale, int64_t window, double softcap,
                                        const std::optional<at::Tensor>& alibi_slopes);

}  // namespace fastxf
