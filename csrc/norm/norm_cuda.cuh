// CUDA LayerNorm / RMSNorm kernels (with the optional fused residual add).
//
// Layout of the work: a "row group" of G threads normalises one row. Thread t of
// the group owns the chunks c = t, t + G, t + 2G, ... of its row, where a chunk
// is VEC consecutive elements (VEC = 16 bytes / sizeof(T) when every pointer and
// row stride allows 16-byte accesses, else 1: the scalar variant that handles
// misaligned views and odd hidden sizes). Two kernels:
//
//  - norm_rows_kernel<T, O, VEC, N>: each thread holds its N chunks of the row in
//    registers (packed in x's dtype, so 4 registers per 16-byte chunk), so the
//    input is read exactly once. G <= 32 puts several rows in one block (one
//    warp or a sub-warp per row, reduction by shuffles only); G > 32 makes one
//    block per row (shuffles, then one shared-memory exchange per reduction).
//    LayerNorm's variance is two-pass over the register-held row, so it is as
//    stable as the float64 definition up to fp32 rounding.
//  - norm_large_kernel<T, O, VEC>: for rows that do not fit in 1024 threads'
//    registers; streams the row twice through global memory (the second read
//    mostly hits L2) with Welford / Chan statistics.
//
// Statistics are fp32 whatever the dtype. With a residual, s = x + residual is
// computed in fp32 and rounded to T before it is stored and normalised, exactly
// like an unfused `x + residual` followed by the norm.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace fastxf {
namespace norm_cuda {

// Everything a launch needs. Pointers are to the first row; strides are in
// elements; out and residual_out are contiguous (row stride = hidden).
struct NormParams {
  const void* x = nullptr;
  const void* residual = nullptr;  // nullptr: no residual add
  const void* weight = nullptr;    // nullptr: no weight; dtype T, or fp32 if weight_f32
  const void* bias = nullptr;      // nullptr: no bias; dtype T, or fp32 if bias_f32
  void* out = nullptr;             // (rows, hidden), dtype O
  void* residual_out = nullptr;    // (rows, hidden), dtype T, when residual != nullptr
  int64_t x_stride = 0;
  int64_t residual_stride = 0;
  int64_t rows = 0;
  int64_t hidden = 0;
  float eps = 1e-5f;
  bool layer_norm = false;   // false: RMSNorm (no mean subtraction)
  bool weight_f32 = false;
  bool bias_f32 = false;
  bool unit_offset = false;  // scale by (1 + weight)
};

// Launch configuration chosen on the host (see choose_config in norm_cuda_ops.cpp).
struct LaunchConfig {
  bool vectorized = false;  // VEC = 16 / sizeof(T) rather than 1
  int chunks_per_thread = 0;  // N; 0 selects norm_large_kernel
  int threads_per_row = 0;    // G
  int rows_per_block = 1;
};

// Launches the kernels for one call; dtype codes: 0 = fp32, 1 = fp16, 2 = bf16.
// Defined in norm_cuda.cu; callable from plain C++ (no CUDA types in it).
void launch(const NormParams& p, const LaunchConfig& cfg, int x_dtype, int out_dtype, cudaStream_t stream);

// Launches the kernel family for x dtype T and output dtype O (CUDA types:
// float, __half, __nv_bfloat16). Defined in norm_kernels.cuh and instantiated
// once per (T, O) pair in norm_x<T>_o<O>.cu, so the nine pairs compile in
// parallel and norm_cuda.cu (host code) does not compile kernels.
template <typename T, typename O>
void launch_norm(const NormParams& p, const LaunchConfig& cfg, cudaStream_t stream);

}  // namespace norm_cuda
}  // namespace fastxf
