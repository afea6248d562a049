// The CUDA entry point of fastxf::attention_varlen compiled for the CPU emulator
// (fastxf._emu, -DFASTXF_EMULATOR): registers fastxf_emu::attention_varlen.
// The same source as the CUDA build, included rather than copied.
#include "attention/attention_varlen_cuda.cu"
