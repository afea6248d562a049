// Kernel templates of the CUDA norms; see norm_cuda.cuh for the overview.
// Included only by the per-dtype instantiation files norm_x*_o*.cu.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda/primitives.cuh"
#include "norm/norm_cuda.cuh"

namespace fastxf {
namespace norm_cuda {

// ----------------------------------------------------------- conversions ----
__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_f(float v);
template <>
__device__ __forceinline__ float from_f<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// VEC elements moved with one aligned access (16 bytes for the vector variant,
// 32 bytes for fp32 outputs / weights of a 16-bit x, which become two accesses).
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

template <typename T, int VEC>
__device__ __forceinline__ Pack<T, VEC> load_pack(const T* p) {
  return ld_global(reinterpret_cast<const Pack<T, VEC>*>(p));
}

template <typename T, int VEC>
__device__ __forceinline__ void store_pack(T* p, const Pack<T, VEC>& v) {
  st_global(reinterpret_cast<Pack<T, VEC>*>(p), v);
}

// An empty asm that claims to modify the packed row: it stops the compiler from
// keeping the fp32 conversions of the whole row alive from one phase (sum,
// squared deviations, output) to the next, which would double the registers a
// row costs and spill. Converting again is a few cheap ALU ops per element.
// (A register-allocation hint only: nothing to do in the emulator.)
template <typename T, int VEC>
__device__ __forceinline__ void refresh(Pack<T, VEC>& p) {
#if defined(FASTXF_EMULATOR)
  (void)p;
#else
  if constexpr (sizeof(Pack<T, VEC>) % 4 == 0) {
    uint32_t* w = reinterpret_cast<uint32_t*>(&p);
#pragma unroll
    for (int i = 0; i < static_cast<int>(sizeof(Pack<T, VEC>) / 4); ++i) asm volatile("" : "+r"(w[i]));
  } else {
    unsigned short* h = reinterpret_cast<unsigned short*>(&p);
    asm volatile("" : "+h"(h[0]));
  }
#endif
}

// Reads VEC weight (or bias) values as fp32; the dtype is a runtime flag (it is
// uniform across the launch, so the branch costs nothing measurable).
template <typename T, int VEC>
__device__ __forceinline__ void load_param(const void* base, bool is_f32, int64_t offset, float (&out)[VEC]) {
  if (is_f32) {
    const auto p = load_pack<float, VEC>(static_cast<const float*>(base) + offset);
#pragma unroll
    for (int j = 0; j < VEC; ++j) out[j] = p.v[j];
  } else {
    const auto p = load_pack<T, VEC>(static_cast<const T*>(base) + offset);
#pragma unroll
    for (int j = 0; j < VEC; ++j) out[j] = to_f(p.v[j]);
  }
}

// ------------------------------------------------------------ reductions ----
// Sum over the G threads of a row group (all of them get the same value, bit
// for bit: the butterfly adds the same two operands on both partners, and every
// warp then reads the per-warp partials in the same order). G <= 32 must be a
// power of two; G > 32 a multiple of 32 with blockDim.x == G (one row per
// block). `scratch` holds 32 floats and is used once per call site.
__device__ __forceinline__ float group_sum(float v, int G, float* scratch) {
  const int width = G < 32 ? G : 32;
  for (int o = width >> 1; o > 0; o >>= 1) v += shfl_xor_sync(0xffffffffu, v, o);
  if (G <= 32) return v;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) st_shared(&scratch[warp], v);
  sync_threads();
  const float s = lane < (G >> 5) ? ld_shared(&scratch[lane]) : 0.f;
  return warp_reduce_sum(s);
}

// Applies the normalisation to VEC values and writes them as O.
template <typename T, typename O, int VEC>
__device__ __forceinline__ void normalize_store(const NormParams& p, const float (&v)[VEC], float mean, float rstd,
                                                int64_t col, O* out_row) {  // col: first element
  float w[VEC], b[VEC];
  if (p.weight != nullptr) {
    load_param<T, VEC>(p.weight, p.weight_f32, col, w);
    if (p.unit_offset) {
#pragma unroll
      for (int j = 0; j < VEC; ++j) w[j] += 1.f;
    }
  }
  if (p.bias != nullptr) load_param<T, VEC>(p.bias, p.bias_f32, col, b);
  Pack<O, VEC> o;
#pragma unroll
  for (int j = 0; j < VEC; ++j) {
    float y = (v[j] - mean) * rstd;
    if (p.weight != nullptr) y *= w[j];
    if (p.bias != nullptr) y += b[j];
    o.v[j] = from_f<O>(y);
  }
  store_pack<O, VEC>(out_row + col, o);
}

// Loads chunk `col` of row s = x (+ residual, rounded to T and stored).
template <typename T, int VEC>
__device__ __forceinline__ Pack<T, VEC> load_input(const T* x_row, const T* res_row,
                                                   T* res_out_row, int64_t col) {
  Pack<T, VEC> s = load_pack<T, VEC>(x_row + col);
  if (res_row != nullptr) {
    const Pack<T, VEC> r = load_pack<T, VEC>(res_row + col);
#pragma unroll
    for (int j = 0; j < VEC; ++j) s.v[j] = from_f<T>(to_f(s.v[j]) + to_f(r.v[j]));
    store_pack<T, VEC>(res_out_row + col, s);
  }
  return s;
}

// ---------------------------------------------------- register-held rows ----
// blockDim = (G, rows_per_block). 1024 threads at most, hence at most 64
// registers per thread: N <= 4 chunks of 16 bytes (4 packed registers each,
// plus as many for the residual batch) or N <= 16 scalar chunks fit.
template <typename T, typename O, int VEC, int N>
__global__ void __launch_bounds__(1024) norm_rows_kernel(NormParams p) {
  FASTXF_SHARED_ARRAY(float, scratch_mean, 32);
  FASTXF_SHARED_ARRAY(float, scratch_var, 32);
  const int G = blockDim.x;
  const int t = threadIdx.x;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y;
  // Threads of a row past the end stay alive (with zeros) because the shuffles
  // of their warp need every lane; blocks with G > 32 hold exactly one row.
  const bool active = row < p.rows;
  // In-row indices are 32-bit (a row here has <= 16384 chunks); only the row
  // offsets are 64-bit. 64-bit chunk indices cost two registers per chunk.
  const int chunks = static_cast<int>(p.hidden / VEC);  // VEC divides hidden (checked on the host)
  // This thread owns chunks t + k * G for k < mine.
  const int mine = active && t < chunks ? min(N, (chunks - t + G - 1) / G) : 0;
  const int step = G * VEC;
  const int64_t first = static_cast<int64_t>(t) * VEC;
  const T* x_row = static_cast<const T*>(p.x) + (active ? row * p.x_stride : 0) + first;
  const T* res_row =
      p.residual ? static_cast<const T*>(p.residual) + (active ? row * p.residual_stride : 0) + first : nullptr;
  T* res_out_row = p.residual ? static_cast<T*>(p.residual_out) + (active ? row * p.hidden : 0) + first : nullptr;

  // Loads are issued in batches before any arithmetic so each thread keeps
  // several 16-byte requests in flight. With a residual, storing s may alias a
  // later load as far as the compiler knows, so each batch loads x and residual
  // for B chunks, then adds and stores; B is capped to bound the registers.
  constexpr int B = N < (VEC == 1 ? 16 : 4) ? N : (VEC == 1 ? 16 : 4);
  Pack<T, VEC> data[N];
#pragma unroll
  for (int k0 = 0; k0 < N; k0 += B) {
    Pack<T, VEC> r[B];
#pragma unroll
    for (int i = 0; i < B; ++i) {
      const int k = k0 + i;
      if (k < mine) {
        data[k] = load_pack<T, VEC>(x_row + k * step);
        if (res_row != nullptr) r[i] = load_pack<T, VEC>(res_row + k * step);
      } else {
#pragma unroll
        for (int j = 0; j < VEC; ++j) data[k].v[j] = from_f<T>(0.f);
      }
    }
    if (res_row != nullptr) {
#pragma unroll
      for (int i = 0; i < B; ++i) {
        const int k = k0 + i;
        if (k < mine) {
#pragma unroll
          for (int j = 0; j < VEC; ++j) data[k].v[j] = from_f<T>(to_f(data[k].v[j]) + to_f(r[i].v[j]));
          store_pack<T, VEC>(res_out_row + k * step, data[k]);
        }
      }
    }
  }

  const float n = static_cast<float>(p.hidden);
  float mean = 0.f;
  if (p.layer_norm) {
    float sum = 0.f;
#pragma unroll
    for (int k = 0; k < N; ++k)
#pragma unroll
      for (int j = 0; j < VEC; ++j) sum += to_f(data[k].v[j]);  // padding chunks are 0
    mean = group_sum(sum, G, scratch_mean) / n;
  }
  float sq = 0.f;
#pragma unroll
  for (int k = 0; k < N; ++k) {
    refresh(data[k]);
    if (k < mine) {  // padding chunks are 0, but 0 - mean is not
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        const float d = to_f(data[k].v[j]) - mean;
        sq += d * d;
      }
    }
  }
  // 1 / sqrt rather than rsqrtf: both IEEE-rounded, so fp32 outputs are not off
  // by rsqrtf's extra ulp or two (it showed in the fp32 error against float64).
  const float rstd = 1.f / sqrtf(group_sum(sq, G, scratch_var) / n + p.eps);

  if (!active) return;  // no barrier or shuffle below
  O* out_row = static_cast<O*>(p.out) + row * p.hidden;
#pragma unroll
  for (int k = 0; k < N; ++k) {
    refresh(data[k]);
    if (k < mine) {
      float v[VEC];
#pragma unroll
      for (int j = 0; j < VEC; ++j) v[j] = to_f(data[k].v[j]);
      normalize_store<T, O, VEC>(p, v, mean, rstd, static_cast<int>(first) + k * step, out_row);
    }
  }
}

// ------------------------------------------------------------ huge rows ----
// Running statistics of a set of values: count, mean, sum of squared deviations.
struct Stats {
  float n, mean, m2;
};

// Chan et al.'s pairwise merge: stable for any split of the row.
__device__ __forceinline__ Stats merge(Stats a, Stats b) {
  const float n = a.n + b.n;
  if (n == 0.f) return a;
  const float delta = b.mean - a.mean;
  const float fb = b.n / n;
  return {n, a.mean + delta * fb, a.m2 + b.m2 + delta * delta * a.n * fb};
}

// One block (blockDim.x threads, a multiple of 32) per row.
template <typename T, typename O, int VEC>
__global__ void __launch_bounds__(512) norm_large_kernel(NormParams p) {
  FASTXF_SHARED_ARRAY(Stats, scratch, 32);
  const int t = threadIdx.x;
  const int G = blockDim.x;
  const int64_t row = blockIdx.x;
  const int64_t chunks = p.hidden / VEC;
  const T* x_row = static_cast<const T*>(p.x) + row * p.x_stride;
  const T* res_row = p.residual ? static_cast<const T*>(p.residual) + row * p.residual_stride : nullptr;
  T* res_out_row = p.residual ? static_cast<T*>(p.residual_out) + row * p.hidden : nullptr;

  // Pass 1: statistics (and the new residual). Each chunk's own mean and
  // squared deviations are exact-ish in registers, then merged into the
  // thread's running Stats (RMSNorm: mean stays 0, m2 is the sum of squares).
  Stats st{0.f, 0.f, 0.f};
  for (int64_t c = t; c < chunks; c += G) {
    const Pack<T, VEC> s = load_input<T, VEC>(x_row, res_row, res_out_row, c * VEC);
    float v[VEC];
#pragma unroll
    for (int j = 0; j < VEC; ++j) v[j] = to_f(s.v[j]);
    float cm = 0.f;
    if (p.layer_norm) {
#pragma unroll
      for (int j = 0; j < VEC; ++j) cm += v[j];
      cm *= 1.f / VEC;
    }
    float m2 = 0.f;
#pragma unroll
    for (int j = 0; j < VEC; ++j) m2 += (v[j] - cm) * (v[j] - cm);
    st = merge(st, Stats{static_cast<float>(VEC), cm, m2});
  }
  // Reduce to thread 0 (a fixed merge order, so every thread then uses the same
  // statistics), then broadcast through shared memory.
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const Stats other{shfl_down_sync(0xffffffffu, st.n, o), shfl_down_sync(0xffffffffu, st.mean, o),
                      shfl_down_sync(0xffffffffu, st.m2, o)};
    st = merge(st, other);
  }
  if ((t & 31) == 0) st_shared(&scratch[t >> 5], st);
  sync_threads();
  if (t < 32) {
    st = t < (G >> 5) ? ld_shared(&scratch[t]) : Stats{0.f, 0.f, 0.f};
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const Stats other{shfl_down_sync(0xffffffffu, st.n, o), shfl_down_sync(0xffffffffu, st.mean, o),
                        shfl_down_sync(0xffffffffu, st.m2, o)};
      st = merge(st, other);
    }
  }
  sync_threads();  // everyone has read scratch before thread 0 overwrites it
  if (t == 0) st_shared(&scratch[0], st);
  sync_threads();
  st = ld_shared(&scratch[0]);
  const float mean = p.layer_norm ? st.mean : 0.f;
  const float rstd = 1.f / sqrtf(st.m2 / static_cast<float>(p.hidden) + p.eps);

  // Pass 2: normalise. The row is re-read from where pass 1 found (or wrote)
  // it; residual_out was written by this same thread, so plain loads see it.
  const T* src = res_row != nullptr ? res_out_row : x_row;
  O* out_row = static_cast<O*>(p.out) + row * p.hidden;
  for (int64_t c = t; c < chunks; c += G) {
    const Pack<T, VEC> s = load_pack<T, VEC>(src + c * VEC);
    float v[VEC];
#pragma unroll
    for (int j = 0; j < VEC; ++j) v[j] = to_f(s.v[j]);
    normalize_store<T, O, VEC>(p, v, mean, rstd, c * VEC, out_row);
  }
}

// ------------------------------------------------------------- launching ----
template <typename T, typename O, int VEC>
void launch_with_vec(const NormParams& p, const LaunchConfig& cfg, cudaStream_t stream) {
  if (cfg.chunks_per_thread == 0) {
    FASTXF_LAUNCH((norm_large_kernel<T, O, VEC>), static_cast<unsigned>(p.rows), cfg.threads_per_row, 0, stream, p);
    return;
  }
  const dim3 block(cfg.threads_per_row, cfg.rows_per_block);
  const unsigned grid = static_cast<unsigned>((p.rows + cfg.rows_per_block - 1) / cfg.rows_per_block);
  switch (cfg.chunks_per_thread) {
    case 1: FASTXF_LAUNCH((norm_rows_kernel<T, O, VEC, 1>), grid, block, 0, stream, p); break;
    case 2: FASTXF_LAUNCH((norm_rows_kernel<T, O, VEC, 2>), grid, block, 0, stream, p); break;
    case 4: FASTXF_LAUNCH((norm_rows_kernel<T, O, VEC, 4>), grid, block, 0, stream, p); break;
    default:
      // Only the scalar variant holds 8 or 16 one-element chunks per thread:
      // 8 chunks of 16 bytes would not fit in the 64 registers a 1024-thread
      // block allows (ptxas spills). (A 512-thread N = 8 variant measured on an
      // H200 was slower than N = 4 with more threads for most shapes.)
      if constexpr (VEC == 1) {
        if (cfg.chunks_per_thread == 8) FASTXF_LAUNCH((norm_rows_kernel<T, O, 1, 8>), grid, block, 0, stream, p);
        if (cfg.chunks_per_thread == 16) FASTXF_LAUNCH((norm_rows_kernel<T, O, 1, 16>), grid, block, 0, stream, p);
      }
      break;
  }
}

template <typename T, typename O>
void launch_norm(const NormParams& p, const LaunchConfig& cfg, cudaStream_t stream) {
  if (cfg.vectorized) {
    launch_with_vec<T, O, 16 / sizeof(T)>(p, cfg, stream);
  } else {
    launch_with_vec<T, O, 1>(p, cfg, stream);
  }
}

}  // namespace norm_cuda
}  // namespace fastxf
