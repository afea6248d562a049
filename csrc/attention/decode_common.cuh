// Device helpers shared by the decode split kernel (decode_kernel.cuh) and the
// merge kernel (decode_cuda.cu); the mma / pack / memory primitives are in
// cuda/primitives.cuh.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "attention/decode_params.cuh"
#include "cuda/primitives.cuh"

namespace fastxf {
namespace decode {

constexpr float kLog2e = 1.4426950408889634f;

// A float as the 16-bit pattern of T (__half or __nv_bfloat16), rounded to nearest even.
template <typename T>
__device__ __forceinline__ uint16_t bits_of(float x);
template <>
__device__ __forceinline__ uint16_t bits_of<__nv_bfloat16>(float x) {
  return __bfloat16_as_ushort(__float2bfloat16_rn(x));
}
template <>
__device__ __forceinline__ uint16_t bits_of<__half>(float x) {
  return __half_as_ushort(__float2half_rn(x));
}

}  // namespace decode
}  // namespace fastxf
