// The CUDA prefill kernel and its host dispatch compiled for the CPU emulator
// (fastxf._emu, -DFASTXF_EMULATOR): the same sources as the CUDA build,
// included rather than copied, in one translation unit for the family.
#include "attention/prefill_cuda.cu"  // checks, Params, (dtype, head dim) switch

// The (dtype, head dim) instantiations.
#include "attention/prefill_bf16_hdim128.cu"
#include "attention/prefill_bf16_hdim256.cu"
#include "attention/prefill_bf16_hdim32.cu"
#include "attention/prefill_bf16_hdim64.cu"
#include "attention/prefill_fp16_hdim128.cu"
#include "attention/prefill_fp16_hdim256.cu"
#include "attention/prefill_fp16_hdim32.cu"
#include "attention/prefill_fp16_hdim64.cu"
