// The schema strings of fastxf's ops: declared under TORCH_LIBRARY(fastxf) in
// registration.cpp and, with the same signatures, under
// TORCH_LIBRARY(fastxf_emu) by the CPU emulator module (csrc/emulated_ops.h).
// Each op's contract is documented next to its m.def in registration.cpp.
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
