// One instantiation of the prefill kernel per file (keeps builds parallel and small).
#include "attention/prefill_kernel.cuh"

namespace fastxf {
namespace prefill {
template void run_prefill<__half, 128>(const Params&, int, int, cudaStream_t);
}  // namespace prefill
}  // namespace fastxf
