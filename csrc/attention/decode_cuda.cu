// Host side of the split-KV decode path of fastxf::attention: decides whether
// the decode kernel takes a problem, picks the number of key splits from the
// shapes, and launches the split kernel (+ the merge kernel when splits > 1).
// The split kernel is in decode_kernel.cuh, instantiated in decode_inst_*.cu;
// the merge kernel is here.
#include <algorithm>
#include <climits>
#include <cstdlib>
#include <mutex>
#include <type_traits>
#include <unordered_map>

#include "attention/attention_cuda.h"
#include "attention/decode_common.cuh"
#include "gpu_host.h"

namespace fastxf {
namespace decode {

// Combines the p.splits partials of each row: one warp per row.
template <typename T>
__global__ void __launch_bounds__(128) merge_kernel(const Params p, int head_dim) {
  constexpr float kNegInf = -__builtin_huge_valf();
  const int64_t rows_total = static_cast<int64_t>(p.batch) * p.kv_heads * p.rows;
  const int64_t gr = static_cast<int64_t>(blockIdx.x) * 4 + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (gr >= rows_total) return;
  const int r = static_cast<int>(gr % p.rows);
  const int64_t bk = gr / p.rows;
  const int kvh = static_cast<int>(bk % p.kv_heads);
  const int64_t b = bk / p.kv_heads;
  const int h = kvh * p.group + r / p.q_len, i = r % p.q_len;
  uint16_t* out = static_cast<uint16_t*>(p.out) + ((b * p.q_len + i) * p.q_heads + h) * head_dim;

  float mall = kNegInf;
  for (int s = 0; s < p.splits; ++s) mall = fmaxf(mall, ld_global(p.ws_lse + s * rows_total + gr));
  if (mall == kNegInf) {  // no split saw a key: zeros
    for (int d = lane; d < head_dim; d += 32) st_global(out + d, 0);
    return;
  }
  float wsum = 0.f;
  for (int s = 0; s < p.splits; ++s) wsum += exp2f(ld_global(p.ws_lse + s * rows_total + gr) - mall);
  const float inv = 1.f / wsum;
  // head_dim is a multiple of 16: float4 loads stay aligned.
  for (int d = lane * 4; d < head_dim; d += 128) {
    float4 a = make_float4(0.f, 0.f, 0.f, 0.f);
    for (int s = 0; s < p.splits; ++s) {
      const float w = exp2f(ld_global(p.ws_lse + s * rows_total + gr) - mall);
      if (w == 0.f) continue;  // empty split: lse = -inf
      const float4 o = ld_global(reinterpret_cast<const float4*>(p.ws_o + (s * rows_total + gr) * head_dim + d));
      a.x += w * o.x;
      a.y += w * o.y;
      a.z += w * o.z;
      a.w += w * o.w;
    }
    st_global(out + d, bits_of<T>(a.x * inv));
    st_global(out + d + 1, bits_of<T>(a.y * inv));
    st_global(out + d + 2, bits_of<T>(a.z * inv));
    st_global(out + d + 3, bits_of<T>(a.w * inv));
  }
}

template <typename T>
void launch_merge_kernel(const Params& p, int head_dim, cudaStream_t stream) {
  const int64_t rows_total = static_cast<int64_t>(p.batch) * p.kv_heads * p.rows;
  FASTXF_LAUNCH(merge_kernel<T>, static_cast<unsigned>((rows_total + 3) / 4), 128, 0, stream, p, head_dim);
  FASTXF_KERNEL_LAUNCH_CHECK();
}

}  // namespace decode

namespace {

using DeviceInfo = gpu::DeviceProps;  // queried once per device (gpu_host.h)

template <typename T, int D>
int cached_occupancy(int device) {
  static std::mutex mu;
  static std::unordered_map<int, int> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(device);
  if (it != cache.end()) return it->second;
  const int occ = decode::split_kernel_occupancy<T, D>();
  cache.emplace(device, occ);
  return occ;
}

// Number of key splits. Shapes only (never tensor values: no host sync, and a
// captured CUDA graph stays valid for every cache length it replays with).
//
// The kernel streams K/V once and is bound by HBM bandwidth, which it reaches
// only when every SM has CTAs with loads in flight. `base` CTAs (batch x kv
// heads x row tiles) each cover the whole key range; splitting the keys s ways
// gives base * s CTAs. One "wave" is sms * occupancy resident CTAs. For each s
// we take the fraction of the last wave that is busy (total / (waves * slots)),
// and choose the smallest s whose efficiency is within 85% of the best: more
// splits than that only add partial-output traffic and merge work. Each split
// keeps at least 256 keys (4 chunks, so the cp.async pipeline reaches steady
// state and the fp32 partial (D floats per row) stays small next to the K/V
// bytes it summarises), and there are at most kMaxSplits.
int choose_splits(int64_t base, int64_t k_len, int sms, int occupancy) {
  constexpr int64_t kMinKeysPerSplit = 256;
  const int64_t slots = static_cast<int64_t>(sms) * occupancy;
  const int64_t max_splits =
      std::min<int64_t>(decode::kMaxSplits, (k_len + kMinKeysPerSplit - 1) / kMinKeysPerSplit);
  if (max_splits <= 1 || base >= slots) return 1;  // already a full wave without splitting
  auto efficiency = [&](int64_t s) {
    const int64_t total = base * s;
    const int64_t waves = (total + slots - 1) / slots;
    return static_cast<double>(total) / static_cast<double>(waves * slots);
  };
  double best = 0.0;
  for (int64_t s = 1; s <= max_splits; ++s) best = std::max(best, efficiency(s));
  for (int64_t s = 1; s <= max_splits; ++s)
    if (efficiency(s) >= 0.85 * best) return static_cast<int>(s);
  return 1;
}

// Turns the runtime (dtype, head dim) into template arguments; false when the
// decode kernel has no instantiation for them.
template <typename F>
bool head_dim_switch(int64_t head_dim, F&& f) {
  switch (head_dim) {
    case 32: f(std::integral_constant<int, 32>{}); return true;
    case 64: f(std::integral_constant<int, 64>{}); return true;
    case 80: f(std::integral_constant<int, 80>{}); return true;
    case 96: f(std::integral_constant<int, 96>{}); return true;
    case 128: f(std::integral_constant<int, 128>{}); return true;
    case 256: f(std::integral_constant<int, 256>{}); return true;
    default: return false;
  }
}

template <typename T>
struct TypeTag {
  using type = T;
};

template <typename F>
bool dtype_switch(at::ScalarType dtype, F&& f) {
  switch (dtype) {
    case at::kHalf: return f(TypeTag<__half>{});
    case at::kBFloat16: return f(TypeTag<__nv_bfloat16>{});
    default: return false;
  }
}

bool is_supported_head_dim(int64_t d) { return head_dim_switch(d, [](auto) {}); }

// cp.async moves 16-byte vectors: the K/V rows and their starts must be 16-byte
// aligned. Strides of size-1 dims never move the pointer, so they do not count.
bool aligned16(const at::Tensor& t) {
  const int64_t elem = t.element_size();
  if (reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 != 0) return false;
  for (int d = 0; d < 3; ++d)
    if (t.size(d) > 1 && (t.stride(d) * elem) % 16 != 0) return false;
  return true;
}

template <typename T, int D>
void run_decode(const AttentionProblem& p, const DeviceInfo& info, int device) {
  decode::Params prm{};
  prm.q = p.q.data_ptr();
  prm.k = p.k.data_ptr();
  prm.v = p.v.data_ptr();
  prm.mask = p.key_mask.defined() ? reinterpret_cast<const uint8_t*>(p.key_mask.data_ptr<bool>()) : nullptr;
  prm.q_offset = p.q_offset.defined() ? p.q_offset.data_ptr<int32_t>() : nullptr;
  prm.alibi = p.alibi.defined() ? p.alibi.data_ptr<float>() : nullptr;
  prm.out = p.out.data_ptr();
  prm.q_sb = p.q.stride(0);
  prm.q_sh = p.q.stride(1);
  prm.q_ss = p.q.stride(2);
  prm.k_sb = p.k.stride(0);
  prm.k_sh = p.k.stride(1);
  prm.k_ss = p.k.stride(2);
  prm.v_sb = p.v.stride(0);
  prm.v_sh = p.v.stride(1);
  prm.v_ss = p.v.stride(2);
  prm.batch = static_cast<int>(p.batch);
  prm.q_heads = static_cast<int>(p.q_heads);
  prm.kv_heads = static_cast<int>(p.kv_heads);
  prm.group = static_cast<int>(p.q_heads / p.kv_heads);
  prm.q_len = static_cast<int>(p.q_len);
  prm.k_len = static_cast<int>(p.k_len);
  prm.rows = prm.group * prm.q_len;
  prm.row_tiles = (prm.rows + decode::kRowTile - 1) / decode::kRowTile;
  // q_offset is int32 and k_len < 2^31, so any window past 2^40 sees the same
  // keys as an infinite one; clamping keeps pos - window + 1 from overflowing.
  prm.window = std::min<int64_t>(p.window, int64_t{1} << 40);
  prm.causal = p.causal;
  prm.scale = p.scale;
  prm.softcap = p.softcap;

  const int64_t base = p.batch * p.kv_heads * prm.row_tiles;
  prm.splits = choose_splits(base, p.k_len, info.sms, cached_occupancy<T, D>(device));
  // Testing hook: FASTXF_DECODE_SPLITS=N forces N splits (1..kMaxSplits), so
  // the tests can drive the merge with empty splits and the direct path on
  // long caches whatever the GPU's SM count.
  if (const char* env = std::getenv("FASTXF_DECODE_SPLITS")) {
    const int forced = std::atoi(env);
    if (forced > 0) prm.splits = std::min(forced, decode::kMaxSplits);
  }

  gpu::trace_dispatch("decode T=", p.q.scalar_type(), " D=", D, " splits=", prm.splits, " row_tiles=", prm.row_tiles);
  const cudaStream_t stream = gpu::current_stream(device);
  at::Tensor ws_o, ws_lse;  // kept alive until both launches are enqueued (the allocator is stream-ordered)
  if (prm.splits > 1) {
    const int64_t rows_total = p.batch * p.kv_heads * prm.rows;
    const auto opts = p.q.options().dtype(at::kFloat);
    ws_o = at::empty({prm.splits, rows_total, D}, opts);
    ws_lse = at::empty({prm.splits, rows_total}, opts);
    prm.ws_o = ws_o.data_ptr<float>();
    prm.ws_lse = ws_lse.data_ptr<float>();
  }
  gpu::KernelBuffers buffers;
  buffers.add(p.q, "q", false).add(p.k, "k", false).add(p.v, "v", false).add(p.key_mask, "key_padding_mask", false);
  buffers.add(p.q_offset, "q_offset", false).add(p.alibi, "alibi_slopes", false).add(p.out, "out", true).add(ws_o, "ws_o", true);
  buffers.add(ws_lse, "ws_lse", true).commit();
  decode::launch_split_kernel<T, D>(prm, stream);
  if (prm.splits > 1) decode::launch_merge_kernel<T>(prm, D, stream);
}

}  // namespace

// Takes: fp16 / bf16, q_len <= 16, head_dim in {32, 64, 80, 96, 128, 256},
// 16-byte aligned K/V rows (data pointer and batch / head / seq strides), an
// sm_80+ device whose per-block shared memory holds the pipeline (A100, H100,
// H200; not the 99 KB of sm_86 / sm_89 for the larger head dims), and sizes
// that fit the kernel's 32-bit counters. Everything
// else returns false and goes to the prefill kernel.
bool decode_attention_cuda(const AttentionProblem& p) {
  const auto dtype = p.q.scalar_type();
  if (dtype != at::kHalf && dtype != at::kBFloat16) return false;
  if (p.q_len < 1 || p.q_len > decode::kMaxQLen) return false;
  if (!is_supported_head_dim(p.head_dim)) return false;
  if (p.k_len < 1 || p.k_len > INT_MAX - 2 * decode::kChunkKeys) return false;
  const int64_t rows = (p.q_heads / p.kv_heads) * p.q_len;
  const int64_t row_tiles = (rows + decode::kRowTile - 1) / decode::kRowTile;
  if (p.batch * p.kv_heads * row_tiles * decode::kMaxSplits > INT_MAX) return false;  // grid size
  if (p.batch * p.q_heads > INT_MAX) return false;
  if (!aligned16(p.k) || !aligned16(p.v)) return false;
  const int device = p.q.get_device();
  const DeviceInfo info = gpu::device_props(device);
  if (info.major < 8) return false;  // bf16 / f16 m16n8k16 mma and cp.async need sm_80
  // Consumer GPUs (sm_86 / sm_89: 99 KB per block) cannot hold the deeper
  // pipelines; 1 KB of margin for the kernel's static shared memory.
  bool fits = false;
  head_dim_switch(p.head_dim, [&](auto dc) { fits = decode::Smem<decltype(dc)::value>::kBytes + 1024 <= info.smem_optin; });
  if (!fits) return false;
  return dtype_switch(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    return head_dim_switch(p.head_dim, [&](auto dc) { run_decode<T, decltype(dc)::value>(p, info, device); });
  });
}

}  // namespace fastxf
