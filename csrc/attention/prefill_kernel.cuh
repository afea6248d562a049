// FlashAttention-2-style forward kernel for fastxf.attention (prefill path).
//
// One CTA = kBlockM query rows of one (batch, query head); 4 warps, each owning
// 16 kMTiles rows (see Traits in prefill_params.cuh). K/V tiles of kBlockN keys
// stream through shared memory with cp.async (two stages: the next tile loads
// while this one is computed). S = Q K^T and
// O += P V run on mma.sync m16n8k16 (fp16 / bf16 in, fp32 accumulate) with
// operands fetched by ldmatrix (.trans for V). The softmax is online, in
// registers, in base 2 (scale pre-multiplied by log2 e). Shared memory rows are
// stored as 16-byte chunks XOR-swizzled by the row so that the 8 row addresses
// of every ldmatrix phase hit 8 different bank groups.
//
// Masking: the CTA first narrows the key range [lo, hi) from causal / sliding
// window / the first and last valid key of the padding mask, and only visits
// key tiles overlapping it. Element-wise masking runs only on tiles that need
// it: tiles crossing the causal diagonal or the window edge, the tile holding
// key k_len - 1, and tiles with masked keys inside (counted per tile with one
// __syncthreads_count; tiles with no valid key are skipped).
// ALiBi (p.alibi non-null, a runtime branch: no extra instantiations) adds
// -slope |pos - key| log2(e) to the base-2 scores after scale / softcap on every
// visited tile, masked or not; it changes no key range or tile skipping.
//
// Varlen (kVarlen, fastxf.attention_varlen): the same code, instantiated a
// second time so that the dense kernel's registers stay exactly as they were.
// blockIdx.z is the sequence; the CTA reads its [start, end) rows from
// cu_seqlens_q / cu_seqlens_k, exits when its tile starts past the sequence's
// queries, and from then on works on the sequence as a dense (1, H, q_len, D)
// problem with k_len keys (bottom-right causal alignment, no mask / q_offset /
// ALiBi). Offsets are data the host cannot check without a sync, so they are
// clamped: start to [0, total], end to [start, total] (total = p.q_len / p.k_len,
// the packed row counts). Every access then stays inside the packed tensors
// whatever the offsets; a sequence whose offsets are wrong gets the attention
// of the clamped row range, and output rows that no sequence's tiles cover
// (gaps or overlaps between bad offsets, rows past max_seqlen_q) are not written.
//
// Fragment layouts used below (PTX ISA, mma.m16n8k16, g = lane / 4, t = lane % 4):
//   A (16x16, row): a0 = (g, 2t..2t+1), a1 = (g+8, 2t..), a2 = (g, 2t+8..), a3 = (g+8, 2t+8..)
//   B (16x8, col):  b0 = (k = 2t..2t+1, n = g), b1 = (k = 2t+8.., n = g)
//   C (16x8):       c0, c1 = (g, 2t..2t+1), c2, c3 = (g+8, 2t..2t+1)
//   ldmatrix.x4: lanes 8i..8i+7 give the 8 row addresses of matrix i; register i
//   receives matrix i, lane holding (row g, cols 2t..2t+1) (.trans: of the transpose).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <climits>
#include <cstdint>

#include "attention/prefill_params.cuh"
#include "cuda/primitives.cuh"
#include "gpu_launch.h"

// Planted bugs: tests/test_emulated_planted_bugs.py checks that the emulator
// catches them. FASTXF_PLANT_BUG=n compiles a deliberately broken variant, only
// in the emulator's test translation units csrc/attention/planted_bug<n>_emu.cpp
// (in their own namespace); everywhere else it is 0 and the hooks are the
// original code.
//   1: the barrier before a K/V stage is refilled is dropped (a race);
//   2: off-by-one in the tile's row bound (reads past the last key);
//   3: two K fragment registers swapped in S = Q K^T (wrong scores);
//   4: the first tile is read one cp.async group too early (before its wait).
#ifndef FASTXF_PLANT_BUG
#define FASTXF_PLANT_BUG 0
#endif

namespace fastxf {
namespace prefill {

// ------------------------------------------------------------ helpers ----
// (cp.async, ldmatrix, mma, pack and the approximate math are in cuda/primitives.cuh.)

// tanh(y) given z = 2 y log2(e): 1 - 2 / (2^z + 1). Absolute error ~1e-7 (what
// matters for a logit softcap), ends exact at +-1 (2^z = inf -> rcp = 0), and far
// lighter on registers than tanhf.
__device__ __forceinline__ float tanh_from_exp2(float z) { return 1.f - 2.f * rcp_approx(ex2_approx(z) + 1.f); }

// Element offset of 16-byte chunk `chunk` of row `row` in a [rows][kD] tile.
// Rows of >= 128 bytes: chunk ^ (row % 8) within each group of 8 chunks, so 8
// consecutive rows of one logical chunk land in 8 different 16-byte bank
// groups. 64-byte rows (kD = 32, two rows per 128 bytes): chunk ^ ((row / 2) % 4).
template <int kD>
__device__ __forceinline__ int swz(int row, int chunk) {
  constexpr int kChunks = kD / 8;
  if constexpr (kChunks >= 8) {
    return row * kD + ((chunk ^ (row & 7)) << 3);
  } else {
    static_assert(kChunks == 4, "kD = 32 is the only head dim below 64");
    return row * kD + ((chunk ^ ((row >> 1) & 3)) << 3);
  }
}

// The XOR applied to the chunk index of `row` by swz (depends on row % 8 only).
template <int kD>
__device__ __forceinline__ int swz_xor(int row) {
  return kD / 8 >= 8 ? (row & 7) : ((row >> 1) & 3);
}

// Per-lane byte offsets for ldmatrix: lane addresses row R + lane_row (R a
// multiple of 8, added by the caller) at logical chunk 2 kk + b. Since the
// swizzle only flips the low 3 bits of the chunk index,
//   swz(lane_row, 2 kk + b) = lane_row kD + 8 (2 ((kk & 3) ^ (x >> 1)) + (b ^ (x & 1))) + 16 (kk & ~3)
// with x = swz_xor(lane_row): 4 lane-dependent bases plus compile-time constants
// once the kk loops are unrolled.
template <int kD>
struct LaneOffsets {
  static constexpr int kN = kD / 16 < 4 ? kD / 16 : 4;
  uint32_t base[kN];
  __device__ __forceinline__ LaneOffsets(int lane_row, int b) {
    const int x = swz_xor<kD>(lane_row);
#pragma unroll
    for (int c = 0; c < kN; ++c) base[c] = 2u * (lane_row * kD + 8 * (2 * (c ^ (x >> 1)) + (b ^ (x & 1))));
  }
  __device__ __forceinline__ uint32_t at(int kk) const { return base[kk & 3] + 32u * (kk & ~3); }
};

// Issues cp.async for rows [0, kRows) of a tile starting at `src` (row stride
// `stride`) into `dst`; rows >= rows_valid and columns >= d_load are zero-filled
// (so keys past k_len contribute exactly 0 to P V and never NaN). `fallback` is
// a valid global address used for the zero-filled chunks.
template <typename T, int kD, int kRows, int kThreads>
__device__ __forceinline__ void load_tile(T* dst, const T* src, int64_t stride, int rows_valid, int d_load,
                                          const T* fallback, int tid) {
  constexpr int kChunks = kD / 8;
  constexpr int kTotal = kRows * kChunks;
  static_assert(kTotal % kThreads == 0, "tile chunks must divide evenly among the threads");
#pragma unroll
  for (int i = 0; i < kTotal / kThreads; ++i) {
    const int idx = tid + i * kThreads;
    const int r = idx / kChunks, c = idx % kChunks;
#if FASTXF_PLANT_BUG == 2
    const bool ok = r <= rows_valid && c * 8 < d_load;
#else
    const bool ok = r < rows_valid && c * 8 < d_load;
#endif
    const T* s = ok ? src + r * stride + c * 8 : fallback;
    cp_async_16(dst + swz<kD>(r, c), s, ok ? 16 : 0);
  }
}

__device__ __forceinline__ int clamp_pos(int64_t x, int hi) {
  return static_cast<int>(x < 0 ? 0 : (x > hi ? hi : x));
}

// Varlen: rows [start, start + len) of sequence b, from (possibly bad) offsets
// clamped so that 0 <= start <= start + len <= total.
__device__ __forceinline__ void seq_rows(const int* cu, int b, int total, int& start, int& len) {
  const int s = min(max(ld_global(cu + b), 0), total);
  const int e = min(max(ld_global(cu + b + 1), s), total);
  start = s;
  len = e - s;
}

// Writes one 16-byte chunk (8 elements from shared memory, or zeros when src is
// nullptr) to out columns [c8, c8 + 8) clipped to d_out.
template <typename T>
__device__ __forceinline__ void store_chunk(T* dst_row, int c8, const T* src, int d_out, bool vec) {
  if (vec && c8 + 8 <= d_out) {
    const uint4 v = src ? ld_shared(reinterpret_cast<const uint4*>(src)) : make_uint4(0, 0, 0, 0);
    st_global(reinterpret_cast<uint4*>(dst_row + c8), v);
  } else {
    for (int e = 0; e < 8 && c8 + e < d_out; ++e) st_global(dst_row + c8 + e, src ? ld_shared(src + e) : T(0.f));
  }
}

// ---------------------------------------------------------------- kernel ----

template <typename T, int kD, bool kVarlen>
__global__ void __launch_bounds__(Traits<kD>::kThreads) prefill_kernel(const Params p) {
#if FASTXF_SM80_CODE
  using Tr = Traits<kD>;
  constexpr int kBM = Tr::kBlockM, kBN = Tr::kBlockN, kNT = Tr::kThreads, kChunks = kD / 8;
  const float kNegInf = __int_as_float(0xff800000);  // -inf
  static_assert(kBN <= kNT, "one thread per key counts the valid keys of a tile");

  T* sQ = dynamic_shared<T>();
  T* sK = sQ + kBM * kD;     // two stages of kBN x kD
  T* sV = sK + 2 * kBN * kD;  // two stages of kBN x kD
  FASTXF_SHARED(int[2][Tr::kWarps], s_red);

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  // Heaviest (last, for causal) query tiles first: they start while the grid fills.
  const int m_block = gridDim.x - 1 - blockIdx.x;
  const int h = blockIdx.y, b = blockIdx.z, hk = h / p.group;
  const int m0 = m_block * kBM;
  // This CTA's sequence: dense, all of q / k; varlen, rows [q_start, q_start + q_len)
  // of q and [k_start, k_start + Sk) of k / v (kVarlen is compile-time: the
  // dense kernel keeps reading q_len / k_len from the parameters).
  int q_len = p.q_len, Sk = p.k_len, q_start = 0, k_start = 0;
  if constexpr (kVarlen) {
    seq_rows(p.cu_seqlens_q, b, p.q_len, q_start, q_len);
    seq_rows(p.cu_seqlens_k, b, p.k_len, k_start, Sk);
    if (m0 >= q_len) return;  // a tile past this sequence's queries (CTA-uniform)
  }
  const int rows = min(kBM, q_len - m0);
  const int64_t off = !kVarlen && p.q_offset ? static_cast<int64_t>(ld_global(p.q_offset + b))
                                             : static_cast<int64_t>(Sk) - q_len;

  // Key range [lo, hi) any row of this CTA can see.
  const int64_t pos_first = off + m0, pos_last = off + m0 + rows - 1;
  int lo = 0, hi = Sk;
  if (p.causal) hi = clamp_pos(pos_last + 1, Sk);
  if (p.window > 0) lo = clamp_pos(pos_first - p.window + 1, Sk);
  const bool has_mask = !kVarlen && p.mask != nullptr;
  auto mask_row = [&] { return p.mask + static_cast<int64_t>(b) * Sk; };  // valid when has_mask
  if (has_mask && lo < hi) {
    // Narrow to [first valid key, last valid key] of this sequence (left / right padding).
    int first = INT_MAX, last = -1;
    for (int j = lo + tid; j < hi; j += kNT) {
      if (ld_global(mask_row() + j)) {
        first = min(first, j);
        last = max(last, j);
      }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      first = min(first, shfl_xor_sync(0xffffffffu, first, o));
      last = max(last, shfl_xor_sync(0xffffffffu, last, o));
    }
    if (lane == 0) {
      st_shared(&s_red[0][warp], first);
      st_shared(&s_red[1][warp], last);
    }
    sync_threads();
#pragma unroll
    for (int w = 0; w < Tr::kWarps; ++w) {
      first = min(first, ld_shared(&s_red[0][w]));
      last = max(last, ld_shared(&s_red[1][w]));
    }
    lo = max(lo, first);
    hi = min(hi, last + 1);
  }

  // Recomputed where used rather than kept live through the key loop (varlen:
  // the sequence's first row is re-read from the offsets).
  auto out_row = [&](int r) {
    int64_t row0 = static_cast<int64_t>(blockIdx.z) * p.o_sb;
    if constexpr (kVarlen) {
      int start, len;
      seq_rows(p.cu_seqlens_q, blockIdx.z, p.q_len, start, len);
      row0 = static_cast<int64_t>(start) * p.o_ss;
    }
    return reinterpret_cast<T*>(p.out) + row0 + static_cast<int64_t>(blockIdx.y) * p.o_sh +
           static_cast<int64_t>(m0 + r) * p.o_ss;
  };
  if (lo >= hi) {
    // No row of this tile sees any key: exact zeros (CTA-uniform exit).
    for (int idx = tid; idx < rows * kChunks; idx += kNT) {
      const int r = idx / kChunks, c = idx % kChunks;
      if (c * 8 < p.d_out) store_chunk<T>(out_row(r), c * 8, nullptr, p.d_out, p.out_vec);
    }
    return;
  }

  // Row 0 of this (sequence, head) in q / k / v.
  const int64_t q_row0 = kVarlen ? static_cast<int64_t>(q_start) * p.q_ss : static_cast<int64_t>(b) * p.q_sb;
  const int64_t k_row0 = kVarlen ? static_cast<int64_t>(k_start) * p.k_ss : static_cast<int64_t>(b) * p.k_sb;
  const int64_t v_row0 = kVarlen ? static_cast<int64_t>(k_start) * p.v_ss : static_cast<int64_t>(b) * p.v_sb;
  const T* q_head = reinterpret_cast<const T*>(p.q) + q_row0 + static_cast<int64_t>(h) * p.q_sh;
  const T* k_head = reinterpret_cast<const T*>(p.k) + k_row0 + static_cast<int64_t>(hk) * p.k_sh;
  const T* v_head = reinterpret_cast<const T*>(p.v) + v_row0 + static_cast<int64_t>(hk) * p.v_sh;

  const int n_begin = lo / kBN, n_end = (hi + kBN - 1) / kBN, n_tiles = n_end - n_begin;
  auto load_kv = [&](int n_block, int stage) {
    const int j0 = n_block * kBN;
    const int valid = min(kBN, Sk - j0);
    load_tile<T, kD, kBN, kNT>(sK + stage * kBN * kD, k_head + j0 * p.k_ss, p.k_ss, valid, p.d_load, k_head, tid);
    load_tile<T, kD, kBN, kNT>(sV + stage * kBN * kD, v_head + j0 * p.v_ss, p.v_ss, valid, p.d_load, v_head, tid);
  };

  // Prologue: group 0 = Q + first K/V tile, group 1 = second K/V tile (maybe empty).
  load_tile<T, kD, kBM, kNT>(sQ, q_head + m0 * p.q_ss, p.q_ss, rows, p.d_load, q_head, tid);
  load_kv(n_begin, 0);
  cp_async_commit();
  if (n_tiles > 1) load_kv(n_begin + 1, 1);
  cp_async_commit();

  // This thread's rows: for each of the warp's kMT m-tiles, rows g and g + 8 of
  // those 16, with their visible key ranges (index [mt][i]).
  constexpr int kMT = Tr::kMTiles;
  const int g = lane >> 2, t4 = lane & 3;
  const int warp_row0 = warp * 16 * kMT;
  // Visible range of row (mt, i) = [clamp(lo_base + 16 mt + 8 i), clamp(hi_base + 16 mt + 8 i))
  // with clamp to [0, Sk]: recomputed in the (rare) masked tiles from two 32-bit
  // bases to save registers. The bases are pre-clamped to [-64, Sk + 64], which
  // leaves every clamp() below unchanged since 16 mt + 8 i + 1 < 64.
  static_assert(16 * kMT + 8 < 64, "base clamping margin");
  int hi_base, lo_base;
  {
    const int64_t pos = off + m0 + warp_row0 + g;
    auto pre_clamp = [&](int64_t x) { return static_cast<int>(x < -64 ? -64 : (x > Sk + 64 ? Sk + 64 : x)); };
    hi_base = p.causal ? pre_clamp(pos + 1) : Sk + 64;
    lo_base = p.window > 0 ? pre_clamp(pos - p.window + 1) : -64;
  }
  // Key tiles inside [full_lo, full_hi) need no causal / window / bounds masking
  // for any real row of this CTA.
  const int full_hi = p.causal ? clamp_pos(pos_first + 1, Sk) : Sk;
  const int full_lo = p.window > 0 ? clamp_pos(pos_last - p.window + 1, Sk) : 0;

  float acc_o[kMT][kD / 8][4];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int d = 0; d < kD / 8; ++d) acc_o[mt][d][0] = acc_o[mt][d][1] = acc_o[mt][d][2] = acc_o[mt][d][3] = 0.f;
  }
  float row_max[kMT][2], row_sum[kMT][2];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
    row_max[mt][0] = row_max[mt][1] = kNegInf;
    row_sum[mt][0] = row_sum[mt][1] = 0.f;
  }
  uint32_t q_frag[Tr::kQInRegs ? kD / 16 : 1][4];

  const uint32_t sQ_addr = cvta_to_shared(sQ), sK_addr = cvta_to_shared(sK), sV_addr = cvta_to_shared(sV);
  // ldmatrix lane offsets (see the fragment notes at the top of the file):
  // Q (A operand): lanes 0-15 rows 0-15 at chunk 2ks, lanes 16-31 the same rows at chunk 2ks+1.
  const LaneOffsets<kD> q_off(lane & 15, lane >> 4);
  // K (B operand, stored [key][d] = B^T row-major, plain ldmatrix), for key pair np and k-step ks:
  // matrices (keys 0-7, chunk 2ks), (keys 0-7, 2ks+1), (keys 8-15, 2ks), (keys 8-15, 2ks+1).
  const LaneOffsets<kD> k_off((lane & 7) + ((lane >> 4) << 3), (lane >> 3) & 1);
  // V (B operand, stored [key][d] = B row-major, ldmatrix.trans), for keys 16ks.. and d pair dp:
  // matrices (keys 0-7, chunk 2dp), (keys 8-15, 2dp), (keys 0-7, 2dp+1), (keys 8-15, 2dp+1).
  const LaneOffsets<kD> v_off((lane & 7) + (((lane >> 3) & 1) << 3), lane >> 4);

  // A-operand fragment of Q for m-tile mt, k-step ks (head-dim columns 16ks..16ks+15).
  auto load_q_frag = [&](int mt, int ks, uint32_t(&a)[4]) {
    ldmatrix_x4(a[0], a[1], a[2], a[3], sQ_addr + 2u * (warp_row0 + mt * 16) * kD + q_off.at(ks));
  };

  for (int it = 0; it < n_tiles; ++it) {
    const int n_block = n_begin + it, j0 = n_block * kBN, stage = it & 1;
#if FASTXF_PLANT_BUG == 4
    cp_async_wait<2>();
#else
    cp_async_wait<1>();  // all groups but the newest done: Q and this tile have landed
#endif

    bool need_mask = j0 < full_lo || j0 + kBN > full_hi;
    bool skip = false;
    if (has_mask) {
      // Doubles as the barrier after the wait: count this tile's valid keys.
      int valid = 0;
      if (tid < kBN && j0 + tid < Sk) valid = ld_global(mask_row() + j0 + tid) ? 1 : 0;
      const int count = sync_threads_count(valid);
      skip = count == 0;
      need_mask = need_mask || count < min(kBN, Sk - j0);
    } else {
      sync_threads();
    }
    if constexpr (Tr::kQInRegs) {
      if (it == 0) {
#pragma unroll
        for (int ks = 0; ks < kD / 16; ++ks) load_q_frag(0, ks, q_frag[ks]);
      }
    }

    if (!skip) {
      const uint32_t sKs = sK_addr + 2u * stage * kBN * kD;
      const uint32_t sVs = sV_addr + 2u * stage * kBN * kD;

      // ---- S = Q K^T (16 kMT x kBN per warp); each K fragment feeds kMT m-tiles ----
      float acc_s[kMT][kBN / 8][4];
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
        for (int n = 0; n < kBN / 8; ++n) acc_s[mt][n][0] = acc_s[mt][n][1] = acc_s[mt][n][2] = acc_s[mt][n][3] = 0.f;
      }
#pragma unroll
      for (int ks = 0; ks < kD / 16; ++ks) {
        uint32_t a[kMT][4];
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
          if constexpr (Tr::kQInRegs) {
#pragma unroll
            for (int e = 0; e < 4; ++e) a[mt][e] = q_frag[ks][e];
          } else {
            load_q_frag(mt, ks, a[mt]);
          }
        }
#pragma unroll
        for (int np = 0; np < kBN / 16; ++np) {
          uint32_t b0, b1, b2, b3;
          ldmatrix_x4(b0, b1, b2, b3, sKs + 2u * np * 16 * kD + k_off.at(ks));
#pragma unroll
          for (int mt = 0; mt < kMT; ++mt) {
#if FASTXF_PLANT_BUG == 3
            mma_m16n8k16<T>(acc_s[mt][2 * np], a[mt], b0, b2);
            mma_m16n8k16<T>(acc_s[mt][2 * np + 1], a[mt], b1, b3);
#else
            mma_m16n8k16<T>(acc_s[mt][2 * np], a[mt], b0, b1);
            mma_m16n8k16<T>(acc_s[mt][2 * np + 1], a[mt], b2, b3);
#endif
          }
        }
      }

      // ---- scores in base 2, masking ----
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
        for (int n = 0; n < kBN / 8; ++n) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const float x = acc_s[mt][n][e];
            acc_s[mt][n][e] = p.use_softcap ? p.softcap_out * tanh_from_exp2(x * p.softcap_in) : x * p.scale_log2;
          }
        }
      }
      if (!kVarlen && p.alibi) {
        // ALiBi bias -slope |pos - key| after scale / softcap, times log2(e) like
        // the scores (the softmax runs in base 2). Element (mt, n, e) is row
        // g + 16 mt + 8 (e / 2) of the warp, key j0 + 8 n + 2 t4 + e % 2; its
        // distance is `rel` plus a compile-time constant once unrolled. The
        // slope and the query offset are re-read here (after the barrier above,
        // so the compiler cannot reuse `off`) rather than kept live through the
        // key loop: the d128 / d256 instantiations sit at 255 registers.
        const int64_t off_a = p.q_offset ? static_cast<int64_t>(ld_global(p.q_offset + blockIdx.z))
                                         : static_cast<int64_t>(Sk) - p.q_len;
        const float slope_log2 =
            -1.4426950408889634f * ld_global(p.alibi + static_cast<int64_t>(blockIdx.z) * gridDim.y + blockIdx.y);
        const float rel = static_cast<float>(off_a + m0 + warp_row0 + g - (j0 + 2 * t4));
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
          for (int n = 0; n < kBN / 8; ++n) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              const float d = rel + static_cast<float>(16 * mt + 8 * (e >> 1) - 8 * n - (e & 1));
              acc_s[mt][n][e] += slope_log2 * fabsf(d);
            }
          }
        }
      }
      if (need_mask) {
#pragma unroll
        for (int n = 0; n < kBN / 8; ++n) {
          const int key = j0 + n * 8 + 2 * t4;
          bool ok0 = true, ok1 = true;
          if (has_mask) {
            ok0 = key < Sk && ld_global(mask_row() + key);
            ok1 = key + 1 < Sk && ld_global(mask_row() + key + 1);
          }
#pragma unroll
          for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
            for (int i = 0; i < 2; ++i) {
              const int row_hi = min(max(hi_base + mt * 16 + 8 * i, 0), Sk);
              const int row_lo = min(max(lo_base + mt * 16 + 8 * i, 0), Sk);
              if (!(ok0 && key >= row_lo && key < row_hi)) acc_s[mt][n][2 * i] = kNegInf;
              if (!(ok1 && key + 1 >= row_lo && key + 1 < row_hi)) acc_s[mt][n][2 * i + 1] = kNegInf;
            }
          }
        }
      }

      // ---- online softmax (row i of m-tile mt: c[2i], c[2i+1]; the quad shares a row) ----
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          float mx = row_max[mt][i];
#pragma unroll
          for (int n = 0; n < kBN / 8; ++n) mx = fmaxf(mx, fmaxf(acc_s[mt][n][2 * i], acc_s[mt][n][2 * i + 1]));
          mx = fmaxf(mx, shfl_xor_sync(0xffffffffu, mx, 1));
          mx = fmaxf(mx, shfl_xor_sync(0xffffffffu, mx, 2));
          // A row that has seen no visible key keeps max -inf; subtract 0 instead so
          // exp2(-inf - m) is 0, never NaN.
          const float m_use = mx == kNegInf ? 0.f : mx;
          const float alpha = ex2_approx(row_max[mt][i] - m_use);  // 0 while the old max was -inf
          row_max[mt][i] = mx;
          float sum = 0.f;
#pragma unroll
          for (int n = 0; n < kBN / 8; ++n) {
            acc_s[mt][n][2 * i] = ex2_approx(acc_s[mt][n][2 * i] - m_use);
            acc_s[mt][n][2 * i + 1] = ex2_approx(acc_s[mt][n][2 * i + 1] - m_use);
            sum += acc_s[mt][n][2 * i] + acc_s[mt][n][2 * i + 1];
          }
          row_sum[mt][i] = row_sum[mt][i] * alpha + sum;  // per-thread partial; the quad is summed at the end
#pragma unroll
          for (int d = 0; d < kD / 8; ++d) {
            acc_o[mt][d][2 * i] *= alpha;
            acc_o[mt][d][2 * i + 1] *= alpha;
          }
        }
      }

      // ---- O += P V; each V fragment feeds kMT m-tiles ----
#pragma unroll
      for (int ks = 0; ks < kBN / 16; ++ks) {
        // P as the A operand for keys 16ks..16ks+15: C tiles 2ks (cols 0-7) and 2ks+1 (cols 8-15).
        uint32_t a[kMT][4];
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
          a[mt][0] = pack2<T>(acc_s[mt][2 * ks][0], acc_s[mt][2 * ks][1]);
          a[mt][1] = pack2<T>(acc_s[mt][2 * ks][2], acc_s[mt][2 * ks][3]);
          a[mt][2] = pack2<T>(acc_s[mt][2 * ks + 1][0], acc_s[mt][2 * ks + 1][1]);
          a[mt][3] = pack2<T>(acc_s[mt][2 * ks + 1][2], acc_s[mt][2 * ks + 1][3]);
        }
#pragma unroll
        for (int dp = 0; dp < kD / 16; ++dp) {
          uint32_t b0, b1, b2, b3;
          ldmatrix_x4_trans(b0, b1, b2, b3, sVs + 2u * ks * 16 * kD + v_off.at(dp));
#pragma unroll
          for (int mt = 0; mt < kMT; ++mt) {
            mma_m16n8k16<T>(acc_o[mt][2 * dp], a[mt], b0, b1);
            mma_m16n8k16<T>(acc_o[mt][2 * dp + 1], a[mt], b2, b3);
          }
        }
      }
    }

#if FASTXF_PLANT_BUG != 1
    sync_threads();  // every warp is done with this stage before it is refilled
#endif
    if (it + 2 < n_tiles) load_kv(n_block + 2, stage);
    cp_async_commit();  // possibly empty: keeps the wait_group<1> count uniform
  }
  cp_async_wait<0>();

  // ---- epilogue: O / l -> shared memory (Q's tile) -> 16-byte coalesced stores ----
  sync_threads();  // all warps are done reading sQ
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      float s = row_sum[mt][i];
      s += shfl_xor_sync(0xffffffffu, s, 1);
      s += shfl_xor_sync(0xffffffffu, s, 2);
      const float inv = s > 0.f ? 1.f / s : 0.f;  // no visible key: zeros
      const int r = warp_row0 + mt * 16 + g + 8 * i;
#pragma unroll
      for (int d = 0; d < kD / 8; ++d) {
        st_shared(reinterpret_cast<uint32_t*>(sQ + swz<kD>(r, d) + 2 * t4),
                  pack2<T>(acc_o[mt][d][2 * i] * inv, acc_o[mt][d][2 * i + 1] * inv));
      }
    }
  }
  sync_threads();
  for (int idx = tid; idx < rows * kChunks; idx += kNT) {
    const int r = idx / kChunks, c = idx % kChunks;
    if (c * 8 < p.d_out) store_chunk<T>(out_row(r), c * 8, sQ + swz<kD>(r, c), p.d_out, p.out_vec);
  }
#endif
}

template <typename T, int kD, bool kVarlen>
void launch_prefill(const Params& p, int batch, int q_heads, cudaStream_t stream) {
  using Tr = Traits<kD>;
  constexpr int smem = Tr::kSmemBytes;

  // Always opt in: at exactly 48 KiB of dynamic shared memory (D = 64) the small
  // static array would push the block past the default 48 KiB limit. Per device
  // and cheap; not a stream operation, so it is fine during graph capture.
  FASTXF_CUDA_CHECK(set_max_dynamic_shared_bytes(prefill_kernel<T, kD, kVarlen>, smem));
  const int rows = kVarlen ? p.max_seqlen_q : p.q_len;
  const dim3 grid((rows + Tr::kBlockM - 1) / Tr::kBlockM, q_heads, batch);
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) return;  // nothing to compute (an empty launch is an error)
  FASTXF_LAUNCH((prefill_kernel<T, kD, kVarlen>), grid, Tr::kThreads, smem, stream, p);
  FASTXF_KERNEL_LAUNCH_CHECK();
}

template <typename T, int kD>
void run_prefill(const Params& p, int batch, int q_heads, cudaStream_t stream) {
  if (p.cu_seqlens_q != nullptr) {
    launch_prefill<T, kD, true>(p, batch, q_heads, stream);
  } else {
    launch_prefill<T, kD, false>(p, batch, q_heads, stream);
  }
}

}  // namespace prefill
}  // namespace fastxf
