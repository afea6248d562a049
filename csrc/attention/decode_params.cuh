// Launch description of the split-KV decode kernel (csrc/attention/decode_kernel.cuh).
// Host code (decode_cuda.cu) fills Params and calls launch<T, D>; the kernels
// themselves are instantiated once per (dtype, head dim) in decode_inst_*.cu so
// that compile time stays visible and parallel.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace fastxf {
namespace decode {

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
// Query rows per CTA: the M of one m16n8k16 tile. Rows are (query head of the
// KV group, query position) pairs, so one tile serves e.g. 8 GQA heads x 2
// tokens, or 16 tokens of one head, from a single read of K/V.
constexpr int kRowTile = 16;
constexpr int kWarpKeys = 16;                   // keys per warp per chunk (the k of the P.V mma)
constexpr int kChunkKeys = kWarps * kWarpKeys;  // keys per pipeline stage
constexpr int kMaxQLen = 16;
constexpr int kMaxSplits = 128;

// Shared memory plan for head dim D (2-byte elements).
template <int D>
struct Smem {
  static_assert(D % 16 == 0, "head dim must be a multiple of 16 (the k of the Q.K^T mma)");
  // Row stride in elements: 16 bytes of padding make the fragment loads of 8
  // rows x 4 consecutive words hit 32 distinct banks.
  static constexpr int kStride = D + 8;
  static constexpr int kQBytes = kRowTile * kStride * 2;
  static constexpr int kStageBytes = 2 * kChunkKeys * kStride * 2;  // K and V
  // About 110 KB of pipeline per CTA (2 CTAs per SM on an H100 for D <= 128),
  // at least double buffering, at most 4 stages.
  static constexpr int kStagesRaw = (110 * 1024) / kStageBytes;
  static constexpr int kStages = kStagesRaw < 2 ? 2 : (kStagesRaw > 4 ? 4 : kStagesRaw);
  static constexpr int kPipeBytes = kStages * kStageBytes;
  // After the pipeline drains its memory holds each warp's fp32 partial output.
  static constexpr int kSlabBytes = kWarps * kRowTile * D * 4;
  static constexpr int kBytes = kQBytes + (kPipeBytes > kSlabBytes ? kPipeBytes : kSlabBytes);
};

struct Params {
  const void* q;            // (B, Hq, Sq, D) view, strides below
  const void* k;            // (B, Hkv, Sk, D) view
  const void* v;            // (B, Hkv, Sk, D) view
  const uint8_t* mask;      // (B, Sk) contiguous bool (1 = attend), or null
  const int32_t* q_offset;  // (B,) key position of query 0, or null (Sk - Sq)
  const float* alibi;       // (B, Hq) contiguous ALiBi slopes, or null (no ALiBi bias)
  void* out;                // (B, Sq, Hq, D) contiguous, q's dtype
  float* ws_o;              // (splits, B * Hkv * rows, D) normalised partial outputs (splits > 1)
  float* ws_lse;            // (splits, B * Hkv * rows) log2-sum-exp2 of each partial (splits > 1)
  int64_t q_sb, q_sh, q_ss;  // element strides of q (batch, head, seq)
  int64_t k_sb, k_sh, k_ss;
  int64_t v_sb, v_sh, v_ss;
  int batch, q_heads, kv_heads, group, q_len, k_len;
  int rows;       // group * q_len: query rows per (batch, kv head)
  int row_tiles;  // ceil(rows / kRowTile)
  int splits;     // key splits per (batch, kv head, row tile); 1 = write out directly
  int64_t window;  // > 0: sliding window (clamped on the host so that pos - window cannot overflow)
  bool causal;
  float scale;    // softmax scale
  float softcap;  // > 0: scores -> softcap * tanh(scores / softcap)
};

// Resident CTAs per SM of the split kernel for (T, D) on the current device.
// Also sets the kernel's dynamic shared memory opt-in there: call it on a
// device before the first launch_split_kernel on it.
template <typename T, int D>
int split_kernel_occupancy();

// Launches the split kernel (grid B * Hkv * splits * row_tiles) on `stream`.
template <typename T, int D>
void launch_split_kernel(const Params& p, cudaStream_t stream);

// Launches the merge of p.splits partials into p.out.
template <typename T>
void launch_merge_kernel(const Params& p, int head_dim, cudaStream_t stream);

}  // namespace decode
}  // namespace fastxf
