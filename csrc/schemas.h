// The schema strings of fastxf's ops: declared under TORCH_LIBRARY(fastxf) in
// registration.cpp and, with the same signatures, under
// TORCH_LIBRARY(fastxf_emu) by the CPU emulator module (csrc/emulated_ops.h).
// Each op's contract is documented next to its m.def in registration.cpp.
// The *_backward ops are fastxf-only (no emulated copies): their
// implementation is Python (python/fastxf/ops/), called by the C++ autograd
// kernels in csrc/autograd.cpp.
#pragma once

#define FASTXF_SCHEMA_LAYER_NORM                                                   \
  "layer_norm(Tensor x, Tensor? weight, Tensor? bias, float eps, Tensor? residual=None, " \
  "ScalarType? out_dtype=None) -> (Tensor, Tensor)"

#define FASTXF_SCHEMA_RMS_NORM                                                                \
  "rms_norm(Tensor x, Tensor? weight, float eps, Tensor? residual=None, bool unit_offset=False, " \
  "ScalarType? out_dtype=None) -> (Tensor, Tensor)"

#define FASTXF_SCHEMA_ATTENTION                                                                      \
  "attention(Tensor q, Tensor k, Tensor v, Tensor? key_padding_mask=None, Tensor? q_offset=None, " \
  "bool causal=False, float? scale=None, int window=0, float softcap=0.0, Tensor? alibi_slopes=None) -> Tensor"

#define FASTXF_SCHEMA_ATTENTION_VARLEN                                                                            \
  "attention_varlen(Tensor q, Tensor k, Tensor v, Tensor cu_seqlens_q, Tensor cu_seqlens_k, int max_seqlen_q, " \
  "int max_seqlen_k, bool causal=False, float? scale=None, int window=0, float softcap=0.0) -> Tensor"

// Backward ops. output_mask says which input gradients to compute; the others
// come back undefined (None in Python). The norms' grad_out / grad_residual are
// optional: undefined when that forward output was not used.
#define FASTXF_SCHEMA_LAYER_NORM_BACKWARD                                                           \
  "layer_norm_backward(Tensor? grad_out, Tensor? grad_residual, Tensor x, Tensor? weight, Tensor? bias, " \
  "float eps, Tensor? residual, ScalarType? out_dtype, bool[4] output_mask) -> (Tensor, Tensor, Tensor, Tensor)"

#define FASTXF_SCHEMA_RMS_NORM_BACKWARD                                                              \
  "rms_norm_backward(Tensor? grad_out, Tensor? grad_residual, Tensor x, Tensor? weight, float eps, "   \
  "Tensor? residual, bool unit_offset, ScalarType? out_dtype, bool[3] output_mask) -> (Tensor, Tensor, Tensor)"

#define FASTXF_SCHEMA_ATTENTION_BACKWARD                                                                   \
  "attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor? key_padding_mask, "          \
  "Tensor? q_offset, bool causal, float? scale, int window, float softcap, Tensor? alibi_slopes, "        \
  "bool[3] output_mask) -> (Tensor, Tensor, Tensor)"

#define FASTXF_SCHEMA_ATTENTION_VARLEN_BACKWARD                                                             \
  "attention_varlen_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor cu_seqlens_q, "           \
  "Tensor cu_seqlens_k, int max_seqlen_q, int max_seqlen_k, bool causal, float? scale, int window, "       \
  "float softcap, bool[3] output_mask) -> (Tensor, Tensor, Tensor)"
