// The CUDA norm kernels and their host dispatch, compiled for the CPU emulator
// (fastxf._emu, -DFASTXF_EMULATOR): the same sources as the CUDA build,
// included rather than copied, in one translation unit for the family.
#include "norm/norm_cuda_ops.cpp"  // host dispatch: registers fastxf_emu::layer_norm / rms_norm
#include "norm/norm_cuda.cu"       // (x dtype, out dtype) -> instantiation

// The nine (x dtype, out dtype) instantiations.
#include "norm/norm_xbf16_obf16.cu"
#include "norm/norm_xbf16_of16.cu"
#include "norm/norm_xbf16_of32.cu"
#include "norm/norm_xf16_obf16.cu"
#include "norm/norm_xf16_of16.cu"
#include "norm/norm_xf16_of32.cu"
#include "norm/norm_xf32_obf16.cu"
#include "norm/norm_xf32_of16.cu"
#include "norm/norm_xf32_of32.cu"
