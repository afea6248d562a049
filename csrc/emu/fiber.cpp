// Fibers, the CTA scheduler, __syncthreads, shared-memory allocation and the
// launch of the emulator runtime (see emu.h for the model).
//
// Why fibers with a hand-written switch: every warp collective (an mma, a
// shuffle) makes all 32 lanes block and resume, millions of times per kernel
// test. swapcontext costs a sigprocmask system call per switch; the switch
// below saves the callee-saved registers and the FP control words and swaps
// stack pointers (a few ns). OS threads per CUDA thread would cost a kernel
// round trip per switch and make the barrier bookkeeping racy.
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <sstream>

#include "emu/runtime.h"

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

namespace fastxf {
namespace emu {

thread_local const ThreadCoords* t_coords = nullptr;

namespace detail {

thread_local Executor* t_exec = nullptr;

namespace {

constexpr size_t kStackBytes = 256 * 1024;  // per fiber, lazily committed by the OS
constexpr size_t kPage = 4096;

std::mutex g_regions_mutex;
std::vector<Region> g_regions;  // sorted by base
std::mutex g_optin_mutex;
std::map<const void*, int> g_optin;
std::mutex g_launch_mutex;  // one launch at a time
std::atomic<uint64_t> g_launch_counter{0};

}  // namespace
}  // namespace detail
}  // namespace emu
}  // namespace fastxf

// ------------------------------------------------------------- switching ----
#if defined(__x86_64__)
extern "C" {
// Saves the callee-saved registers, MXCSR and the x87 control word on the
// current stack, stores the stack pointer in *save, switches to `next` and
// restores the same from there (System V x86-64 ABI).
void fastxf_emu_switch(void** save, void* next);
void fastxf_emu_trampoline();
__attribute__((visibility("hidden"))) void fastxf_emu_fiber_main(void* fiber);
}
asm(R"(
  .text
  .globl fastxf_emu_switch
  .hidden fastxf_emu_switch
  .type fastxf_emu_switch, @function
fastxf_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size fastxf_emu_switch, .-fastxf_emu_switch

  .globl fastxf_emu_trampoline
  .hidden fastxf_emu_trampoline
  .type fastxf_emu_trampoline, @function
fastxf_emu_trampoline:
  movq %r12, %rdi
  andq $-16, %rsp
  call fastxf_emu_fiber_main
  ud2
  .size fastxf_emu_trampoline, .-fastxf_emu_trampoline
)");
#else
extern "C" void fastxf_emu_fiber_main(void* fiber);
static void fastxf_emu_uctx_entry(unsigned lo, unsigned hi) {
  fastxf_emu_fiber_main(reinterpret_cast<void*>((static_cast<uintptr_t>(hi) << 32) | lo));
}
#endif

namespace fastxf {
namespace emu {
namespace detail {

namespace {

// Prepares fiber `f` to start the kernel on its stack.
void init_fiber(Executor& ex, Fiber& f) {
  char* lo = ex.stacks + static_cast<size_t>(f.tid) * (kStackBytes + kPage) + kPage;  // above its guard page
#if defined(__x86_64__)
  uintptr_t top = (reinterpret_cast<uintptr_t>(lo) + kStackBytes) & ~uintptr_t{15};
  uint64_t* sp = reinterpret_cast<uint64_t*>(top) - 8;
  // Frame popped by fastxf_emu_switch: control words, r15, r14, r13, r12 (the
  // fiber, for the trampoline), rbx, rbp, return address.
  uint32_t ctl[2];
  asm volatile("stmxcsr %0" : "=m"(ctl[0]));
  asm volatile("fnstcw %0" : "=m"(ctl[1]));
  sp[0] = static_cast<uint64_t>(ctl[0]) | (static_cast<uint64_t>(ctl[1] & 0xffff) << 32);
  sp[1] = sp[2] = sp[3] = 0;
  sp[4] = reinterpret_cast<uint64_t>(&f);
  sp[5] = sp[6] = 0;
  sp[7] = reinterpret_cast<uint64_t>(&fastxf_emu_trampoline);
  f.sp = sp;
#else
  if (!f.uctx) f.uctx = new ucontext_t;
  ucontext_t* u = static_cast<ucontext_t*>(f.uctx);
  getcontext(u);
  u->uc_stack.ss_sp = lo;
  u->uc_stack.ss_size = kStackBytes;
  u->uc_link = nullptr;
  const uintptr_t p = reinterpret_cast<uintptr_t>(&f);
  makecontext(u, reinterpret_cast<void (*)()>(fastxf_emu_uctx_entry), 2, static_cast<unsigned>(p),
              static_cast<unsigned>(p >> 32));
#endif
}

void switch_to_fiber(Executor& ex, Fiber& f) {
#if defined(__x86_64__)
  fastxf_emu_switch(&ex.sched_sp, f.sp);
#else
  if (!ex.sched_uctx) ex.sched_uctx = new ucontext_t;
  swapcontext(static_cast<ucontext_t*>(ex.sched_uctx), static_cast<ucontext_t*>(f.uctx));
#endif
}

void switch_to_scheduler(Executor& ex, Fiber& f) {
#if defined(__x86_64__)
  fastxf_emu_switch(&f.sp, ex.sched_sp);
#else
  swapcontext(static_cast<ucontext_t*>(f.uctx), static_cast<ucontext_t*>(ex.sched_uctx));
#endif
}

// Leaves the running fiber `f` (blocked or finished) for the next runnable
// fiber in thread order, directly rather than through the scheduler (half the
// switches); to the scheduler when none is runnable (all done, or deadlock).
void switch_away(Executor& ex, Fiber& f) {
  const int n = ex.nthreads;
  int t = f.tid;
  for (int k = 1; k < n; ++k) {
    if (++t == n) t = 0;
    Fiber& g = ex.fibers[t];
    if (g.state != State::kRunnable) continue;
    ex.current = &g;
    t_coords = &g.coords;
#if defined(__x86_64__)
    fastxf_emu_switch(&f.sp, g.sp);
#else
    swapcontext(static_cast<ucontext_t*>(f.uctx), static_cast<ucontext_t*>(g.uctx));
#endif
    return;
  }
  switch_to_scheduler(ex, f);
}

std::string dim_str(unsigned x, unsigned y, unsigned z) {
  return "(" + std::to_string(x) + ", " + std::to_string(y) + ", " + std::to_string(z) + ")";
}

// "threads 0-31" style lists of thread indices.
std::string ranges(const std::vector<int>& ids) {
  std::string s;
  for (size_t i = 0; i < ids.size();) {
    size_t j = i;
    while (j + 1 < ids.size() && ids[j + 1] == ids[j] + 1) ++j;
    if (!s.empty()) s += ", ";
    s += std::to_string(ids[i]);
    if (j > i) s += "-" + std::to_string(ids[j]);
    i = j + 1;
  }
  return s;
}

const char* barrier_name(Barrier k) {
  switch (k) {
    case Barrier::kPlain: return "__syncthreads";
    case Barrier::kCount: return "__syncthreads_count";
    case Barrier::kAnd: return "__syncthreads_and";
    case Barrier::kOr: return "__syncthreads_or";
  }
  return "?";
}

std::string site(const char* file, int line) {
  return std::string(file ? file : "?") + ":" + std::to_string(line);
}

// Message for a CTA in which no fiber can run although some are not done.
std::string deadlock_report(Executor& ex) {
  std::map<std::string, std::vector<int>> groups;  // description -> linear thread ids
  // Only this launch's threads: `fibers` is a pool kept across launches, and
  // fibers past nthreads still hold the states of an earlier, larger launch.
  for (int t = 0; t < ex.nthreads; ++t) {
    const Fiber& f = ex.fibers[t];
    std::string d;
    switch (f.state) {
      case State::kBarrier: d = std::string("wait at ") + barrier_name(f.bar_kind) + " " + site(f.wait_file, f.wait_line); break;
      case State::kWarp: d = "wait in a warp collective at " + site(f.wait_file, f.wait_line); break;
      case State::kDone: d = "exited"; break;
      case State::kRunnable: d = "runnable"; break;
    }
    groups[d].push_back(f.tid);
  }
  std::string s;
  for (auto& [d, ids] : groups) s += "\n    threads " + ranges(ids) + ": " + d;
  return s;
}

}  // namespace

[[noreturn]] void outside_kernel() {
  TORCH_CHECK(false, "fastxf emulator: a device primitive (memory access, barrier, warp collective, shared memory) "
                     "was called outside an emulated kernel");
}

std::string where(int tid) {
  Executor& ex = exec();
  const Fiber& f = ex.fibers[tid];
  return "block " + dim_str(ex.block_idx.x, ex.block_idx.y, ex.block_idx.z) + ", thread " +
         dim_str(f.coords.thread_idx.x, f.coords.thread_idx.y, f.coords.thread_idx.z) + " (warp " +
         std::to_string(tid / 32) + ", lane " + std::to_string(tid % 32) + ")";
}

[[noreturn]] void fail(int tid, const char* file, int line, const std::string& what) {
  Executor* exp = t_exec;
  if (exp == nullptr || exp->current == nullptr) {
    TORCH_CHECK(false, "fastxf emulator: ", what, " (outside a running kernel, at ", site(file, line), ")");
  }
  Executor& ex = *exp;
  if (tid < 0) tid = ex.current->tid;
  ex.failed = true;
  ex.error = "fastxf emulator: " + what + "\n  kernel " + ex.launch->name + ", " + where(tid) + ", at " +
             site(file, line);
  Fiber& f = *ex.current;
  f.state = State::kDone;
  switch_to_scheduler(ex, f);
  std::abort();  // never resumed
}

void block_current() {
  Executor& ex = exec();
  switch_away(ex, *ex.current);
}

Executor::Executor() = default;

Executor::~Executor() {
  if (stacks) munmap(stacks, static_cast<size_t>(stacks_cap) * (kStackBytes + kPage));
  std::free(arena);
#if !defined(__x86_64__)
  for (Fiber& f : fibers) delete static_cast<ucontext_t*>(f.uctx);
  delete static_cast<ucontext_t*>(sched_uctx);
#endif
}

void Executor::begin_launch(Launch* l) {
  launch = l;
  last_region = nullptr;
  if (launch_id == l->id) return;
  launch_id = l->id;
  nthreads = static_cast<int>(l->block.x * l->block.y * l->block.z);
  if (stacks_cap < nthreads) {
    if (stacks) munmap(stacks, static_cast<size_t>(stacks_cap) * (kStackBytes + kPage));
    stacks = nullptr;  // no dangling pool if the mmap below fails
    stacks_cap = 0;
    const size_t bytes = static_cast<size_t>(nthreads) * (kStackBytes + kPage);
    void* m = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    TORCH_CHECK(m != MAP_FAILED, "fastxf emulator: cannot map ", bytes, " bytes of fiber stacks");
    stacks = static_cast<char*>(m);
    stacks_cap = nthreads;
    // A guard page below every stack turns an overflow into a crash at the
    // fault rather than silent corruption of the neighbouring fiber.
    for (int i = 0; i < nthreads; ++i) mprotect(stacks + static_cast<size_t>(i) * (kStackBytes + kPage), kPage, PROT_NONE);
  }
  if (static_cast<int>(fibers.size()) < nthreads) fibers.resize(nthreads);
  const int nwarps = (nthreads + 31) / 32;
  if (static_cast<int>(warps.size()) < nwarps) warps.resize(nwarps);
  for (int t = 0; t < nthreads; ++t) {
    Fiber& f = fibers[t];
    f.tid = t;
    f.coords.thread_idx = uint3{static_cast<unsigned>(t % l->block.x),
                                static_cast<unsigned>((t / l->block.x) % l->block.y),
                                static_cast<unsigned>(t / (l->block.x * l->block.y))};
    f.coords.block_dim = l->block;
    f.coords.grid_dim = l->grid;
    f.pending.reserve(64);
  }
  // Shared memory: the dynamic block at offset 0, the static arrays after a
  // guard gap, each followed by another (allocated as kernels declare them).
  statics.clear();
  static_base = (l->dyn_smem + kGuard + 127) & ~size_t{127};
  static_end = static_base;
  static_total = 0;
  const size_t cap = static_base + kStaticSharedLimit + 64 * kGuard + 4096;
  if (arena_cap < cap) {
    std::free(arena);
    arena = static_cast<unsigned char*>(std::aligned_alloc(4096, (cap + 4095) & ~size_t{4095}));
    TORCH_CHECK(arena != nullptr, "fastxf emulator: cannot allocate ", cap, " bytes of shared memory");
    arena_cap = cap;
    state.assign(cap, 0);
    recs.assign(cap, Rec{});
  }
  state_template.assign(arena_cap, 0);
  std::fill(state_template.begin(), state_template.begin() + l->dyn_smem, kAlloc);
  // run_cta refreshes the shadow only up to the end of this launch's
  // allocations; past it (e.g. the guard after a static array declared during
  // the first CTA) bytes would keep the kAlloc / kInit / kPending bits of an
  // earlier launch with another layout, or of one that failed with copies in
  // flight, and an out-of-bounds access there would go unreported.
  std::fill(state.begin(), state.end(), uint8_t{0});
}

void Executor::run_cta(uint64_t linear) {
  const Launch& l = *launch;
  block_idx = uint3{static_cast<unsigned>(linear % l.grid.x), static_cast<unsigned>((linear / l.grid.x) % l.grid.y),
                    static_cast<unsigned>(linear / (static_cast<uint64_t>(l.grid.x) * l.grid.y))};
  // Fresh shared memory: poisoned (0xff: NaN in every float format) and
  // unwritten, with the allocations known so far.
  const size_t used = std::max(static_end, static_cast<size_t>(l.dyn_smem));
  std::memset(arena, 0xff, used);
  std::memcpy(state.data(), state_template.data(), used);
  ++epoch;
  for (int w = 0; w < (nthreads + 31) / 32; ++w) {
    Warp& wp = warps[w];
    wp.arrived = 0;
    const int lanes = std::min(32, nthreads - 32 * w);
    wp.exited = lanes == 32 ? 0u : ~((1u << lanes) - 1u);  // lanes past blockDim never exist
  }
  for (int t = 0; t < nthreads; ++t) {
    Fiber& f = fibers[t];
    f.state = State::kRunnable;
    f.coords.block_idx = block_idx;
    f.pending.clear();
    f.pending_head = 0;
    f.open_group = 0;
    init_fiber(*this, f);
  }
  live = nthreads;
  bar_arrived = bar_true = 0;
  failed = false;
  // Fibers hand over to each other (switch_away); control comes back here
  // only when none is runnable, or on a finding.
  for (int t = 0; live > 0;) {
    while (t < nthreads && fibers[t].state != State::kRunnable) ++t;
    if (t == nthreads) {
      t = 0;
      while (t < nthreads && fibers[t].state != State::kRunnable) ++t;
      if (t == nthreads) break;
    }
    current = &fibers[t];
    t_coords = &fibers[t].coords;
    switch_to_fiber(*this, fibers[t]);
    current = nullptr;
    t_coords = nullptr;
    if (failed) return;
  }
  if (live > 0) {
    failed = true;
    error = std::string("fastxf emulator: deadlock: no thread of the block can proceed (a barrier or warp "
                        "collective that some thread never reaches)\n  kernel ") +
            l.name + ", block " + dim_str(block_idx.x, block_idx.y, block_idx.z) + ":" + deadlock_report(*this);
  }
}

}  // namespace detail

// ------------------------------------------------------- fiber entry ----
}  // namespace emu
}  // namespace fastxf

extern "C" void fastxf_emu_fiber_main(void* arg) {
  using namespace fastxf::emu::detail;
  Fiber& f = *static_cast<Fiber*>(arg);
  Executor& ex = exec();
  // fail() never returns to this fiber, so it is called after the handler:
  // leaving from inside a catch block would skip __cxa_end_catch and leave the
  // exception on this OS thread's caught-exception stack for later launches.
  std::string thrown;
  try {
    ex.launch->thunk(ex.launch->ctx);
  } catch (const std::exception& e) {
    thrown = std::string("exception thrown by the kernel: ") + e.what();
  } catch (...) {
    thrown = "unknown exception thrown by the kernel";
  }
  if (!thrown.empty()) fail(f.tid, "?", 0, thrown);
  f.state = State::kDone;
  --ex.live;
  ex.warps[f.tid / 32].exited |= 1u << (f.tid % 32);
  switch_away(ex, f);
  std::abort();  // a finished fiber is never resumed
}

namespace fastxf {
namespace emu {

using namespace detail;

// ------------------------------------------------------------- barriers ----
int sync_threads(Barrier kind, int pred, const char* file, int line) {
  Executor& ex = exec();
  Fiber& f = *ex.current;
  f.bar_kind = kind;
  f.bar_pred = pred != 0;
  f.wait_file = file;
  f.wait_line = line;
  ++ex.bar_arrived;
  ex.bar_true += pred != 0;
  if (ex.bar_arrived < ex.nthreads) {
    f.state = State::kBarrier;
    block_current();
    return ex.bar_result;
  }
  // Everyone is here: all at the same barrier (same call site and kind)?
  for (const Fiber& o : ex.fibers) {
    if (&o - ex.fibers.data() >= ex.nthreads) break;
    if (&o == &f) continue;
    if (o.wait_line != line || o.bar_kind != kind || std::strcmp(o.wait_file, file) != 0) {
      std::vector<int> here, there;
      for (int t = 0; t < ex.nthreads; ++t) {
        const Fiber& q = ex.fibers[t];
        (q.wait_line == line && q.bar_kind == kind && std::strcmp(q.wait_file, file) == 0 ? here : there).push_back(t);
      }
      fail(-1, file, line,
           std::string("divergent ") + barrier_name(kind) + ": threads " + ranges(here) + " wait here, threads " +
               ranges(there) + " at " + barrier_name(o.bar_kind) + " " + site(o.wait_file, o.wait_line));
    }
  }
  switch (kind) {
    case Barrier::kPlain: ex.bar_result = 0; break;
    case Barrier::kCount: ex.bar_result = ex.bar_true; break;
    case Barrier::kAnd: ex.bar_result = ex.bar_true == ex.nthreads; break;
    case Barrier::kOr: ex.bar_result = ex.bar_true > 0; break;
  }
  ex.bar_arrived = ex.bar_true = 0;
  ++ex.epoch;  // a new barrier interval for the race detector
  for (int t = 0; t < ex.nthreads; ++t)
    if (ex.fibers[t].state == State::kBarrier) ex.fibers[t].state = State::kRunnable;
  return ex.bar_result;
}

// --------------------------------------------------------- shared memory ----
void* static_shared(const void* key, size_t bytes, size_t align, const char* name, const char* file, int line) {
  Executor& ex = exec();
  for (const StaticAlloc& s : ex.statics)
    if (s.key == key) return ex.arena + s.offset;
  const size_t a = std::max<size_t>(align, 16);
  const size_t off = (ex.static_end + kGuard + a - 1) & ~(a - 1);
  ex.static_total += bytes;
  if (ex.static_total > kStaticSharedLimit || off + bytes + kGuard > ex.arena_cap)
    fail(-1, file, line,
         "static shared memory of the block exceeds 48 KiB with '" + std::string(name) + "' (" +
             std::to_string(bytes) + " bytes)");
  const size_t total = ex.static_total + ex.launch->dyn_smem;
  // As on the GPU: past 48 KiB in all, the dynamic part must have been opted in.
  if (total > kDefaultSharedLimit && static_cast<size_t>(ex.launch->max_dyn_optin) < ex.launch->dyn_smem)
    fail(-1, file, line,
         "static (" + std::to_string(ex.static_total) + " bytes) + dynamic (" + std::to_string(ex.launch->dyn_smem) +
             " bytes) shared memory exceed 48 KiB without set_max_dynamic_shared_bytes (the launch would fail)");
  if (total > kMaxSharedOptin)
    fail(-1, file, line, "static + dynamic shared memory (" + std::to_string(total) + " bytes) exceed 227 KiB");
  ex.statics.push_back(StaticAlloc{key, static_cast<uint32_t>(off), static_cast<uint32_t>(bytes), name, file, line});
  ex.static_end = off + bytes;
  std::fill(ex.state_template.begin() + off, ex.state_template.begin() + off + bytes, kAlloc);
  std::fill(ex.state.begin() + off, ex.state.begin() + off + bytes, kAlloc);
  std::memset(ex.arena + off, 0xff, bytes);
  return ex.arena + off;
}

void* dynamic_shared_base() { return exec().arena; }

uint32_t cvta_to_shared(const void* p, const char* file, int line) {
  Executor& ex = exec();
  const auto a = reinterpret_cast<uintptr_t>(p), base = reinterpret_cast<uintptr_t>(ex.arena);
  if (a < base || a >= base + ex.arena_cap) fail(-1, file, line, "cvta_to_shared of an address outside shared memory");
  return static_cast<uint32_t>(a - base);
}

// --------------------------------------------------------------- launch ----
GlobalBuffer::GlobalBuffer(const void* base, size_t bytes, std::string name, bool writable) : base_(base) {
  std::lock_guard<std::mutex> g(g_regions_mutex);
  const auto b = reinterpret_cast<uintptr_t>(base);
  for (const Region& r : g_regions) {
    TORCH_CHECK(bytes == 0 || r.bytes == 0 || b + bytes <= r.base || r.base + r.bytes <= b,
                "fastxf emulator: global buffer '", name, "' overlaps '", r.name, "'");
  }
  g_regions.push_back(Region{b, bytes, std::move(name), writable});
  std::sort(g_regions.begin(), g_regions.end(), [](const Region& x, const Region& y) { return x.base < y.base; });
}

GlobalBuffer::~GlobalBuffer() {
  std::lock_guard<std::mutex> g(g_regions_mutex);
  const auto b = reinterpret_cast<uintptr_t>(base_);
  for (auto it = g_regions.begin(); it != g_regions.end(); ++it) {
    if (it->base == b) {
      g_regions.erase(it);
      return;
    }
  }
}

void set_max_dynamic_shared_bytes(const void* kernel, int bytes) {
  TORCH_CHECK(bytes >= 0 && static_cast<size_t>(bytes) <= kMaxSharedOptin,
              "fastxf emulator: cudaFuncAttributeMaxDynamicSharedMemorySize = ", bytes,
              " exceeds the device maximum ", kMaxSharedOptin);
  std::lock_guard<std::mutex> g(g_optin_mutex);
  g_optin[kernel] = bytes;
}

void launch_impl(const char* name, const void* kernel, dim3 grid, dim3 block, size_t dyn_smem, KernelThunk thunk,
                 void* ctx) {
  const uint64_t nthreads = static_cast<uint64_t>(block.x) * block.y * block.z;
  TORCH_CHECK(nthreads >= 1 && nthreads <= kMaxThreads && block.x <= 1024 && block.y <= 1024 && block.z <= 64,
              "fastxf emulator: launch of ", name, " with block (", block.x, ", ", block.y, ", ", block.z,
              "): invalid configuration (at most 1024 threads, z <= 64)");
  TORCH_CHECK(grid.x >= 1 && grid.y >= 1 && grid.z >= 1 && grid.x <= 2147483647u && grid.y <= 65535 &&
                  grid.z <= 65535,
              "fastxf emulator: launch of ", name, " with grid (", grid.x, ", ", grid.y, ", ", grid.z,
              "): invalid configuration (x < 2^31, y and z <= 65535, none 0)");
  int optin = 0;
  {
    std::lock_guard<std::mutex> g(g_optin_mutex);
    auto it = g_optin.find(kernel);
    if (it != g_optin.end()) optin = it->second;
  }
  TORCH_CHECK(dyn_smem <= kDefaultSharedLimit || dyn_smem <= static_cast<size_t>(optin),
              "fastxf emulator: launch of ", name, " with ", dyn_smem,
              " bytes of dynamic shared memory needs set_max_dynamic_shared_bytes(kernel, >= ", dyn_smem,
              ") first (it was ", optin, "); the GPU launch would fail");

  std::lock_guard<std::mutex> launch_lock(g_launch_mutex);
  Launch l;
  l.name = name;
  l.grid = grid;
  l.block = block;
  l.dyn_smem = dyn_smem;
  l.max_dyn_optin = optin;
  l.thunk = thunk;
  l.ctx = ctx;
  l.id = ++g_launch_counter;
  {
    std::lock_guard<std::mutex> g(g_regions_mutex);
    l.regions = g_regions;
  }
  const int64_t nblocks = static_cast<int64_t>(grid.x) * grid.y * grid.z;

  auto run_range = [&](int64_t begin, int64_t end) {
    thread_local Executor executor;
    // Restores this OS thread's state even when begin_launch throws (out of
    // memory): a later launch must not find a stale executor or launch here.
    struct Restore {
      Executor& ex;
      Executor* saved;
      ~Restore() {
        ex.launch = nullptr;
        ex.current = nullptr;
        t_exec = saved;
        t_coords = nullptr;
      }
    } restore{executor, t_exec};
    t_exec = &executor;
    executor.begin_launch(&l);
    for (int64_t b = begin; b < end && !l.abort.load(std::memory_order_relaxed); ++b) {
      executor.run_cta(static_cast<uint64_t>(b));
      if (executor.failed) {
        std::lock_guard<std::mutex> g(l.error_mutex);
        if (l.error.empty()) l.error = executor.error;
        l.abort = true;
        break;
      }
    }
  };
  // FASTXF_EMU_THREADS=1 runs the blocks in order on the calling thread
  // (reproducible first finding when several blocks have one).
  static const int env_threads = [] {
    const char* s = std::getenv("FASTXF_EMU_THREADS");
    return s ? std::atoi(s) : 0;
  }();
  if (env_threads == 1 || nblocks == 1 || at::get_num_threads() == 1 || at::in_parallel_region()) {
    run_range(0, nblocks);
  } else {
    at::parallel_for(0, nblocks, 1, run_range);
  }
  TORCH_CHECK(l.error.empty(), l.error);
}

}  // namespace emu
}  // namespace fastxf
