// Parameters and tile shapes of the FlashAttention-2-style prefill kernel
// (prefill_kernel.cuh), shared by the host dispatcher (prefill_cuda.cu) and the
// one-instantiation-per-file sources prefill_<dtype>_hdim<D>.cu.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace fastxf {
namespace prefill {

// Everything the kernel reads. Strides are in elements; the last dim of q, k, v
// is contiguous, every pointer is 16-byte aligned and every stride is a multiple
// of 8 elements (the dispatcher makes sure, copying in the rare case it is not),
// so that rows can be moved in 16-byte cp.async chunks.
//
// Varlen mode (fastxf.attention_varlen; cu_seqlens_q non-null, the kernel's
// kVarlen instantiation): q / k / v / out are packed (total, H, D) with the
// batch strides unused; sequence b is rows [cu_seqlens_q[b], cu_seqlens_q[b+1])
// of q / out and [cu_seqlens_k[b], cu_seqlens_k[b+1]) of k / v, q_len / k_len
// hold total_q / total_k (the bounds every offset is clamped to), and the grid
// covers max_seqlen_q rows per sequence. mask, q_offset and alibi are unused.
struct Params {
  const void* q;
  const void* k;
  const void* v;
  void* out;
  const bool* mask;      // (B, Sk) contiguous, True = attend; nullptr: every key valid
  const int* q_offset;   // (B,) key position of query 0; nullptr: Sk - Sq
  const float* alibi;    // (B, Hq) contiguous ALiBi slopes; nullptr: no ALiBi bias
  const int* cu_seqlens_q;  // varlen: (B + 1,) row offsets of the sequences in q / out; nullptr: dense
  const int* cu_seqlens_k;  // varlen: (B + 1,) row offsets of the sequences in k / v
  int max_seqlen_q;         // varlen: query rows covered per sequence (grid.x = ceil(max_seqlen_q / kBlockM))
  int64_t q_sb, q_sh, q_ss;
  int64_t k_sb, k_sh, k_ss;
  int64_t v_sb, v_sh, v_ss;
  int64_t o_sb, o_sh, o_ss;  // out is (B, Sq, Hq, d_out)
  int q_len, k_len;      // dense: Sq, Sk; varlen: total_q, total_k
  int group;             // q heads per kv head
  int d_load;            // columns of q/k/v that hold data (multiple of 8, <= the instantiated D)
  int d_out;             // columns written to out (<= d_load)
  bool out_vec;          // out rows are 16-byte aligned: write 16-byte chunks
  bool causal;
  int64_t window;        // > 0: key j visible from position p iff j > p - window
  float scale_log2;      // scale * log2(e): softmax runs in base 2
  float softcap_in;      // softcap > 0: logit = softcap_out * tanh(score * scale / softcap), computed
  float softcap_out;     //   as tanh_from_exp2(score * softcap_in): softcap_in = 2 log2(e) scale / softcap,
                         //   softcap_out = softcap * log2(e)
  bool use_softcap;
};

// Tile shapes per head dim. Every CTA has 4 warps; each warp owns kMTiles
// m16 row tiles (16 kMTiles query rows) for the whole key loop, so that every
// K / V fragment read from shared memory feeds kMTiles mma's (shared memory
// bandwidth, not the tensor cores, limits a warp that owns only 16 rows).
// The output accumulator (16 kMTiles x D fp32) lives in registers; Q fragments
// are re-read from shared memory each k-step (kept in registers only when a warp
// owns a single m-tile and D <= 128). Sizes keep ptxas at <= 255 registers with
// no spills.
template <int kD>
struct Traits {
  static_assert(kD == 32 || kD == 64 || kD == 128 || kD == 256, "instantiated head dims: 32, 64, 128, 256");
  static constexpr int kWarps = 4;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kMTiles = kD <= 128 ? 2 : 1;
  static constexpr int kBlockM = kWarps * 16 * kMTiles;
  static constexpr int kBlockN = kD <= 64 ? 64 : 32;
  static constexpr bool kQInRegs = kMTiles == 1 && kD <= 128;
  // Q tile + two stages of (K tile, V tile), all [rows][kD] with swizzled 16-byte chunks.
  static constexpr int kSmemElems = kBlockM * kD + 4 * kBlockN * kD;
  static constexpr int kSmemBytes = kSmemElems * 2;
};

// Launches the kernel for element type T (__half or __nv_bfloat16) and head dim
// kD on `stream` (its varlen instantiation when p.cu_seqlens_q is set; `batch`
// is then the number of sequences). Defined in prefill_kernel.cuh, instantiated
// once per .cu file.
template <typename T, int kD>
void run_prefill(const Params& p, int batch, int q_heads, cudaStream_t stream);

}  // namespace prefill
}  // namespace fastxf
