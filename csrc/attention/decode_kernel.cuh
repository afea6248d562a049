// Split-KV (Flash-Decoding style) attention for a few query tokens over a long
// KV cache. Included only by the decode_inst_*.cu files (one (dtype, head dim)
// each); the merge kernel is in decode_cuda.cu.
//
// One CTA = (batch b, kv head, key split, tile of 16 query rows). The rows are
// all query heads of the KV group times the query positions, so K/V is read
// from HBM once for the whole group. The split's key range is streamed through
// shared memory in chunks of 64 keys with a multi-stage cp.async pipeline (the
// kernel is bound by HBM bandwidth, so what matters is keeping enough bytes in
// flight: 2-4 stages of 64 keys x (K + V) per CTA, 2+ CTAs per SM). Each of the
// 4 warps takes 16 keys of a chunk and computes S = Q K^T and O += P V with
// m16n8k16 tensor-core mma (fp32 accumulation), keeping its own online-softmax
// state (running max m and sum l per row, in the log2 domain); at the end the
// warps are merged through shared memory. With one split the CTA writes the
// output; otherwise it writes its normalised partial output and log2-sum-exp2
// to an fp32 workspace and merge_kernel combines the splits exactly:
// out = sum_s 2^(lse_s - M) o_s / sum_s 2^(lse_s - M), M = max_s lse_s.
//
// Visibility of key j from a row at position pos = q_offset[b] + i (as in the
// CPU reference, csrc/attention/attention_cpu.cpp): (!causal || j <= pos) &&
// (window == 0 || j > pos - window) && (no mask || mask[b][j]). The causal /
// window range bounds the keys a CTA loads; the padding mask trims the split's
// range to its first..last valid key (left padding, static-cache prefixes) and
// masks the holes key by key. Rows with no visible key give zeros.
// ALiBi (p.alibi non-null, a runtime branch): each row adds -slope(its head) *
// |pos - j| * log2(e) to its base-2 score after scale / softcap.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <climits>
#include <cstdint>

#include "attention/decode_common.cuh"
#include "cuda/primitives.cuh"
#include "gpu_launch.h"

namespace fastxf {
namespace decode {

// K/V rows move with 16-byte cp.async (cp_async_16); a copy with src_bytes = 0
// zero-fills its 16 bytes without reading global memory, so keys outside the
// split (or past Sk) hold zeros, never garbage that could turn 0 * NaN into NaN
// in P.V.

// Two consecutive 16-bit elements of a shared-memory row as one .b32 mma operand.
__device__ __forceinline__ uint32_t ld_b32(const uint16_t* p) { return ld_shared(reinterpret_cast<const uint32_t*>(p)); }

template <typename T, int D>
__global__ void __launch_bounds__(kThreads, 1) split_kernel(const Params p) {
  using S = Smem<D>;
  constexpr int kStride = S::kStride;
  constexpr int kStages = S::kStages;
  constexpr int kVecPerRow = D / 8;  // 16-byte vectors per K/V row
  constexpr float kNegInf = -__builtin_huge_valf();

  unsigned char* smem = dynamic_shared<unsigned char>();
  uint16_t* q_s = reinterpret_cast<uint16_t*>(smem);
  unsigned char* pipe = smem + S::kQBytes;
  FASTXF_SHARED(float[kWarps][kRowTile], s_m);
  FASTXF_SHARED(float[kWarps][kRowTile], s_l);
  FASTXF_SHARED(float[kRowTile], s_row_m);
  FASTXF_SHARED(float[kRowTile], s_row_l);
  FASTXF_SHARED(int, s_first);
  FASTXF_SHARED(int, s_last);

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int g = lane >> 2, t = lane & 3;  // mma fragment coordinates
  int cta = blockIdx.x;
  const int rt = cta % p.row_tiles;
  cta /= p.row_tiles;
  const int split = cta % p.splits;
  cta /= p.splits;
  const int kvh = cta % p.kv_heads;
  const int b = cta / p.kv_heads;

  const int64_t offset =
      p.q_offset ? static_cast<int64_t>(ld_global(p.q_offset + b)) : static_cast<int64_t>(p.k_len) - p.q_len;
  // Keys [lo, hi) that causal / window let row rl of this tile see (empty for
  // the padding rows past p.rows).
  auto row_range = [&](int rl, int& lo, int& hi) {
    const int r = rt * kRowTile + rl;
    lo = 0;
    hi = 0;
    if (r >= p.rows) return;
    const int64_t pos = offset + r % p.q_len;
    int64_t l = 0, h = p.k_len;
    if (p.causal) h = pos + 1 < 0 ? 0 : (pos + 1 > p.k_len ? p.k_len : pos + 1);
    if (p.window > 0) {
      const int64_t w = pos - p.window + 1;
      l = w < 0 ? 0 : (w > p.k_len ? p.k_len : w);
    }
    lo = static_cast<int>(l);
    hi = static_cast<int>(h);
  };

  // ---- this split's key range: the tile's causal/window union, cut into
  // p.splits pieces of whole chunks (sizes differ by at most one chunk) ----
  int kb = 0, ke = 0;
  {
    int lo_all = INT_MAX, hi_all = 0;
    for (int rl = 0; rl < kRowTile; ++rl) {
      int lo, hi;
      row_range(rl, lo, hi);
      if (lo < hi) {
        lo_all = min(lo_all, lo);
        hi_all = max(hi_all, hi);
      }
    }
    if (lo_all < hi_all) {
      const int first = lo_all / kChunkKeys;
      const int nch = (hi_all + kChunkKeys - 1) / kChunkKeys - first;
      const int cs = first + static_cast<int>(static_cast<int64_t>(split) * nch / p.splits);
      const int ce = first + static_cast<int>(static_cast<int64_t>(split + 1) * nch / p.splits);
      kb = max(lo_all, cs * kChunkKeys);
      ke = min(hi_all, ce * kChunkKeys);
    }
  }
  const uint8_t* mrow = p.mask ? p.mask + static_cast<int64_t>(b) * p.k_len : nullptr;
  if (mrow) {
    // Trim [kb, ke) to its first..last valid key so padded chunks are never
    // loaded. 8 independent byte loads per thread per pass: one round trip per
    // 1024 keys.
    if (tid == 0) {
      st_shared(&s_first, INT_MAX);
      st_shared(&s_last, -1);
    }
    sync_threads();
    int f = INT_MAX, l = -1;
    for (int base = kb; base < ke; base += kThreads * 8) {
      uint8_t mv[8];
#pragma unroll
      for (int u = 0; u < 8; ++u) {
        const int j = base + u * kThreads + tid;
        mv[u] = j < ke ? ld_global(mrow + j) : 0;
      }
#pragma unroll
      for (int u = 0; u < 8; ++u) {
        const int j = base + u * kThreads + tid;
        if (mv[u]) {
          f = min(f, j);
          l = max(l, j);
        }
      }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      f = min(f, shfl_xor_sync(0xffffffffu, f, o));
      l = max(l, shfl_xor_sync(0xffffffffu, l, o));
    }
    if (lane == 0 && l >= 0) {
      atomic_min(&s_first, f);
      atomic_max(&s_last, l);
    }
    sync_threads();
    const int first = ld_shared(&s_first), last = ld_shared(&s_last);
    if (last < 0) {
      kb = ke = 0;
    } else {
      kb = first;
      ke = last + 1;
    }
  }

  // ---- queries of the tile -> shared memory (zeros for padding rows) ----
  {
    const uint16_t* qg = static_cast<const uint16_t*>(p.q);
    for (int idx = tid; idx < kRowTile * D; idx += kThreads) {
      const int rl = idx / D, d = idx % D;
      const int r = rt * kRowTile + rl;
      uint16_t val = 0;
      if (r < p.rows) {
        const int h = kvh * p.group + r / p.q_len, i = r % p.q_len;
        val = ld_global(qg + (static_cast<int64_t>(b) * p.q_sb + static_cast<int64_t>(h) * p.q_sh +
                              static_cast<int64_t>(i) * p.q_ss + d));
      }
      st_shared(q_s + rl * kStride + d, val);
    }
  }

  const uint16_t* kg = static_cast<const uint16_t*>(p.k) + static_cast<int64_t>(b) * p.k_sb +
                       static_cast<int64_t>(kvh) * p.k_sh;
  const uint16_t* vg = static_cast<const uint16_t*>(p.v) + static_cast<int64_t>(b) * p.v_sb +
                       static_cast<int64_t>(kvh) * p.v_sh;
  const int c_begin = kb / kChunkKeys;
  const int nchunks = kb < ke ? (ke + kChunkKeys - 1) / kChunkKeys - c_begin : 0;

  auto load_chunk = [&](int c, int stage) {
    uint16_t* ks = reinterpret_cast<uint16_t*>(pipe + stage * S::kStageBytes);
    uint16_t* vs = ks + kChunkKeys * kStride;
    static_assert((kChunkKeys * kVecPerRow) % kThreads == 0, "whole copy rounds per chunk");
#pragma unroll
    for (int rep = 0; rep < kChunkKeys * kVecPerRow / kThreads; ++rep) {
      const int idx = rep * kThreads + tid;
      const int kl = idx / kVecPerRow, vec = idx % kVecPerRow;
      const int key = c * kChunkKeys + kl;
      const bool ok = key >= kb && key < ke;
      const int64_t kofs = ok ? static_cast<int64_t>(key) * p.k_ss + vec * 8 : 0;
      const int64_t vofs = ok ? static_cast<int64_t>(key) * p.v_ss + vec * 8 : 0;
      cp_async_16(ks + kl * kStride + vec * 8, kg + kofs, ok ? 16 : 0);
      cp_async_16(vs + kl * kStride + vec * 8, vg + vofs, ok ? 16 : 0);
    }
  };

  // This lane's rows of the mma fragments are g and g + 8; their visible keys
  // intersected with the split's range.
  int lo0, hi0, lo1, hi1;
  row_range(g, lo0, hi0);
  row_range(g + 8, lo1, hi1);
  lo0 = max(lo0, kb);
  hi0 = min(hi0, ke);
  lo1 = max(lo1, kb);
  hi1 = min(hi1, ke);

  const float scale_log2 = p.scale * kLog2e;
  const bool use_softcap = p.softcap > 0.f;
  const float cap_in = use_softcap ? p.scale / p.softcap : 0.f;  // tanh argument per raw score
  const float cap_out = p.softcap * kLog2e;
  // ALiBi (p.alibi non-null): rows g and g + 8 add alibi_i * |pos_i - key| to
  // their log2-domain scores, alibi_i = -slope(head of the row) * log2(e).
  // Padding rows past p.rows keep 0.
  float alibi0 = 0.f, alibi1 = 0.f, pos0 = 0.f, pos1 = 0.f;
  if (p.alibi) {
    auto row_alibi = [&](int rl, float& slope, float& pos) {
      const int r = rt * kRowTile + rl;
      if (r >= p.rows) return;
      const int h = kvh * p.group + r / p.q_len;
      slope = -kLog2e * ld_global(p.alibi + static_cast<int64_t>(b) * p.q_heads + h);
      pos = static_cast<float>(offset + r % p.q_len);
    };
    row_alibi(g, alibi0, pos0);
    row_alibi(g + 8, alibi1, pos1);
  }

  float acc[D / 8][4];
#pragma unroll
  for (int dn = 0; dn < D / 8; ++dn) acc[dn][0] = acc[dn][1] = acc[dn][2] = acc[dn][3] = 0.f;
  float m0 = kNegInf, m1 = kNegInf, l0 = 0.f, l1 = 0.f;  // rows g, g + 8 (l: this lane's keys only)

#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < nchunks) load_chunk(c_begin + s, s);
    cp_async_commit();  // empty groups keep the wait_group arithmetic uniform
  }

  for (int it = 0; it < nchunks; ++it) {
    // Group `it` is complete when at most kStages - 2 newer groups are pending;
    // the barrier publishes every thread's copies and tells that all warps are
    // done with the stage the prefetch below overwrites (consumed at it - 1).
    cp_async_wait<kStages - 2>();
    sync_threads();
    {
      const int nx = it + kStages - 1;
      if (nx < nchunks) load_chunk(c_begin + nx, nx % kStages);
      cp_async_commit();
    }
    const uint16_t* ks = reinterpret_cast<const uint16_t*>(pipe + (it % kStages) * S::kStageBytes) +
                         warp * kWarpKeys * kStride;
    const uint16_t* vs = ks + kChunkKeys * kStride;
    const int key0 = (c_begin + it) * kChunkKeys + warp * kWarpKeys;  // this warp's first key
    if (key0 < ke && key0 + kWarpKeys > kb) {  // warp-uniform
      // Padding-mask bytes of this lane's 4 keys, issued before the mma so
      // their latency hides behind it.
      bool mk[2][2] = {{true, true}, {true, true}};
      if (mrow) {
#pragma unroll
        for (int nt = 0; nt < 2; ++nt)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int key = key0 + nt * 8 + 2 * t + e;
            mk[nt][e] = key >= kb && key < ke && ld_global(mrow + key) != 0;
          }
      }

      // S = Q K^T for 16 rows x 16 keys (two n8 tiles).
      float s[2][4];
#pragma unroll
      for (int nt = 0; nt < 2; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        const int d0 = kk * 16 + 2 * t;
        const uint32_t a[4] = {ld_b32(q_s + g * kStride + d0), ld_b32(q_s + (g + 8) * kStride + d0),
                               ld_b32(q_s + g * kStride + d0 + 8), ld_b32(q_s + (g + 8) * kStride + d0 + 8)};
#pragma unroll
        for (int nt = 0; nt < 2; ++nt) {
          const uint16_t* kr = ks + (nt * 8 + g) * kStride + d0;
          mma_m16n8k16<T>(s[nt], a, ld_b32(kr), ld_b32(kr + 8));
        }
      }

      // Scale (and softcap) into the log2 domain, mask, online softmax.
      float mx0 = kNegInf, mx1 = kNegInf;
#pragma unroll
      for (int nt = 0; nt < 2; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int key = key0 + nt * 8 + 2 * t + (e & 1);
          float x = s[nt][e];
          x = use_softcap ? cap_out * tanhf(x * cap_in) : x * scale_log2;
          if (p.alibi) x += e < 2 ? alibi0 * fabsf(pos0 - static_cast<float>(key)) : alibi1 * fabsf(pos1 - static_cast<float>(key));
          const bool vis = mk[nt][e & 1] && ((e < 2) ? (key >= lo0 && key < hi0) : (key >= lo1 && key < hi1));
          x = vis ? x : kNegInf;
          s[nt][e] = x;
          if (e < 2)
            mx0 = fmaxf(mx0, x);
          else
            mx1 = fmaxf(mx1, x);
        }
      // The 4 lanes of a row (same g) hold its 16 keys.
      mx0 = fmaxf(mx0, shfl_xor_sync(0xffffffffu, mx0, 1));
      mx0 = fmaxf(mx0, shfl_xor_sync(0xffffffffu, mx0, 2));
      mx1 = fmaxf(mx1, shfl_xor_sync(0xffffffffu, mx1, 1));
      mx1 = fmaxf(mx1, shfl_xor_sync(0xffffffffu, mx1, 2));
      const float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);
      // A row that has seen nothing keeps m = -inf; subtracting 0 instead keeps
      // exp2 away from (-inf) - (-inf) = NaN.
      const float base0 = mn0 == kNegInf ? 0.f : mn0, base1 = mn1 == kNegInf ? 0.f : mn1;
      const float alpha0 = exp2f(m0 - base0), alpha1 = exp2f(m1 - base1);
      m0 = mn0;
      m1 = mn1;
#pragma unroll
      for (int nt = 0; nt < 2; ++nt) {
        s[nt][0] = exp2f(s[nt][0] - base0);
        s[nt][1] = exp2f(s[nt][1] - base0);
        s[nt][2] = exp2f(s[nt][2] - base1);
        s[nt][3] = exp2f(s[nt][3] - base1);
      }
      l0 = l0 * alpha0 + (s[0][0] + s[0][1] + s[1][0] + s[1][1]);
      l1 = l1 * alpha1 + (s[0][2] + s[0][3] + s[1][2] + s[1][3]);
#pragma unroll
      for (int dn = 0; dn < D / 8; ++dn) {
        acc[dn][0] *= alpha0;
        acc[dn][1] *= alpha0;
        acc[dn][2] *= alpha1;
        acc[dn][3] *= alpha1;
      }

      // O += P V: the S accumulators of the two key tiles are exactly the A
      // fragment of a 16 (rows) x 16 (keys) operand.
      const uint32_t pa[4] = {
          pack2<T>(s[0][0], s[0][1]),  // row g,     keys 2t, 2t+1
          pack2<T>(s[0][2], s[0][3]),  // row g + 8, keys 2t, 2t+1
          pack2<T>(s[1][0], s[1][1]),  // row g,     keys 8+2t, 9+2t
          pack2<T>(s[1][2], s[1][3]),  // row g + 8, keys 8+2t, 9+2t
      };
#pragma unroll
      for (int dn = 0; dn < D / 8; ++dn) {
        // B fragment (keys x 8 dims, "col"): b0 = V[2t][col], V[2t+1][col];
        // b1 = V[2t+8][col], V[2t+9][col]; col = dn * 8 + g.
        const uint16_t* vc = vs + dn * 8 + g;
        const uint32_t b0 = static_cast<uint32_t>(ld_shared(vc + (2 * t) * kStride)) |
                            (static_cast<uint32_t>(ld_shared(vc + (2 * t + 1) * kStride)) << 16);
        const uint32_t b1 = static_cast<uint32_t>(ld_shared(vc + (2 * t + 8) * kStride)) |
                            (static_cast<uint32_t>(ld_shared(vc + (2 * t + 9) * kStride)) << 16);
        mma_m16n8k16<T>(acc[dn], pa, b0, b1);
      }
    }
  }

  // ---- merge the 4 warps (each saw a quarter of every chunk) ----
  cp_async_wait<0>();
  sync_threads();  // every warp is done with the pipeline memory, reused below
  l0 += shfl_xor_sync(0xffffffffu, l0, 1);
  l0 += shfl_xor_sync(0xffffffffu, l0, 2);
  l1 += shfl_xor_sync(0xffffffffu, l1, 1);
  l1 += shfl_xor_sync(0xffffffffu, l1, 2);
  if (t == 0) {
    st_shared(&s_m[warp][g], m0);
    st_shared(&s_m[warp][g + 8], m1);
    st_shared(&s_l[warp][g], l0);
    st_shared(&s_l[warp][g + 8], l1);
  }
  sync_threads();
  float mall0 = kNegInf, mall1 = kNegInf;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) {
    mall0 = fmaxf(mall0, ld_shared(&s_m[w][g]));
    mall1 = fmaxf(mall1, ld_shared(&s_m[w][g + 8]));
  }
  const float f0 = exp2f(m0 - (mall0 == kNegInf ? 0.f : mall0));
  const float f1 = exp2f(m1 - (mall1 == kNegInf ? 0.f : mall1));
  if (tid < kRowTile) {
    float mall = kNegInf;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) mall = fmaxf(mall, ld_shared(&s_m[w][tid]));
    const float base = mall == kNegInf ? 0.f : mall;
    float lsum = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) lsum += ld_shared(&s_l[w][tid]) * exp2f(ld_shared(&s_m[w][tid]) - base);
    st_shared(&s_row_m[tid], mall);
    st_shared(&s_row_l[tid], lsum);
  }
  float* slab = reinterpret_cast<float*>(pipe);
  {
    float* mine = slab + warp * kRowTile * D;
#pragma unroll
    for (int dn = 0; dn < D / 8; ++dn) {
      const int col = dn * 8 + 2 * t;
      st_shared(reinterpret_cast<float2*>(mine + g * D + col), make_float2(acc[dn][0] * f0, acc[dn][1] * f0));
      st_shared(reinterpret_cast<float2*>(mine + (g + 8) * D + col), make_float2(acc[dn][2] * f1, acc[dn][3] * f1));
    }
  }
  sync_threads();

  const bool direct = p.splits == 1;
  const int64_t rows_total = static_cast<int64_t>(p.batch) * p.kv_heads * p.rows;
  const int64_t row_base = (static_cast<int64_t>(b) * p.kv_heads + kvh) * p.rows;  // global row of r = 0
  for (int idx = tid; idx < kRowTile * D; idx += kThreads) {
    const int rl = idx / D, d = idx % D;
    const int r = rt * kRowTile + rl;
    if (r >= p.rows) continue;
    float sum = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) sum += ld_shared(slab + (w * kRowTile + rl) * D + d);
    const float lsum = ld_shared(&s_row_l[rl]);
    const float o = lsum > 0.f ? sum / lsum : 0.f;
    if (direct) {
      const int h = kvh * p.group + r / p.q_len, i = r % p.q_len;
      uint16_t* out = static_cast<uint16_t*>(p.out);
      st_global(out + ((static_cast<int64_t>(b) * p.q_len + i) * p.q_heads + h) * D + d, bits_of<T>(o));
    } else {
      const int64_t gr = static_cast<int64_t>(split) * rows_total + row_base + r;
      st_global(p.ws_o + gr * D + d, o);
      if (d == 0) st_global(p.ws_lse + gr, lsum > 0.f ? ld_shared(&s_row_m[rl]) + log2f(lsum) : kNegInf);
    }
  }
}

template <typename T, int D>
int split_kernel_occupancy() {
  constexpr int bytes = Smem<D>::kBytes;  // opt in to > 48 KB on the current device
  FASTXF_CUDA_CHECK(set_max_dynamic_shared_bytes(split_kernel<T, D>, bytes));
  const int blocks = gpu::occupancy(split_kernel<T, D>, kThreads, bytes);
  return blocks < 1 ? 1 : blocks;
}

template <typename T, int D>
void launch_split_kernel(const Params& p, cudaStream_t stream) {
  // The > 48 KB dynamic shared memory attribute was set by
  // split_kernel_occupancy, which the host calls (once per device, cached)
  // before the first launch there: nothing but the launch happens here, so a
  // decode step captured into a CUDA graph makes no other CUDA API call.
  constexpr int bytes = Smem<D>::kBytes;
  const int64_t grid = static_cast<int64_t>(p.batch) * p.kv_heads * p.splits * p.row_tiles;
  FASTXF_LAUNCH((split_kernel<T, D>), static_cast<unsigned>(grid), kThreads, bytes, stream, p);
  FASTXF_KERNEL_LAUNCH_CHECK();
}

}  // namespace decode
}  // namespace fastxf
