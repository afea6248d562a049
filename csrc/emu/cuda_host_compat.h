// What the CUDA headers do not give the host compiler, for kernel templates
// compiled in the emulator (included by csrc/cuda/primitives.cuh under
// FASTXF_EMULATOR, after cuda_runtime.h / cuda_fp16.h / cuda_bf16.h, which do
// provide __device__, __forceinline__, __align__, __global__, the half / bf16
// types and conversions, and the vector types).
#pragma once

#include <cuda_runtime.h>

#include <cmath>  // exp2f, log2f, tanhf, fmaxf, sqrtf, ... in the global namespace
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "emu/emu.h"

#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif

// A bare __shared__ variable would be a per-fiber local in the emulator (or a
// static shared by all CTAs): refuse it at compile time.
#undef __shared__
#define __shared__ FASTXF_EMULATOR_ERROR_declare_shared_memory_with_FASTXF_SHARED_or_dynamic_shared

#define threadIdx (::fastxf::emu::coords().thread_idx)
#define blockIdx (::fastxf::emu::coords().block_idx)
#define blockDim (::fastxf::emu::coords().block_dim)
#define gridDim (::fastxf::emu::coords().grid_dim)
#ifdef warpSize
#undef warpSize
#endif
#define warpSize 32

// CUDA's min / max are overloaded for the arithmetic types (device code has
// them in the global namespace); the usual arithmetic conversions decide the
// result type, as with CUDA's mixed-type overloads.
template <typename A, typename B,
          typename = std::enable_if_t<std::is_arithmetic_v<A> && std::is_arithmetic_v<B>>>
inline std::common_type_t<A, B> min(A a, B b) {
  using C = std::common_type_t<A, B>;
  return static_cast<C>(a) < static_cast<C>(b) ? static_cast<C>(a) : static_cast<C>(b);
}
template <typename A, typename B,
          typename = std::enable_if_t<std::is_arithmetic_v<A> && std::is_arithmetic_v<B>>>
inline std::common_type_t<A, B> max(A a, B b) {
  using C = std::common_type_t<A, B>;
  return static_cast<C>(a) > static_cast<C>(b) ? static_cast<C>(a) : static_cast<C>(b);
}

inline float __int_as_float(int x) {
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}
inline int __float_as_int(float f) {
  int x;
  std::memcpy(&x, &f, 4);
  return x;
}
inline float __uint_as_float(unsigned x) {
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}
inline unsigned __float_as_uint(float f) {
  unsigned x;
  std::memcpy(&x, &f, 4);
  return x;
}
inline float rsqrtf(float x) { return 1.f / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __saturatef(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : x); }

// The raw intrinsics, for code not yet written against primitives.cuh (the
// fastxf:: names are declared after this header; macros resolve at use).
#define __syncthreads() ::fastxf::sync_threads()
#define __syncthreads_count(pred) ::fastxf::sync_threads_count(pred)
#define __syncthreads_and(pred) ::fastxf::sync_threads_and(pred)
#define __syncthreads_or(pred) ::fastxf::sync_threads_or(pred)
#define __syncwarp(...) ::fastxf::sync_warp(__VA_ARGS__)
#define __shfl_sync(...) ::fastxf::shfl_sync(__VA_ARGS__)
#define __shfl_xor_sync(...) ::fastxf::shfl_xor_sync(__VA_ARGS__)
#define __shfl_down_sync(...) ::fastxf::shfl_down_sync(__VA_ARGS__)
#define __shfl_up_sync(...) ::fastxf::shfl_up_sync(__VA_ARGS__)
#define __ballot_sync(mask, pred) ::fastxf::ballot_sync(mask, pred)
#define __any_sync(mask, pred) ::fastxf::any_sync(mask, pred)
#define __all_sync(mask, pred) ::fastxf::all_sync(mask, pred)
#define atomicMin(p, v) ::fastxf::atomic_min(p, v)
#define atomicMax(p, v) ::fastxf::atomic_max(p, v)
#define atomicAdd(p, v) ::fastxf::atomic_add(p, v)
