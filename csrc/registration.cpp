// The one place where fastxf's op schemas are declared. Each backend adds its
// implementations with TORCH_LIBRARY_IMPL(fastxf, CPU|CUDA, m) next to its
// kernels (csrc/<op>/<op>_cpu.cpp, csrc/<op>/<op>_cuda.cu); the autograd
// kernels are in csrc/autograd.cpp; the fake (meta) implementations, and the
// implementations of the *_backward ops, live in python/fastxf/ops/. The schema strings are in
// schemas.h, which the CPU emulator module (fastxf._emu) reuses for its
// fastxf_emu::* copies of the ops.
#include <torch/library.h>

#include "schemas.h"

TORCH_LIBRARY(fastxf, m) {
  // LayerNorm over the last dim with fp32 statistics. With `residual`, first
  // computes s = x + residual (rounded to x's dtype, as an unfused pre-norm block
  // would) and normalises s; the second output is s. Without it, the second
  // output is an empty tensor. weight / bias may be None; out_dtype defaults to
  // x's dtype.
  m.def(FASTXF_SCHEMA_LAYER_NORM);

  // RMSNorm over the last dim, same residual contract as layer_norm.
  // unit_offset=True scales by (1 + weight) as Gemma does.
  m.def(FASTXF_SCHEMA_RMS_NORM);

  // Exact softmax attention. q (B, Hq, Sq, D), k / v (B, Hkv, Sk, D), Hq % Hkv == 0,
  // any strides with a contiguous last dim. Query row i sits at key position
  // p = q_offset[b] + i (default q_offset = Sk - Sq: bottom-right aligned, which
  // serves prefill, chunked prefill and decode over a cache). causal: key j is
  // visible iff j <= p. window > 0: additionally j > p - window (sliding window).
  // key_padding_mask (B, Sk) bool, True = attend. softcap > 0: scores become
  // softcap * tanh(scores / softcap) after scaling. alibi_slopes (Hq,) or (B, Hq)
  // fp32: the ALiBi bias -slope[b, h] * |p - j| is then added to the scores
  // (after scale and softcap, as FlashAttention-2 does). Rows that see no key are 0.
  // The output is (B, Hq, Sq, D) laid out as a contiguous (B, Sq, Hq, D) buffer,
  // so `.transpose(1, 2)` gives Hugging Face's layout without a copy.
  m.def(FASTXF_SCHEMA_ATTENTION);

  // Attention over packed variable-length sequences (FlashAttention-2's
  // flash_attn_varlen_func convention). q (total_q, Hq, D), k / v (total_k, Hkv, D);
  // cu_seqlens_q / cu_seqlens_k int32 (batch + 1,) offsets starting at 0, ending at
  // total_q / total_k: sequence b is rows [cu[b], cu[b+1]) and attends only to its
  // own keys. max_seqlen_* bound every sequence's length. causal is bottom-right
  // aligned per sequence; window, softcap and scale as in attention. Empty
  // sequences own no rows; queries of a sequence without keys are 0.
  // The output has q's shape (total_q, Hq, D), contiguous: no data-dependent size.
  m.def(FASTXF_SCHEMA_ATTENTION_VARLEN);

  // The gradients of the four ops above, which their autograd kernels
  // (csrc/autograd.cpp) call. Each returns the gradients of the inputs its
  // output_mask selects (in the order of the forward op's differentiable
  // inputs: x, weight, bias, residual for the norms; q, k, v for attention),
  // the others undefined (None). Implemented in Python (python/fastxf/ops/) for
  // every device by recomputing the forward with fastxf.ops.reference and
  // differentiating it; their fake kernels let AOTAutograd trace a backward.
  m.def(FASTXF_SCHEMA_LAYER_NORM_BACKWARD);
  m.def(FASTXF_SCHEMA_RMS_NORM_BACKWARD);
  m.def(FASTXF_SCHEMA_ATTENTION_BACKWARD);
  m.def(FASTXF_SCHEMA_ATTENTION_VARLEN_BACKWARD);
}
