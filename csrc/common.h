// Small helpers shared by every op.
#pragma once

#include <ATen/ATen.h>

// Runs the lambda with NAME bound to the C++ type of a float ScalarType.
#define FASTXF_DISPATCH_FLOAT(TYPE, NAME, ...)                                 \
  [&] {                                                                        \
    switch (TYPE) {                                                            \
      case at::kFloat: { using NAME = float; return __VA_ARGS__(); }           \
      case at::kHalf: { using NAME = at::Half; return __VA_ARGS__(); }         \
      case at::kBFloat16: { using NAME = at::BFloat16; return __VA_ARGS__(); } \
      default: TORCH_CHECK(false, "fastxf: unsupported dtype ", TYPE);         \
    }                                                                          \
  }()

namespace fastxf {

inline bool is_float_type(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16;
}

}  // namespace fastxf
