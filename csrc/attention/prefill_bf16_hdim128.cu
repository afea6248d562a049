// One instantiation of the prefill kernel per file (keeps builds parallel and small).
#include "attention/prefill_kernel.cuh"

namespace fastxf {
namespace prefill {
template void run_prefill<__nv_bfloat16, 128>(const Params&, int, int, cudaStream_t);
}  // namespace prefill
}  // namespace fastxf
