// Memory checking of the emulator: global bounds against the registered
// buffers, shared bounds / initialisation / races against the per-byte shadow
// of the CTA's shared memory, and cp.async that lands at its wait_group.
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "emu/runtime.h"

namespace fastxf {
namespace emu {

using namespace detail;

namespace {

std::string hex(uintptr_t a) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "0x%llx", static_cast<unsigned long long>(a));
  return buf;
}

const char* op_name(Op op) {
  switch (op) {
    case Op::kRead: return "read";
    case Op::kWrite: return "write";
    case Op::kAtomic: return "atomic";
  }
  return "?";
}

std::string thread_name(int tid) {
  const dim3 b = exec().launch->block;
  const unsigned x = tid % b.x, y = (tid / b.x) % b.y, z = tid / (b.x * b.y);
  return "thread (" + std::to_string(x) + ", " + std::to_string(y) + ", " + std::to_string(z) + ")";
}

// Checks [a, a + n) against the registered global buffers.
void global_check(uintptr_t a, size_t n, Op op, const char* file, int line) {
  Executor& ex = exec();
  const Region* c = ex.last_region;
  if (c && a >= c->base && a + n <= c->base + c->bytes && (op == Op::kRead || c->writable)) return;
  const std::vector<Region>& rs = ex.launch->regions;
  // Last buffer with base <= a.
  auto it = std::upper_bound(rs.begin(), rs.end(), a, [](uintptr_t x, const Region& r) { return x < r.base; });
  const Region* r = it == rs.begin() ? nullptr : &*(it - 1);
  if (r && a >= r->base && a + n <= r->base + r->bytes) {
    ex.last_region = r;
    if (op != Op::kRead && !r->writable)
      fail(-1, file, line,
           std::string(op_name(op)) + " of " + std::to_string(n) + " bytes to read-only global buffer '" + r->name +
               "' at offset " + std::to_string(a - r->base));
    return;
  }
  std::string what = "out-of-bounds global " + std::string(op_name(op)) + " of " + std::to_string(n) +
                     " bytes at address " + hex(a) + ": ";
  const Region* next = it == rs.end() ? nullptr : &*it;
  if (r && a < r->base + r->bytes) {
    what += "offset " + std::to_string(a - r->base) + " of buffer '" + r->name + "' (" + std::to_string(r->bytes) +
            " bytes) runs past its end";
  } else if (r && (!next || a - (r->base + r->bytes) <= next->base - a)) {
    what += "offset " + std::to_string(a - r->base) + " of buffer '" + r->name + "' (" + std::to_string(r->bytes) +
            " bytes), past its end";
  } else if (next) {
    what += std::to_string(next->base - a) + " bytes before buffer '" + next->name + "' (" +
            std::to_string(next->bytes) + " bytes)";
  } else {
    what += "no global buffer is registered";
  }
  fail(-1, file, line, what);
}

bool same_warp(int a, int b) { return (a >> 5) == (b >> 5); }

[[noreturn]] void race(int tid, size_t off, Op op, int other, bool other_wrote, const char* file, int line) {
  std::string who;
  if (other == kMultiAny)
    who = "threads of several warps";
  else if (other & kMultiWarp)
    who = "several threads of warp " + std::to_string(other & 0x3ff);
  else
    who = thread_name(other & 0x3ff);
  fail(tid, file, line,
       "shared-memory race: " + std::string(op_name(op)) + " of " + describe_shared(off) + ", which " + who +
           (other_wrote ? " wrote" : " read") + " with no __syncthreads (or __syncwarp) in between");
}

}  // namespace

namespace detail {

std::string describe_shared(size_t off) {
  Executor& ex = exec();
  const size_t dyn = ex.launch->dyn_smem;
  auto rel = [](const std::string& name, size_t base, size_t bytes, size_t o) {
    if (o < base) return std::to_string(base - o) + " bytes before " + name;
    if (o < base + bytes) return name + " + " + std::to_string(o - base);
    return name + " + " + std::to_string(o - base) + ", past its end (size " + std::to_string(bytes) + ")";
  };
  // The allocation nearest to `off`.
  std::string best = rel("dynamic shared memory", 0, dyn, off);
  size_t best_dist = off < dyn ? 0 : off - dyn + 1;
  if (dyn == 0) best_dist = SIZE_MAX;
  for (const StaticAlloc& s : ex.statics) {
    const size_t d = off < s.offset ? s.offset - off : (off < s.offset + s.bytes ? 0 : off - s.offset - s.bytes + 1);
    if (d < best_dist) {
      best_dist = d;
      best = rel("'" + std::string(s.name) + "'", s.offset, s.bytes, off);
    }
  }
  return "shared byte " + std::to_string(off) + " (" + best + ")";
}

void shared_check(int tid, size_t off, size_t n, Op op, const char* file, int line) {
  Executor& ex = exec();
  if (off + n > ex.arena_cap) fail(tid, file, line, "out-of-bounds shared " + std::string(op_name(op)) + " at " + describe_shared(off));
  const uint32_t E = ex.epoch;
  const int w = tid >> 5;
  const uint32_t W = ex.warps[w].wsync;
  const bool atomic = op == Op::kAtomic;
  for (size_t i = off; i < off + n; ++i) {
    const uint8_t st = ex.state[i];
    if (!(st & kAlloc))
      fail(tid, file, line,
           "out-of-bounds shared " + std::string(op_name(op)) + " of " + std::to_string(n) + " bytes at " +
               describe_shared(i));
    if (st & kPending)
      fail(tid, file, line,
           std::string(op_name(op)) + " of " + describe_shared(i) +
               ", the destination of a cp.async not yet retired by cp.async.wait_group");
    if (op != Op::kWrite && !(st & kInit))
      fail(tid, file, line, std::string(op_name(op)) + " of never-written " + describe_shared(i));
    Rec& r = ex.recs[i];
    // Conflicts with the last write: another thread, same barrier interval,
    // not ordered by a __syncwarp of a common warp; two atomics never race.
    if (r.w_epoch == E) {
      const int wr = r.writer & 0x3ff;
      const bool wr_atomic = r.writer & kAtomicBit;
      if (wr != tid && !(atomic && wr_atomic) && !(same_warp(wr, tid) && r.w_wsync < W))
        race(tid, i, op, wr, true, file, line);
    }
    if (op == Op::kRead) {
      if (r.r_epoch != E) {
        r.r_epoch = E;
        r.reader = static_cast<uint16_t>(tid);
      } else if (r.reader != tid && r.reader != kMultiAny) {
        const int rw = (r.reader & kMultiWarp) ? (r.reader & 0x3ff) : (r.reader >> 5);
        r.reader = rw == w ? static_cast<uint16_t>(kMultiWarp | w) : kMultiAny;
      }
      r.r_wsync = W;
    } else {
      // Conflicts with earlier reads by other threads.
      if (r.r_epoch == E && r.reader != tid) {
        bool ordered = false;
        if (r.reader != kMultiAny) {
          const int rw = (r.reader & kMultiWarp) ? (r.reader & 0x3ff) : (r.reader >> 5);
          ordered = rw == w && r.r_wsync < W;
        }
        if (!ordered) race(tid, i, op, r.reader, false, file, line);
      }
      r.w_epoch = E;
      r.writer = static_cast<uint16_t>(tid | (atomic ? kAtomicBit : 0));
      r.w_wsync = W;
      ex.state[i] = st | kInit;
    }
  }
}

}  // namespace detail

bool access(const void* p, size_t bytes, size_t align, Space space, Op op, const char* file, int line) {
  Executor& ex = exec();
  const auto a = reinterpret_cast<uintptr_t>(p);
  const size_t al = std::min<size_t>(align, 16);
  const auto base = reinterpret_cast<uintptr_t>(ex.arena);
  const bool in_shared = a >= base && a < base + ex.arena_cap;
  if (space == Space::kGeneric) space = in_shared ? Space::kShared : Space::kGlobal;
  if (a % al != 0)
    fail(-1, file, line,
         "misaligned " + std::string(space == Space::kShared ? "shared " : "global ") + op_name(op) + " of " +
             std::to_string(bytes) + " bytes at " + (in_shared ? describe_shared(a - base) : hex(a)) +
             " (needs " + std::to_string(al) + "-byte alignment)");
  if (space == Space::kShared) {
    if (!in_shared) fail(-1, file, line, std::string("shared-memory ") + op_name(op) + " of a non-shared address " + hex(a));
    shared_check(ex.current->tid, a - base, bytes, op, file, line);
    return false;
  }
  if (in_shared) fail(-1, file, line, std::string("global-memory ") + op_name(op) + " of a shared-memory address");
  global_check(a, bytes, op, file, line);
  return true;
}

// -------------------------------------------------------------- cp.async ----
void cp_async(void* dst, const void* src, int size, int src_bytes, const char* file, int line) {
  Executor& ex = exec();
  Fiber& f = *ex.current;
  if (size != 4 && size != 8 && size != 16) fail(-1, file, line, "cp.async size must be 4, 8 or 16");
  if (src_bytes < 0 || src_bytes > size)
    fail(-1, file, line, "cp.async src-size " + std::to_string(src_bytes) + " outside [0, " + std::to_string(size) + "]");
  const auto d = reinterpret_cast<uintptr_t>(dst), base = reinterpret_cast<uintptr_t>(ex.arena);
  if (d < base || d >= base + ex.arena_cap) fail(-1, file, line, "cp.async destination is not shared memory");
  if (d % size != 0) fail(-1, file, line, "misaligned cp.async destination " + describe_shared(d - base));
  PendingCopy c;
  c.dst = static_cast<uint32_t>(d - base);
  c.group = f.open_group;
  c.size = static_cast<uint32_t>(size);
  std::memset(c.data, 0, sizeof(c.data));
  if (src_bytes > 0) {
    // The source is read now (a later write to it by the kernel would be a
    // bug the GPU does not define either).
    const auto s = reinterpret_cast<uintptr_t>(src);
    if (s % size != 0) fail(-1, file, line, "misaligned cp.async source " + hex(s));
    if (s >= base && s < base + ex.arena_cap) fail(-1, file, line, "cp.async source is shared memory");
    global_check(s, static_cast<size_t>(src_bytes), Op::kRead, file, line);
    std::memcpy(c.data, src, static_cast<size_t>(src_bytes));
  }
  // The destination counts as written by this thread now (a race with other
  // threads still reading the old contents in this barrier interval) and is
  // off limits until the wait.
  shared_check(f.tid, c.dst, c.size, Op::kWrite, file, line);
  for (uint32_t i = 0; i < c.size; ++i) ex.state[c.dst + i] |= kPending;
  f.pending.push_back(c);
}

void cp_async_commit(const char*, int) { ++exec().current->open_group; }

void cp_async_wait(int n, const char* file, int line) {
  Executor& ex = exec();
  Fiber& f = *ex.current;
  // Groups [0, open_group) are committed; all but the newest n retire.
  const int64_t limit = static_cast<int64_t>(f.open_group) - n;
  while (f.pending_head < f.pending.size() && static_cast<int64_t>(f.pending[f.pending_head].group) < limit) {
    const PendingCopy& c = f.pending[f.pending_head++];
    for (uint32_t i = 0; i < c.size; ++i) ex.state[c.dst + i] &= static_cast<uint8_t>(~kPending);
    shared_check(f.tid, c.dst, c.size, Op::kWrite, file, line);
    std::memcpy(ex.arena + c.dst, c.data, c.size);
  }
  if (f.pending_head == f.pending.size()) {
    f.pending.clear();
    f.pending_head = 0;
  }
}

// ------------------------------------------------------------------ math ----
// ex2.approx.ftz / rcp.approx.ftz: subnormal inputs and results flush to zero.
// The hardware is accurate to ~2 ulp; the emulator rounds correctly.
float ex2_approx(float x) {
  if (std::fpclassify(x) == FP_SUBNORMAL) x = 0.f;
  float y = std::exp2(x);
  if (std::fpclassify(y) == FP_SUBNORMAL) y = 0.f;
  return y;
}

float rcp_approx(float x) {
  if (std::fpclassify(x) == FP_SUBNORMAL) x = std::copysign(0.f, x);
  float y = 1.f / x;
  if (std::fpclassify(y) == FP_SUBNORMAL) y = std::copysign(0.f, y);
  return y;
}

}  // namespace emu
}  // namespace fastxf
