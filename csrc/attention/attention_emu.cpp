// The CUDA attention entry point (decode vs prefill) compiled for the CPU
// emulator (fastxf._emu, -DFASTXF_EMULATOR): registers fastxf_emu::attention.
// The same source as the CUDA build, included rather than copied.
#include "attention/attention_cuda.cu"
