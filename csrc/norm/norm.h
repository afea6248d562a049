// Argument checking and problem description shared by the CPU and CUDA
// implementations of fastxf::layer_norm and fastxf::rms_norm.
#pragma once

#include <ATen/ATen.h>
#include <optional>

#include "common.h"

namespace fastxf {

enum class NormKind { kLayerNorm, kRmsNorm };

// Everything a norm kernel needs. Rows are `rows` vectors of `hidden` elements;
// row r of an input starts at ptr + r * stride (the last dim is contiguous).
struct NormProblem {
  NormKind kind;
  int64_t rows = 0;
  int64_t hidden = 0;
  at::Tensor x;         // (rows, hidden), last dim contiguous
  at::Tensor residual;  // (rows, hidden) or undefined
  at::Tensor weight;    // (hidden,) contiguous or undefined
  at::Tensor bias;      // (hidden,) contiguous or undefined
  at::Tensor out;       // (rows, hidden) contiguous, out_dtype
  at::Tensor residual_out;  // (rows, hidden) contiguous, x's dtype, or undefined
  at::Tensor out_full;       // `out` in x's shape (what the op returns)
  at::Tensor residual_full;  // residual_out in x's shape, or an empty tensor
  double eps = 1e-5;
  bool unit_offset = false;  // RMSNorm scales by (1 + weight) (Gemma)
};

// Validates the arguments (TORCH_CHECKs that name the argument) and allocates
// the outputs.
NormProblem make_norm_problem(NormKind kind, const at::Tensor& x, const std::optional<at::Tensor>& weight,
                              const std::optional<at::Tensor>& bias, double eps,
                              const std::optional<at::Tensor>& residual, bool unit_offset,
                              std::optional<at::ScalarType> out_dtype);

}  // namespace fastxf
