// Internal state of the emulator runtime (csrc/emu/*.cpp only; kernels and host
// code use emu.h). One Executor per OS thread runs CTAs one after another; the
// threads of the running CTA are its fibers.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "emu/emu.h"

namespace fastxf {
namespace emu {
namespace detail {

constexpr int kMaxThreads = 1024;
constexpr size_t kStaticSharedLimit = 48 * 1024;   // static __shared__ per block
constexpr size_t kDefaultSharedLimit = 48 * 1024;  // without the opt-in attribute
constexpr size_t kMaxSharedOptin = 232448;         // 227 KiB: sm_90 (H100 / H200) opt-in maximum
constexpr size_t kGuard = 64;                      // unallocated bytes around every shared allocation

// A registered global buffer.
struct Region {
  uintptr_t base;
  size_t bytes;
  std::string name;
  bool writable;
};

// Everything about one launch, shared (read-only but for the error) by the
// executors that run its CTAs.
struct Launch {
  const char* name;
  dim3 grid, block;
  size_t dyn_smem;
  int max_dyn_optin;  // set_max_dynamic_shared_bytes value, 0 when never called
  KernelThunk thunk;
  void* ctx;
  std::vector<Region> regions;  // sorted by base
  uint64_t id;
  std::atomic<bool> abort{false};
  std::mutex error_mutex;
  std::string error;
};

enum class State : uint8_t { kRunnable, kBarrier, kWarp, kDone };

struct PendingCopy {
  uint32_t dst;    // shared offset
  uint32_t group;  // commit group id
  uint32_t size;
  unsigned char data[16];
};

struct Fiber {
  void* sp = nullptr;  // saved stack pointer while switched out
#if !defined(__x86_64__)
  void* uctx = nullptr;  // ucontext_t (portable fallback)
#endif
  State state = State::kRunnable;
  ThreadCoords coords{};
  int tid = 0;  // linear thread index in the CTA
  // Where it waits (barrier or warp collective), for messages.
  const char* wait_file = nullptr;
  int wait_line = 0;
  Barrier bar_kind = Barrier::kPlain;
  int bar_pred = 0;
  // cp.async groups: copies in issue order, [pending_head, end) in flight.
  std::vector<PendingCopy> pending;
  size_t pending_head = 0;
  uint32_t open_group = 0;  // copies issued now belong to this group
};

// Per-lane operands of a warp collective.
struct Slot {
  uint64_t value;
  int32_t arg;
  int32_t width;
  uint32_t addr;
  int32_t pred;
  uint32_t a[4];
  uint32_t b[2];
  float c[4];
};
struct Result {
  uint64_t value;
  uint32_t r[4];
  float c[4];
};

struct Warp {
  unsigned arrived = 0;  // lanes waiting in the current collective
  unsigned mask = 0;
  unsigned exited = 0;   // lanes that left the kernel (or do not exist)
  int kind = 0;
  const char* file = nullptr;
  int line = 0;
  uint32_t wsync = 0;  // completed __syncwarp count (race detector)
  Slot slot[32];
  Result out[32];
};

// Race-detector record of one shared byte. Epochs count CTA barrier intervals
// and only grow (over all CTAs an executor runs), so records of earlier CTAs
// are stale by construction and need no reset.
struct Rec {
  uint32_t w_epoch;
  uint32_t r_epoch;
  uint32_t w_wsync;  // writer's warp __syncwarp count at the write
  uint32_t r_wsync;  // (latest) reader's warp __syncwarp count
  uint16_t writer;   // thread; kAtomicBit: by an atomic
  uint16_t reader;   // thread, or kMultiWarp | warp, or kMultiAny
};
constexpr uint16_t kAtomicBit = 0x8000;
constexpr uint16_t kMultiWarp = 0x4000;
constexpr uint16_t kMultiAny = 0xffff;

// Shadow state bits of one shared byte.
constexpr uint8_t kAlloc = 1;    // inside an allocation
constexpr uint8_t kInit = 2;     // written since CTA start
constexpr uint8_t kPending = 4;  // destination of a cp.async not yet waited for

struct StaticAlloc {
  const void* key;
  uint32_t offset;
  uint32_t bytes;
  const char* name;
  const char* file;
  int line;
};

struct Executor {
  Executor();
  ~Executor();

  // ---- launch scope
  Launch* launch = nullptr;
  uint64_t launch_id = 0;
  const Region* last_region = nullptr;  // the buffer of the last global access (most repeat it)
  int nthreads = 0;
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  char* stacks = nullptr;  // nthreads_cap stacks of kStackBytes (+ guard page)
  int stacks_cap = 0;
  std::vector<StaticAlloc> statics;
  size_t static_base = 0;  // offset of the first static allocation
  size_t static_end = 0;   // end of the last one
  size_t static_total = 0; // their bytes, as the GPU counts them
  // ---- shared memory of the running CTA and its shadow
  unsigned char* arena = nullptr;
  size_t arena_cap = 0;
  std::vector<uint8_t> state;
  std::vector<uint8_t> state_template;  // kAlloc bits of the launch's allocations
  std::vector<Rec> recs;
  // ---- running CTA
  uint3 block_idx{};
  uint32_t epoch = 0;
  int live = 0;
  Fiber* current = nullptr;
  void* sched_sp = nullptr;
#if !defined(__x86_64__)
  void* sched_uctx = nullptr;
#endif
  int bar_arrived = 0;
  int bar_true = 0;
  int bar_result = 0;
  bool failed = false;
  std::string error;

  void begin_launch(Launch* l);
  void run_cta(uint64_t linear_block);
  void shared_used_end(size_t* end) const;
};

extern thread_local Executor* t_exec;

[[noreturn]] void outside_kernel();
// The executor of the running kernel thread (an error outside a launch, e.g. a
// device helper called from host code).
inline Executor& exec() {
  Executor* e = t_exec;
  if (__builtin_expect(e == nullptr || e->current == nullptr, 0)) outside_kernel();
  return *e;
}

// Describes thread `tid` of the running CTA: "block (x, y, z), thread (x, y, z) (warp w, lane l)".
std::string where(int tid);
// Reports a checker finding for thread `tid` of the running CTA (-1: the
// running fiber) and leaves the kernel: the fiber switches to the scheduler and
// is never resumed; launch() then throws.
[[noreturn]] void fail(int tid, const char* file, int line, const std::string& what);
// Blocks the running fiber (its state already set) until the scheduler resumes it.
void block_current();
// Marks a fiber runnable again.
inline void wake(int tid) { exec().fibers[tid].state = State::kRunnable; }

// Shared-memory checking (memcheck.cpp) on behalf of thread `tid`.
void shared_check(int tid, size_t offset, size_t bytes, Op op, const char* file, int line);
std::string describe_shared(size_t offset);

}  // namespace detail
}  // namespace emu
}  // namespace fastxf
