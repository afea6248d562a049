// The CUDA decode (split-KV) kernels and their host dispatch compiled for the
// CPU emulator (fastxf._emu, -DFASTXF_EMULATOR): the same sources as the CUDA
// build, included rather than copied, in one translation unit for the family.
#include "attention/decode_cuda.cu"  // choose_splits, run_decode, the merge kernel

// The (dtype, head dim) instantiations of the split kernel.
#include "attention/decode_inst_bf16_d128.cu"
#include "attention/decode_inst_bf16_d256.cu"
#include "attention/decode_inst_bf16_d32.cu"
#include "attention/decode_inst_bf16_d64.cu"
#include "attention/decode_inst_bf16_d80.cu"
#include "attention/decode_inst_bf16_d96.cu"
#include "attention/decode_inst_fp16_d128.cu"
#include "attention/decode_inst_fp16_d256.cu"
#include "attention/decode_inst_fp16_d32.cu"
#include "attention/decode_inst_fp16_d64.cu"
#include "attention/decode_inst_fp16_d80.cu"
#include "attention/decode_inst_fp16_d96.cu"
