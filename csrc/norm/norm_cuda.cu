// Placeholder until the CUDA norm kernels land.
#include <torch/library.h>

#include "norm/norm.h"

namespace fastxf {
namespace {

std::tuple<at::Tensor, at::Tensor> layer_norm_cuda(const at::Tensor&, const std::optional<at::Tensor>&,
                                                   const std::optional<at::Tensor>&, double,
                                                   const std::optional<at::Tensor>&, std::optional<at::ScalarType>) {
  TORCH_CHECK(false, "fastxf.layer_norm: the CUDA kernel is not implemented yet");
}

std::tuple<at::Tensor, at::Tensor> rms_norm_cuda(const at::Tensor&, const std::optional<at::Tensor>&, double,
                                                 const std::optional<at::Tensor>&, bool,
                                                 std::optional<at::ScalarType>) {
  TORCH_CHECK(false, "fastxf.rms_norm: the CUDA kernel is not implemented yet");
}

}  // namespace

TORCH_LIBRARY_IMPL(fastxf, CUDA, m) {
  m.impl("layer_norm", &layer_norm_cuda);
  m.impl("rms_norm", &rms_norm_cuda);
}

}  // namespace fastxf
