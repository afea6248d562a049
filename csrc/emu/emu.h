// Public API of fastxf's SIMT emulator: runs CUDA kernel templates, compiled by
// the host compiler with -DFASTXF_EMULATOR, on the CPU with compute-sanitizer
// style checking. Kernel code does not call this header directly: it uses
// csrc/cuda/primitives.cuh, which forwards here in the emulator. Host code uses
// launch() (through FASTXF_LAUNCH) and GlobalBuffer.
//
// Execution model:
//  - The grid runs CTA by CTA (CTAs spread over OS threads with
//    at::parallel_for; a CTA always runs whole on one OS thread). The threads
//    of a CTA are cooperative fibers on that OS thread, switched by a small
//    assembly routine (x86-64; ucontext elsewhere): a fiber runs until it
//    blocks at a barrier or warp collective, or exits.
//  - __syncthreads is a CTA barrier that every thread must reach at the same
//    call site; warp collectives (shuffles, votes, ldmatrix, mma, __syncwarp)
//    deposit each lane's operands in a per-warp slot and the last lane to
//    arrive computes the result for all lanes. A barrier some thread can never
//    reach (it exited, or waits elsewhere) is reported as an error, never a hang.
//
// Checking (the first finding stops the launch; launch() then throws a
// c10::Error, a RuntimeError in Python, naming kernel, block, thread, file:line):
//  - global accesses must fall inside a buffer registered with GlobalBuffer
//    (writes: a writable one), shared accesses inside one of the CTA's shared
//    allocations (static arrays and the dynamic block have guard gaps between
//    them); accesses must be aligned to their size (up to 16 bytes);
//  - shared memory is poisoned (0xff bytes) at CTA start and a read of a byte
//    no thread has written is an error;
//  - races: a shared byte written by one thread and read or written by another
//    with no barrier between them (__syncthreads, or __syncwarp within a warp)
//    is an error; atomics do not race with each other;
//  - cp.async: the source is read at issue, the destination lands at the
//    cp.async.wait_group that retires its group; touching the destination
//    before that is an error, as is leaving the kernel with copies in flight
//    that another thread then reads.
#pragma once

#include <cuda_runtime.h>  // dim3, uint3 (host-side definitions)

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

namespace fastxf {
namespace emu {

enum class Space : uint8_t { kGlobal, kShared, kGeneric };
enum class Op : uint8_t { kRead, kWrite, kAtomic };
enum class Barrier : uint8_t { kPlain, kCount, kAnd, kOr };
enum class Shfl : uint8_t { kIdx, kXor, kDown, kUp };
enum class Vote : uint8_t { kBallot, kAny, kAll };

// ------------------------------------------------------- thread identity ----
// The running fiber's coordinates (valid only inside an emulated kernel).
struct ThreadCoords {
  uint3 thread_idx;
  uint3 block_idx;
  dim3 block_dim;
  dim3 grid_dim;
};
extern thread_local const ThreadCoords* t_coords;
inline const ThreadCoords& coords() { return *t_coords; }

// --------------------------------------------------------------- memory ----
// Checks an access of `bytes` at `p` (alignment `align`, capped at 16) by the
// running thread and records it for the race detector. Returns true when the
// address is global memory (matters for Space::kGeneric atomics).
bool access(const void* p, size_t bytes, size_t align, Space space, Op op, const char* file, int line);

template <typename T>
inline T load_bytes(const T* p) {
  T v;
  std::memcpy(static_cast<void*>(&v), static_cast<const void*>(p), sizeof(T));
  return v;
}
template <typename T>
inline void store_bytes(T* p, const T& v) {
  std::memcpy(static_cast<void*>(p), static_cast<const void*>(&v), sizeof(T));
}

// Shared memory of the running CTA.
void* static_shared(const void* key, size_t bytes, size_t align, const char* name, const char* file, int line);
void* dynamic_shared_base();
uint32_t cvta_to_shared(const void* p, const char* file, int line);

// cp.async of `size` bytes (16), of which the first src_bytes come from `src`
// and the rest are zeros.
void cp_async(void* dst, const void* src, int size, int src_bytes, const char* file, int line);
void cp_async_commit(const char* file, int line);
void cp_async_wait(int n, const char* file, int line);

// ----------------------------------------------------- barriers, warps ----
int sync_threads(Barrier kind, int pred, const char* file, int line);
void sync_warp(unsigned mask, const char* file, int line);
uint64_t shfl(unsigned mask, uint64_t value, Shfl mode, int arg, int width, const char* file, int line);
unsigned vote(unsigned mask, int pred, Vote mode, const char* file, int line);
// ldmatrix.sync.aligned.m8n8.x{num}[.trans].shared.b16: out[0..num).
void ldmatrix(int num, bool trans, uint32_t addr, uint32_t* out, const char* file, int line);
// mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32, c += a b.
void mma_m16n8k16(bool bf16, float* c, const uint32_t* a, uint32_t b0, uint32_t b1, const char* file, int line);

float ex2_approx(float x);
float rcp_approx(float x);

// --------------------------------------------------------------- launch ----
// Registers [base, base + bytes) as global memory the kernels may touch, named
// `name` in error messages, for the lifetime of the object (host code, around
// launches). Buffers may not overlap.
class GlobalBuffer {
 public:
  GlobalBuffer(const void* base, size_t bytes, std::string name, bool writable = true);
  ~GlobalBuffer();
  GlobalBuffer(const GlobalBuffer&) = delete;
  GlobalBuffer& operator=(const GlobalBuffer&) = delete;

 private:
  const void* base_;
};

// Records cudaFuncAttributeMaxDynamicSharedMemorySize for a kernel: a launch
// with more than 48 KiB of shared memory checks that it was set high enough.
void set_max_dynamic_shared_bytes(const void* kernel, int bytes);

using KernelThunk = void (*)(void* ctx);
// Runs thunk(ctx) as every thread of every CTA; throws c10::Error on the first
// checker finding or on a launch configuration the GPU would refuse.
void launch_impl(const char* name, const void* kernel, dim3 grid, dim3 block, size_t dyn_smem, KernelThunk thunk,
                 void* ctx);

template <typename... P, typename... A>
void launch(const char* name, void (*kernel)(P...), dim3 grid, dim3 block, size_t dyn_smem, A&&... args) {
  static_assert(sizeof...(P) == sizeof...(A), "FASTXF_LAUNCH: wrong number of kernel arguments");
  // Arguments are converted to the parameter types once, as a CUDA launch
  // does; every thread then gets its own copy of them.
  struct Ctx {
    void (*kernel)(P...);
    std::tuple<std::decay_t<P>...> params;
  };
  Ctx ctx{kernel, std::tuple<std::decay_t<P>...>(std::forward<A>(args)...)};
  launch_impl(
      name, reinterpret_cast<const void*>(kernel), grid, block, dyn_smem,
      [](void* c) {
        Ctx* x = static_cast<Ctx*>(c);
        std::apply(x->kernel, x->params);
      },
      &ctx);
}

}  // namespace emu
}  // namespace fastxf
