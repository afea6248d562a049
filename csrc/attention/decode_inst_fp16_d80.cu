// One instantiation of the split-KV decode kernel (see decode_kernel.cuh).
#include "attention/decode_kernel.cuh"

namespace fastxf {
namespace decode {

template int split_kernel_occupancy<__half, 80>();
template void launch_split_kernel<__half, 80>(const Params&, cudaStream_t);

}  // namespace decode
}  // namespace fastxf
