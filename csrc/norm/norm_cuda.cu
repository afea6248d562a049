// Turns the runtime (x dtype, out dtype) pair into one of the nine kernel
// families instantiated in norm_x*_o*.cu. No torch headers here: the torch-facing
// host code is in norm_cuda_ops.cpp.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "norm/norm_cuda.cuh"

namespace fastxf {
namespace norm_cuda {
namespace {

template <typename T>
void launch_for_x(const NormParams& p, const LaunchConfig& cfg, int out_dtype, cudaStream_t stream) {
  switch (out_dtype) {
    case 0: launch_norm<T, float>(p, cfg, stream); break;
    case 1: launch_norm<T, __half>(p, cfg, stream); break;
    default: launch_norm<T, __nv_bfloat16>(p, cfg, stream); break;
  }
}

}  // namespace

void launch(const NormParams& p, const LaunchConfig& cfg, int x_dtype, int out_dtype, cudaStream_t stream) {
  switch (x_dtype) {
    case 0: launch_for_x<float>(p, cfg, out_dtype, stream); break;
    case 1: launch_for_x<__half>(p, cfg, out_dtype, stream); break;
    default: launch_for_x<__nv_bfloat16>(p, cfg, out_dtype, stream); break;
  }
}

}  // namespace norm_cuda
}  // namespace fastxf
