// The device primitives of fastxf's CUDA kernels, in one place, for two worlds:
//
//  - nvcc (device code): each function is the inline PTX / intrinsic the kernels
//    used before, unchanged; memory accessors are plain dereferences.
//  - FASTXF_EMULATOR (host compiler, fastxf._emu): each function forwards to the
//    SIMT emulator runtime in csrc/emu/, which runs the threads of a CTA as
//    fibers and checks every access (see csrc/emu/emu.h).
//
// Contract for kernel code that must run in both worlds:
//  1. Global and shared memory traffic goes through ld_global / st_global,
//     ld_shared / st_shared (or ld / st when a helper serves both spaces), so
//     the emulator can bounds-check it, detect shared-memory races and reads of
//     never-written shared memory. Vector accesses are the same templates with a
//     vector type: ld_global(reinterpret_cast<const uint4*>(p)). Plain
//     dereferences of kernel locals / parameters stay plain.
//  2. Shared memory is declared with FASTXF_SHARED(type, name) (type may be an
//     array type: FASTXF_SHARED(float[4][16], s_m)) or
//     FASTXF_SHARED_ARRAY(type, name, count); dynamic shared memory is
//     dynamic_shared<T>() (128-byte aligned). A bare `__shared__` does not
//     compile in the emulator (it would be per-thread there).
//  3. Barriers, shuffles, votes, ldmatrix, mma, cp.async, atomics on shared or
//     global memory: the functions below, not the raw intrinsics or asm.
//     (The emulator also maps __syncthreads / __shfl_*_sync / atomicMin... to
//     them, see csrc/emu/cuda_host_compat.h, but new code should say what it
//     means with these names.)
//  4. Kernels are launched with FASTXF_LAUNCH(kernel, grid, block, smem, stream,
//     args...); a template kernel whose name contains a comma goes in
//     parentheses: FASTXF_LAUNCH((split_kernel<T, D>), ...). More than 48 KiB of
//     dynamic shared memory needs set_max_dynamic_shared_bytes(kernel, bytes)
//     first, as on the GPU (the emulator checks that it was called).
//  5. Kernel bodies guarded for sm_80+ use `#if FASTXF_SM80_CODE`, which is
//     also true in the emulator.
//
// Fragment layouts (PTX ISA, mma.m16n8k16 with .f16 / .bf16 inputs; lane =
// threadIdx.x % 32, g = lane / 4, t = lane % 4; each .b32 register holds two
// 16-bit elements, the lower column / k index in the low half):
//   A (16x16, row-major): a0 = A[g][2t..2t+1], a1 = A[g+8][2t..], a2 = A[g][2t+8..], a3 = A[g+8][2t+8..]
//   B (16x8, "col"):      b0 = B[2t..2t+1][g], b1 = B[2t+8..2t+9][g]
//   C, D (16x8, fp32):    c0, c1 = C[g][2t..2t+1], c2, c3 = C[g+8][2t..2t+1]
//   ldmatrix.m8n8.x{1,2,4}.b16: lanes 8i..8i+7 give the row addresses (16
//   bytes each, 16-byte aligned) of matrix i; register i of every lane receives
//   matrix i: row g, elements 2t, 2t+1 (.trans: M[2t][g], M[2t+1][g]).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#if defined(FASTXF_EMULATOR)
#include "emu/cuda_host_compat.h"
#include "emu/emu.h"

#include <type_traits>
// Every emulated primitive records where it was called from (for the checker's
// messages). These default arguments exist only in the emulator.
#define FASTXF_LOC_PARAMS , const char *file = __builtin_FILE(), int line = __builtin_LINE()
#define FASTXF_LOC_PARAMS_FIRST const char *file = __builtin_FILE(), int line = __builtin_LINE()
#define FASTXF_LOC file, line
#endif

// True where kernel bodies are compiled: device code for sm_80+ and the emulator.
#if defined(FASTXF_EMULATOR) || (defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800)
#define FASTXF_SM80_CODE 1
#else
#define FASTXF_SM80_CODE 0
#endif

namespace fastxf {

namespace detail {
// Keeps the value argument of st_* out of template deduction, so that
// st_global(ptr_to_u16, 0) means "store a uint16_t 0".
template <typename T>
struct identity {
  using type = T;
};
}  // namespace detail

#if !defined(FASTXF_EMULATOR)
// =========================================================================
//                         nvcc: the real instructions
// =========================================================================

// ------------------------------------------------------------- memory ----
template <typename T>
__device__ __forceinline__ T ld_global(const T* p) { return *p; }
template <typename T>
__device__ __forceinline__ void st_global(T* p, typename detail::identity<T>::type v) { *p = v; }
template <typename T>
__device__ __forceinline__ T ld_shared(const T* p) { return *p; }
template <typename T>
__device__ __forceinline__ void st_shared(T* p, typename detail::identity<T>::type v) { *p = v; }
// Either space (a helper that reads shared memory in one call and global in another).
template <typename T>
__device__ __forceinline__ T ld(const T* p) { return *p; }
template <typename T>
__device__ __forceinline__ void st(T* p, typename detail::identity<T>::type v) { *p = v; }

__device__ __forceinline__ int atomic_min(int* p, int v) { return atomicMin(p, v); }
__device__ __forceinline__ int atomic_max(int* p, int v) { return atomicMax(p, v); }
__device__ __forceinline__ int atomic_add(int* p, int v) { return atomicAdd(p, v); }
__device__ __forceinline__ float atomic_add(float* p, float v) { return atomicAdd(p, v); }

// 32-bit shared-window byte address of a generic pointer into shared memory
// (what ldmatrix takes): unrolled loops then address fragments as register +
// immediate.
__device__ __forceinline__ uint32_t cvta_to_shared(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Shared memory declarations (see the contract above).
#define FASTXF_SHARED(type, name)         \
  using fastxf_shared_type_##name = type; \
  __shared__ fastxf_shared_type_##name name
#define FASTXF_SHARED_ARRAY(type, name, count) FASTXF_SHARED(type[count], name)

template <typename T>
__device__ __forceinline__ T* dynamic_shared() {
  extern __shared__ __align__(128) unsigned char fastxf_dynamic_smem[];
  return reinterpret_cast<T*>(fastxf_dynamic_smem);
}

// ------------------------------------------------------------ cp.async ----
// 16-byte global -> shared copy of src_bytes (0..16) bytes; the rest of the 16
// destination bytes is zero-filled (src_bytes = 0 reads no global memory).
__device__ __forceinline__ void cp_async_16(void* smem_dst, const void* gmem_src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(cvta_to_shared(smem_dst)), "l"(gmem_src),
               "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
// Waits until at most N of this thread's committed groups are pending.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// ------------------------------------------------------------ ldmatrix ----
__device__ __forceinline__ void ldmatrix_x1(uint32_t& r0, uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n" : "=r"(r0) : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x2(uint32_t& r0, uint32_t& r1, uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n" : "=r"(r0), "=r"(r1) : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4(uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3, uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x1_trans(uint32_t& r0, uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n" : "=r"(r0) : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t& r0, uint32_t& r1, uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n" : "=r"(r0), "=r"(r1) : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3,
                                                  uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(addr));
}

// ----------------------------------------------------------------- mma ----
// c += a * b, m16n8k16, T = __half or __nv_bfloat16 inputs, fp32 accumulate.
// Not volatile: a pure function of its operands, which the compiler may schedule.
template <typename T>
__device__ __forceinline__ void mma_m16n8k16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);
template <>
__device__ __forceinline__ void mma_m16n8k16<__half>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                                     uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void mma_m16n8k16<__nv_bfloat16>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                                            uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// ---------------------------------------------------------------- math ----
// 2^x; ex2.approx(-inf) = +0, which masked scores rely on.
__device__ __forceinline__ float ex2_approx(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}
__device__ __forceinline__ float rcp_approx(float x) {
  float y;
  asm("rcp.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// ------------------------------------------------------ sync and warps ----
__device__ __forceinline__ void sync_threads() { __syncthreads(); }
__device__ __forceinline__ int sync_threads_count(int pred) { return __syncthreads_count(pred); }
__device__ __forceinline__ int sync_threads_and(int pred) { return __syncthreads_and(pred); }
__device__ __forceinline__ int sync_threads_or(int pred) { return __syncthreads_or(pred); }
__device__ __forceinline__ void sync_warp(unsigned mask = 0xffffffffu) { __syncwarp(mask); }

template <typename T>
__device__ __forceinline__ T shfl_sync(unsigned mask, T v, int src_lane, int width = 32) {
  return __shfl_sync(mask, v, src_lane, width);
}
template <typename T>
__device__ __forceinline__ T shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  return __shfl_xor_sync(mask, v, lane_mask, width);
}
template <typename T>
__device__ __forceinline__ T shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return __shfl_down_sync(mask, v, delta, width);
}
template <typename T>
__device__ __forceinline__ T shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return __shfl_up_sync(mask, v, delta, width);
}
__device__ __forceinline__ unsigned ballot_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred); }
__device__ __forceinline__ bool any_sync(unsigned mask, int pred) { return __any_sync(mask, pred) != 0; }
__device__ __forceinline__ bool all_sync(unsigned mask, int pred) { return __all_sync(mask, pred) != 0; }

// --------------------------------------------------------------- launch ----
#define FASTXF_LAUNCH(kernel, grid, block, smem, stream, ...) kernel<<<grid, block, smem, stream>>>(__VA_ARGS__)

// Opt-in to more than 48 KiB of dynamic shared memory (host code).
template <typename Kernel>
inline cudaError_t set_max_dynamic_shared_bytes(Kernel kernel, int bytes) {
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
}

#else
// =========================================================================
//                   FASTXF_EMULATOR: the checked CPU runtime
// =========================================================================

// ------------------------------------------------------------- memory ----
template <typename T>
inline T ld_global(const T* p FASTXF_LOC_PARAMS) {
  emu::access(p, sizeof(T), alignof(T), emu::Space::kGlobal, emu::Op::kRead, FASTXF_LOC);
  return emu::load_bytes<T>(p);
}
template <typename T>
inline void st_global(T* p, const typename detail::identity<T>::type& v FASTXF_LOC_PARAMS) {
  emu::access(p, sizeof(T), alignof(T), emu::Space::kGlobal, emu::Op::kWrite, FASTXF_LOC);
  emu::store_bytes<T>(p, v);
}
template <typename T>
inline T ld_shared(const T* p FASTXF_LOC_PARAMS) {
  emu::access(p, sizeof(T), alignof(T), emu::Space::kShared, emu::Op::kRead, FASTXF_LOC);
  return emu::load_bytes<T>(p);
}
template <typename T>
inline void st_shared(T* p, const typename detail::identity<T>::type& v FASTXF_LOC_PARAMS) {
  emu::access(p, sizeof(T), alignof(T), emu::Space::kShared, emu::Op::kWrite, FASTXF_LOC);
  emu::store_bytes<T>(p, v);
}
template <typename T>
inline T ld(const T* p FASTXF_LOC_PARAMS) {
  emu::access(p, sizeof(T), alignof(T), emu::Space::kGeneric, emu::Op::kRead, FASTXF_LOC);
  return emu::load_bytes<T>(p);
}
template <typename T>
inline void st(T* p, const typename detail::identity<T>::type& v FASTXF_LOC_PARAMS) {
  emu::access(p, sizeof(T), alignof(T), emu::Space::kGeneric, emu::Op::kWrite, FASTXF_LOC);
  emu::store_bytes<T>(p, v);
}

// (Stores take the value by reference here: Pack<float, 8> is 32-byte aligned.)

// The fibers of one CTA share one OS thread, and CTAs running in parallel on
// several OS threads only share global memory: plain read-modify-write is
// atomic for shared memory, global memory needs the real atomics.
template <typename T, typename F>
inline T emu_atomic(T* p, T v, F f, const char* file, int line) {
  const bool global = emu::access(p, sizeof(T), alignof(T), emu::Space::kGeneric, emu::Op::kAtomic, file, line);
  if (global) {
    T old = __atomic_load_n(p, __ATOMIC_RELAXED);
    while (!__atomic_compare_exchange_n(p, &old, f(old, v), true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
    }
    return old;
  }
  const T old = *p;
  *p = f(old, v);
  return old;
}
inline int atomic_min(int* p, int v FASTXF_LOC_PARAMS) {
  return emu_atomic(p, v, [](int a, int b) { return a < b ? a : b; }, FASTXF_LOC);
}
inline int atomic_max(int* p, int v FASTXF_LOC_PARAMS) {
  return emu_atomic(p, v, [](int a, int b) { return a > b ? a : b; }, FASTXF_LOC);
}
inline int atomic_add(int* p, int v FASTXF_LOC_PARAMS) {
  return emu_atomic(p, v, [](int a, int b) { return a + b; }, FASTXF_LOC);
}
inline float atomic_add(float* p, float v FASTXF_LOC_PARAMS) {
  // No lock-free float CAS builtin: go through the bits.
  static_assert(sizeof(float) == sizeof(uint32_t));
  uint32_t* q = reinterpret_cast<uint32_t*>(p);
  const auto add = [](uint32_t a, uint32_t b) {
    float x, y;
    __builtin_memcpy(&x, &a, 4);
    __builtin_memcpy(&y, &b, 4);
    x += y;
    uint32_t r;
    __builtin_memcpy(&r, &x, 4);
    return r;
  };
  uint32_t vb;
  __builtin_memcpy(&vb, &v, 4);
  const uint32_t old = emu_atomic(q, vb, add, FASTXF_LOC);
  float o;
  __builtin_memcpy(&o, &old, 4);
  return o;
}

inline uint32_t cvta_to_shared(const void* p FASTXF_LOC_PARAMS) { return emu::cvta_to_shared(p, FASTXF_LOC); }

// One instance per CTA, allocated by the runtime at the first thread that
// reaches the declaration; `key` (a static of this kernel instantiation)
// identifies the declaration.
#define FASTXF_SHARED(type, name)                                                                                 \
  using fastxf_shared_type_##name = type;                                                                         \
  static char fastxf_shared_key_##name;                                                                           \
  fastxf_shared_type_##name& name = *static_cast<fastxf_shared_type_##name*>(::fastxf::emu::static_shared(      \
      &fastxf_shared_key_##name, sizeof(fastxf_shared_type_##name), alignof(fastxf_shared_type_##name), #name, \
      __FILE__, __LINE__))
#define FASTXF_SHARED_ARRAY(type, name, count) FASTXF_SHARED(type[count], name)

template <typename T>
inline T* dynamic_shared() {
  return static_cast<T*>(emu::dynamic_shared_base());
}

// ------------------------------------------------------------ cp.async ----
inline void cp_async_16(void* smem_dst, const void* gmem_src, int src_bytes FASTXF_LOC_PARAMS) {
  emu::cp_async(smem_dst, gmem_src, 16, src_bytes, FASTXF_LOC);
}
inline void cp_async_commit(FASTXF_LOC_PARAMS_FIRST) { emu::cp_async_commit(FASTXF_LOC); }
template <int N>
inline void cp_async_wait(FASTXF_LOC_PARAMS_FIRST) {
  emu::cp_async_wait(N, FASTXF_LOC);
}

// ------------------------------------------------------------ ldmatrix ----
inline void ldmatrix_x1(uint32_t& r0, uint32_t addr FASTXF_LOC_PARAMS) {
  uint32_t r[4];
  emu::ldmatrix(1, false, addr, r, FASTXF_LOC);
  r0 = r[0];
}
inline void ldmatrix_x2(uint32_t& r0, uint32_t& r1, uint32_t addr FASTXF_LOC_PARAMS) {
  uint32_t r[4];
  emu::ldmatrix(2, false, addr, r, FASTXF_LOC);
  r0 = r[0];
  r1 = r[1];
}
inline void ldmatrix_x4(uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3, uint32_t addr FASTXF_LOC_PARAMS) {
  uint32_t r[4];
  emu::ldmatrix(4, false, addr, r, FASTXF_LOC);
  r0 = r[0];
  r1 = r[1];
  r2 = r[2];
  r3 = r[3];
}
inline void ldmatrix_x1_trans(uint32_t& r0, uint32_t addr FASTXF_LOC_PARAMS) {
  uint32_t r[4];
  emu::ldmatrix(1, true, addr, r, FASTXF_LOC);
  r0 = r[0];
}
inline void ldmatrix_x2_trans(uint32_t& r0, uint32_t& r1, uint32_t addr FASTXF_LOC_PARAMS) {
  uint32_t r[4];
  emu::ldmatrix(2, true, addr, r, FASTXF_LOC);
  r0 = r[0];
  r1 = r[1];
}
inline void ldmatrix_x4_trans(uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3,
                              uint32_t addr FASTXF_LOC_PARAMS) {
  uint32_t r[4];
  emu::ldmatrix(4, true, addr, r, FASTXF_LOC);
  r0 = r[0];
  r1 = r[1];
  r2 = r[2];
  r3 = r[3];
}

// ----------------------------------------------------------------- mma ----
template <typename T>
inline void mma_m16n8k16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1 FASTXF_LOC_PARAMS) {
  static_assert(std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>,
                "mma_m16n8k16 takes __half or __nv_bfloat16 inputs");
  emu::mma_m16n8k16(std::is_same_v<T, __nv_bfloat16>, c, a, b0, b1, FASTXF_LOC);
}

// ---------------------------------------------------------------- math ----
inline float ex2_approx(float x) { return emu::ex2_approx(x); }
inline float rcp_approx(float x) { return emu::rcp_approx(x); }

// ------------------------------------------------------ sync and warps ----
inline void sync_threads(FASTXF_LOC_PARAMS_FIRST) { emu::sync_threads(emu::Barrier::kPlain, 0, FASTXF_LOC); }
inline int sync_threads_count(int pred FASTXF_LOC_PARAMS) {
  return emu::sync_threads(emu::Barrier::kCount, pred, FASTXF_LOC);
}
inline int sync_threads_and(int pred FASTXF_LOC_PARAMS) {
  return emu::sync_threads(emu::Barrier::kAnd, pred, FASTXF_LOC);
}
inline int sync_threads_or(int pred FASTXF_LOC_PARAMS) {
  return emu::sync_threads(emu::Barrier::kOr, pred, FASTXF_LOC);
}
inline void sync_warp(unsigned mask = 0xffffffffu FASTXF_LOC_PARAMS) { emu::sync_warp(mask, FASTXF_LOC); }

template <typename T>
inline T emu_shfl(unsigned mask, T v, emu::Shfl mode, int arg, int width, const char* file, int line) {
  static_assert(sizeof(T) <= 8, "shuffles move at most 8 bytes");
  uint64_t bits = 0;
  __builtin_memcpy(&bits, &v, sizeof(T));
  bits = emu::shfl(mask, bits, mode, arg, width, file, line);
  T out;
  __builtin_memcpy(&out, &bits, sizeof(T));
  return out;
}
template <typename T>
inline T shfl_sync(unsigned mask, T v, int src_lane, int width = 32 FASTXF_LOC_PARAMS) {
  return emu_shfl(mask, v, emu::Shfl::kIdx, src_lane, width, FASTXF_LOC);
}
template <typename T>
inline T shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32 FASTXF_LOC_PARAMS) {
  return emu_shfl(mask, v, emu::Shfl::kXor, lane_mask, width, FASTXF_LOC);
}
template <typename T>
inline T shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32 FASTXF_LOC_PARAMS) {
  return emu_shfl(mask, v, emu::Shfl::kDown, static_cast<int>(delta), width, FASTXF_LOC);
}
template <typename T>
inline T shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32 FASTXF_LOC_PARAMS) {
  return emu_shfl(mask, v, emu::Shfl::kUp, static_cast<int>(delta), width, FASTXF_LOC);
}
inline unsigned ballot_sync(unsigned mask, int pred FASTXF_LOC_PARAMS) {
  return emu::vote(mask, pred, emu::Vote::kBallot, FASTXF_LOC);
}
inline bool any_sync(unsigned mask, int pred FASTXF_LOC_PARAMS) {
  return emu::vote(mask, pred, emu::Vote::kAny, FASTXF_LOC) != 0;
}
inline bool all_sync(unsigned mask, int pred FASTXF_LOC_PARAMS) {
  return emu::vote(mask, pred, emu::Vote::kAll, FASTXF_LOC) != 0;
}

// --------------------------------------------------------------- launch ----
#define FASTXF_LAUNCH(kernel, grid, block, smem, stream, ...) \
  ((void)(stream), ::fastxf::emu::launch(#kernel, kernel, grid, block, smem, __VA_ARGS__))

template <typename Kernel>
inline cudaError_t set_max_dynamic_shared_bytes(Kernel kernel, int bytes) {
  emu::set_max_dynamic_shared_bytes(reinterpret_cast<const void*>(kernel), bytes);
  return cudaSuccess;
}

#endif  // FASTXF_EMULATOR

// ------------------------------------------------------- both worlds ----
// Two floats as one .b32 mma operand of T (__half or __nv_bfloat16), `lo` in
// the low half (the lower k / column index), round to nearest even.
template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi);
template <>
__device__ __forceinline__ uint32_t pack2<__half>(float lo, float hi) {
  return static_cast<uint32_t>(__half_as_ushort(__float2half_rn(lo))) |
         (static_cast<uint32_t>(__half_as_ushort(__float2half_rn(hi))) << 16);
}
template <>
__device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
  return static_cast<uint32_t>(__bfloat16_as_ushort(__float2bfloat16_rn(lo))) |
         (static_cast<uint32_t>(__bfloat16_as_ushort(__float2bfloat16_rn(hi))) << 16);
}

// Full-warp reductions (every lane gets the result, bit-identical across lanes:
// the butterfly adds the same two operands on both partners).
__device__ __forceinline__ float warp_reduce_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_reduce_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ int warp_reduce_min(int v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = min(v, shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ int warp_reduce_max(int v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = max(v, shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

}  // namespace fastxf
