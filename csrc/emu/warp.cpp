// Warp collectives of the emulator: every lane deposits its operands in its
// slot of the warp and blocks; the last lane to arrive computes the results of
// all lanes (per the PTX ISA) into their result slots and wakes them. A lane
// reads its result before it can join the next collective, so one set of slots
// per warp is enough.
//
// Layouts, written from the PTX ISA (not from the kernels); lane l, g = l / 4,
// t = l % 4, every .b32 register two 16-bit elements, the low half first:
//  - ldmatrix .m8n8 .x1/.x2/.x4 .b16: lanes 8i..8i+7 hold the addresses of rows
//    0..7 of matrix i (16 bytes each). Lane l receives in register i the
//    elements (row g, cols 2t, 2t+1) of matrix i; with .trans, the elements
//    (row 2t, col g) and (row 2t+1, col g).
//  - mma.m16n8k16.row.col, f16 / bf16 -> f32:
//      A 16x16: a0 = (g, 2t..2t+1), a1 = (g+8, 2t..), a2 = (g, 2t+8..), a3 = (g+8, 2t+8..)
//      B 16x8:  b0 = (k = 2t..2t+1, n = g), b1 = (k = 2t+8..2t+9, n = g)
//      C/D 16x8: c0, c1 = (g, 2t..2t+1), c2, c3 = (g+8, 2t..2t+1)
//    The products of 16-bit inputs are exact in fp32; the emulator sums the 16
//    products and c in double and rounds once (the tensor core's internal
//    rounding of the sum is unspecified, and close to this).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <string>
#include <vector>

#include "emu/runtime.h"

namespace fastxf {
namespace emu {

using namespace detail;

namespace {

enum Kind : int {
  kShflIdx = 1,
  kShflXor,
  kShflDown,
  kShflUp,
  kBallot,
  kAny,
  kAll,
  kSyncWarp,
  kLdm1,
  kLdm2,
  kLdm4,
  kLdm1T,
  kLdm2T,
  kLdm4T,
  kMmaF16,
  kMmaBf16,
};

const char* kind_name(int k) {
  switch (k) {
    case kShflIdx: return "__shfl_sync";
    case kShflXor: return "__shfl_xor_sync";
    case kShflDown: return "__shfl_down_sync";
    case kShflUp: return "__shfl_up_sync";
    case kBallot: return "__ballot_sync";
    case kAny: return "__any_sync";
    case kAll: return "__all_sync";
    case kSyncWarp: return "__syncwarp";
    case kLdm1: return "ldmatrix.x1";
    case kLdm2: return "ldmatrix.x2";
    case kLdm4: return "ldmatrix.x4";
    case kLdm1T: return "ldmatrix.x1.trans";
    case kLdm2T: return "ldmatrix.x2.trans";
    case kLdm4T: return "ldmatrix.x4.trans";
    case kMmaF16: return "mma.m16n8k16.f16";
    case kMmaBf16: return "mma.m16n8k16.bf16";
  }
  return "?";
}

std::string hexmask(unsigned m) {
  char buf[16];
  std::snprintf(buf, sizeof(buf), "0x%08x", m);
  return buf;
}

// Joins the current collective of the running lane's warp (after the lane
// filled its slot). Returns true on the lane that completes it: that lane must
// compute the results and call release().
bool join(Warp& w, int lane, int kind, unsigned mask, const char* file, int line) {
  if (!((mask >> lane) & 1u))
    fail(-1, file, line, std::string(kind_name(kind)) + " with mask " + hexmask(mask) + " that excludes the calling lane");
  if (mask & w.exited)
    fail(-1, file, line,
         std::string(kind_name(kind)) + " with mask " + hexmask(mask) + " names lanes that have exited or do not " +
             "exist (the block's last warp is partial): " + hexmask(mask & w.exited));
  if (w.arrived == 0) {
    w.kind = kind;
    w.mask = mask;
    w.file = file;
    w.line = line;
  } else if (w.kind != kind || w.mask != mask) {
    fail(-1, file, line,
         std::string("warp collective mismatch: this lane calls ") + kind_name(kind) + " (mask " + hexmask(mask) +
             ") while lanes " + hexmask(w.arrived) + " wait in " + kind_name(w.kind) + " (mask " + hexmask(w.mask) +
             ") at " + w.file + ":" + std::to_string(w.line));
  }
  w.arrived |= 1u << lane;
  return w.arrived == w.mask;
}

// Completes (last lane) or waits for the collective.
void finish(Warp& w, int warp, bool last, const char* file, int line) {
  Executor& ex = exec();
  if (last) {
    const unsigned m = w.mask & ~(1u << (ex.current->tid & 31));
    w.arrived = 0;
    for (int l = 0; l < 32; ++l)
      if ((m >> l) & 1u) wake(warp * 32 + l);
    return;
  }
  Fiber& f = *ex.current;
  f.state = State::kWarp;
  f.wait_file = file;
  f.wait_line = line;
  block_current();
}

// fp16 -> fp32 for all 65536 bit patterns (cuda_fp16.h's host conversion is
// bit manipulation in software; an mma converts 384 operands).
const float* half_table() {
  static const std::vector<float> table = [] {
    std::vector<float> t(65536);
    for (uint32_t i = 0; i < 65536; ++i) {
      __half_raw r;
      r.x = static_cast<unsigned short>(i);
      t[i] = __half2float(__half(r));
    }
    return t;
  }();
  return table.data();
}

inline float h2f(uint16_t bits, bool bf16, const float* half_lut) {
  if (bf16) {
    const uint32_t u = static_cast<uint32_t>(bits) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
  return half_lut[bits];
}

}  // namespace

uint64_t shfl(unsigned mask, uint64_t value, Shfl mode, int arg, int width, const char* file, int line) {
  Executor& ex = exec();
  const int tid = ex.current->tid, warp = tid >> 5, lane = tid & 31;
  Warp& w = ex.warps[warp];
  if (width < 1 || width > 32 || (width & (width - 1)))
    fail(-1, file, line, "shuffle width " + std::to_string(width) + " is not a power of two in [1, 32]");
  const int kind = kShflIdx + static_cast<int>(mode);
  Slot& s = w.slot[lane];
  s.value = value;
  s.arg = arg;
  s.width = width;
  const bool last = join(w, lane, kind, mask, file, line);
  if (last) {
    for (int l = 0; l < 32; ++l) {
      if (!((w.mask >> l) & 1u)) continue;
      const Slot& sl = w.slot[l];
      const int wd = sl.width, first = l & ~(wd - 1), end = first + wd;
      int src = l;
      switch (mode) {
        case Shfl::kIdx: src = first + (sl.arg & (wd - 1)); break;
        case Shfl::kXor: src = l ^ (sl.arg & 31); if (src >= end) src = l; break;
        case Shfl::kDown: src = l + sl.arg; if (src >= end) src = l; break;
        case Shfl::kUp: src = l - sl.arg; if (src < first) src = l; break;
      }
      if (!((w.mask >> src) & 1u))
        fail(warp * 32 + l, file, line,
             std::string(kind_name(kind)) + " reads lane " + std::to_string(src) + ", outside the mask " +
                 hexmask(w.mask) + " (undefined on the GPU)");
      w.out[l].value = w.slot[src].value;
    }
  }
  finish(w, warp, last, file, line);
  return w.out[lane].value;
}

unsigned vote(unsigned mask, int pred, Vote mode, const char* file, int line) {
  Executor& ex = exec();
  const int tid = ex.current->tid, warp = tid >> 5, lane = tid & 31;
  Warp& w = ex.warps[warp];
  const int kind = kBallot + static_cast<int>(mode);
  w.slot[lane].pred = pred != 0;
  const bool last = join(w, lane, kind, mask, file, line);
  if (last) {
    unsigned ballot = 0;
    for (int l = 0; l < 32; ++l)
      if (((w.mask >> l) & 1u) && w.slot[l].pred) ballot |= 1u << l;
    const unsigned r = mode == Vote::kBallot ? ballot : (mode == Vote::kAny ? ballot != 0 : ballot == w.mask);
    for (int l = 0; l < 32; ++l) w.out[l].value = r;
  }
  finish(w, warp, last, file, line);
  return static_cast<unsigned>(w.out[lane].value);
}

void sync_warp(unsigned mask, const char* file, int line) {
  Executor& ex = exec();
  const int tid = ex.current->tid, warp = tid >> 5, lane = tid & 31;
  Warp& w = ex.warps[warp];
  const bool last = join(w, lane, kSyncWarp, mask, file, line);
  // Orders the shared accesses of the warp's lanes before and after it.
  if (last) ++w.wsync;
  finish(w, warp, last, file, line);
}

void ldmatrix(int num, bool trans, uint32_t addr, uint32_t* out, const char* file, int line) {
  Executor& ex = exec();
  const int tid = ex.current->tid, warp = tid >> 5, lane = tid & 31;
  Warp& w = ex.warps[warp];
  const int kind = (trans ? kLdm1T : kLdm1) + (num == 1 ? 0 : (num == 2 ? 1 : 2));
  w.slot[lane].addr = addr;
  const bool last = join(w, lane, kind, 0xffffffffu, file, line);
  if (last) {
    uint16_t m[4][8][8];  // [matrix][row][col]
    for (int i = 0; i < num; ++i) {
      for (int r = 0; r < 8; ++r) {
        const int src_lane = 8 * i + r;
        const uint32_t a = w.slot[src_lane].addr;
        if (a % 16 != 0)
          fail(warp * 32 + src_lane, file, line,
               std::string(kind_name(kind)) + ": row address " + std::to_string(a) + " is not 16-byte aligned");
        // The row is read on behalf of the lane that supplied its address.
        shared_check(warp * 32 + src_lane, a, 16, Op::kRead, file, line);
        std::memcpy(m[i][r], ex.arena + a, 16);
      }
    }
    for (int l = 0; l < 32; ++l) {
      const int g = l >> 2, t = l & 3;
      for (int i = 0; i < num; ++i) {
        const uint16_t lo = trans ? m[i][2 * t][g] : m[i][g][2 * t];
        const uint16_t hi = trans ? m[i][2 * t + 1][g] : m[i][g][2 * t + 1];
        w.out[l].r[i] = static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16);
      }
    }
  }
  finish(w, warp, last, file, line);
  for (int i = 0; i < num; ++i) out[i] = w.out[lane].r[i];
}

void mma_m16n8k16(bool bf16, float* c, const uint32_t* a, uint32_t b0, uint32_t b1, const char* file, int line) {
  Executor& ex = exec();
  const int tid = ex.current->tid, warp = tid >> 5, lane = tid & 31;
  Warp& w = ex.warps[warp];
  Slot& s = w.slot[lane];
  for (int i = 0; i < 4; ++i) {
    s.a[i] = a[i];
    s.c[i] = c[i];
  }
  s.b[0] = b0;
  s.b[1] = b1;
  const bool last = join(w, lane, bf16 ? kMmaBf16 : kMmaF16, 0xffffffffu, file, line);
  if (last) {
    float A[16][16], B[16][8], C[16][8];
    const float* lut = half_table();
    auto lo = [bf16, lut](uint32_t r) { return h2f(static_cast<uint16_t>(r & 0xffff), bf16, lut); };
    auto hi = [bf16, lut](uint32_t r) { return h2f(static_cast<uint16_t>(r >> 16), bf16, lut); };
    for (int l = 0; l < 32; ++l) {
      const int g = l >> 2, t = l & 3;
      const Slot& sl = w.slot[l];
      A[g][2 * t] = lo(sl.a[0]);
      A[g][2 * t + 1] = hi(sl.a[0]);
      A[g + 8][2 * t] = lo(sl.a[1]);
      A[g + 8][2 * t + 1] = hi(sl.a[1]);
      A[g][2 * t + 8] = lo(sl.a[2]);
      A[g][2 * t + 9] = hi(sl.a[2]);
      A[g + 8][2 * t + 8] = lo(sl.a[3]);
      A[g + 8][2 * t + 9] = hi(sl.a[3]);
      B[2 * t][g] = lo(sl.b[0]);
      B[2 * t + 1][g] = hi(sl.b[0]);
      B[2 * t + 8][g] = lo(sl.b[1]);
      B[2 * t + 9][g] = hi(sl.b[1]);
      C[g][2 * t] = sl.c[0];
      C[g][2 * t + 1] = sl.c[1];
      C[g + 8][2 * t] = sl.c[2];
      C[g + 8][2 * t + 1] = sl.c[3];
    }
    float D[16][8];
    for (int i = 0; i < 16; ++i) {
      double acc[8];
      for (int j = 0; j < 8; ++j) acc[j] = C[i][j];
      for (int k = 0; k < 16; ++k) {
        const double a_ik = A[i][k];
        for (int j = 0; j < 8; ++j) acc[j] += a_ik * static_cast<double>(B[k][j]);
      }
      for (int j = 0; j < 8; ++j) D[i][j] = static_cast<float>(acc[j]);
    }
    for (int l = 0; l < 32; ++l) {
      const int g = l >> 2, t = l & 3;
      w.out[l].c[0] = D[g][2 * t];
      w.out[l].c[1] = D[g][2 * t + 1];
      w.out[l].c[2] = D[g + 8][2 * t];
      w.out[l].c[3] = D[g + 8][2 * t + 1];
    }
  }
  finish(w, warp, last, file, line);
  for (int i = 0; i < 4; ++i) c[i] = w.out[lane].c[i];
}

}  // namespace emu
}  // namespace fastxf
