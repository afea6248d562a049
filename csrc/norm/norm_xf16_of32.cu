// One (x dtype, out dtype) pair of the CUDA norm kernels (see norm_kernels.cuh).
#include "norm/norm_kernels.cuh"

namespace fastxf {
namespace norm_cuda {
template void launch_norm<__half, float>(const NormParams&, const LaunchConfig&, cudaStream_t);
}  // namespace norm_cuda
}  // namespace fastxf
