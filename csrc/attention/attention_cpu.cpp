// CPU implementation of fastxf::attention: the reference algorithm for the
// CUDA kernels, tiled the same way.
//
// Work is split into tiles of kBlockRows query rows of one (batch, kv head).
// For grouped-query attention the rows of a tile are the (query head of the
// group, query position) pairs, so every K/V tile is read once for all query
// heads that share it (as the CUDA decode kernel does). Each tile streams K/V in
// blocks of kBlockKeys with an online softmax (running max m and sum l per row,
// the accumulator rescaled by exp(m_old - m_new)), skipping key blocks that no
// row of the tile can see (causal, sliding window, padding). For short queries
// over long caches the key range is also split (split-KV): each split produces
// a partial (acc, m, l) and a merge step combines them exactly.
//
// Every float the softmax sees is fp32: fp16 / bf16 inputs are widened when
// they are staged, the output is rounded once at the end.
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "attention/attention.h"
#include "emulation.h"

namespace fastxf {
namespace {

// Tile sizes. The CPU does its two tile products (S = Q K^T and acc += P V)
// with BLAS through at::mm on fp32 staging tiles, as torch's own CPU flash
// attention does, and the softmax's exp / max / sum with ATen's vectorised
// kernels (this file is compiled for baseline x86-64, so hand-written loops
// would not use AVX). Hence tiles larger than the CUDA kernel's: they amortise
// the per-call overhead and keep the GEMMs efficient, while 128-row / 256-key
// blocks still let causal and padding block skipping drop most invisible work.
// (Measured with benchmarks/bench_attention_cpu.py on a shared 2-core machine:
// 64 x 128 was ~1.6x slower than 128 x 256; 64 x 256, 64 x 512, 128 x 512 and
// 256 x 512 were no better. The macros exist only to re-tune.)
#ifndef FASTXF_CPU_BLOCK_ROWS
#define FASTXF_CPU_BLOCK_ROWS 128
#define FASTXF_CPU_BLOCK_KEYS 256
#endif
constexpr int64_t kBlockRows = FASTXF_CPU_BLOCK_ROWS;
constexpr int64_t kBlockKeys = FASTXF_CPU_BLOCK_KEYS;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Number of key splits for one tile. Depends on shapes only (never on values),
// like the CUDA heuristic, so results are reproducible. Only short query blocks
// (decode) split: long prefills have enough tiles to keep every thread busy.
int64_t choose_num_splits(const AttentionProblem& p) {
  if (p.q_len > 16) return 1;
  constexpr int64_t kKeysPerSplit = 512;
  return std::clamp<int64_t>((p.k_len + kKeysPerSplit - 1) / kKeysPerSplit, 1, 16);
}

// Query rows [row0, row0 + rows) of one (batch, kv head). Row r is query head
// kv_head * group + r / q_len at query position r % q_len.
struct Tile {
  int64_t b, kv_head, row0, rows;
};

struct Partial {
  float* acc;  // rows x D, unnormalised
  float* m;    // running max per row
  float* l;    // running sum per row
};

template <typename T>
class TileWorker {
 public:
  explicit TileWorker(const AttentionProblem& p)
      : p_(p),
        D_(p.head_dim),
        group_(p.q_heads / p.kv_heads),
        lo_(kBlockRows),
        hi_(kBlockRows) {
    const auto f32 = at::TensorOptions().dtype(at::kFloat);
    q_ = at::empty({kBlockRows, D_}, f32);
    k_ = at::empty({kBlockKeys, D_}, f32);
    v_ = at::empty({kBlockKeys, D_}, f32);
    s_ = at::empty({kBlockRows, kBlockKeys}, f32);
    block_max_ = at::empty({kBlockRows}, f32);
    shift_ = at::empty({kBlockRows}, f32);
    alpha_ = at::empty({kBlockRows}, f32);
    row_sum_ = at::empty({kBlockRows}, f32);
  }

  // Visible key range [lo, hi) of every row from causal / window alone
  // (padding is applied per key); returns the union over the tile's rows.
  std::pair<int64_t, int64_t> row_ranges(const Tile& t) {
    const int64_t offset = p_.q_offset.defined() ? p_.q_offset.data_ptr<int32_t>()[t.b] : p_.k_len - p_.q_len;
    int64_t lo_all = p_.k_len, hi_all = 0;
    for (int64_t r = 0; r < t.rows; ++r) {
      const int64_t pos = offset + (t.row0 + r) % p_.q_len;
      int64_t lo = 0, hi = p_.k_len;
      if (p_.causal) hi = std::clamp<int64_t>(pos + 1, 0, p_.k_len);
      if (p_.window > 0) lo = std::clamp<int64_t>(pos - p_.window + 1, 0, p_.k_len);
      lo_[r] = lo;
      hi_[r] = hi;
      if (lo < hi) {
        lo_all = std::min(lo_all, lo);
        hi_all = std::max(hi_all, hi);
      }
    }
    return {lo_all, std::max(lo_all, hi_all)};
  }

  void load_queries(const Tile& t) {
    float* q = q_.data_ptr<float>();
    for (int64_t r = 0; r < t.rows; ++r) {
      const int64_t row = t.row0 + r;
      const int64_t h = t.kv_head * group_ + row / p_.q_len, i = row % p_.q_len;
      const T* src = p_.q.data_ptr<T>() + t.b * p_.q.stride(0) + h * p_.q.stride(1) + i * p_.q.stride(2);
      for (int64_t d = 0; d < D_; ++d) q[r * D_ + d] = static_cast<float>(src[d]) * p_.scale;
    }
  }

  // Runs the online softmax of the tile's rows over keys [k_begin, k_end) into
  // `part` (which the caller initialised to acc = 0, m = -inf, l = 0).
  void attend(const Tile& t, int64_t k_begin, int64_t k_end, const Partial& part) {
    const bool* mask = p_.key_mask.defined() ? p_.key_mask.data_ptr<bool>() + t.b * p_.k_len : nullptr;
    const at::Tensor k_head = p_.k.select(0, t.b).select(0, t.kv_head);  // (Sk, D), row stride k.stride(2)
    const at::Tensor v_head = p_.v.select(0, t.b).select(0, t.kv_head);
    const int64_t rows = t.rows;
    const auto f32 = at::TensorOptions().dtype(at::kFloat);
    at::Tensor acc = at::from_blob(part.acc, {rows, D_}, f32);
    at::Tensor l = at::from_blob(part.l, {rows}, f32);
    at::Tensor q = q_.narrow(0, 0, rows);
    at::Tensor block_max = block_max_.narrow(0, 0, rows), shift = shift_.narrow(0, 0, rows);
    at::Tensor alpha = alpha_.narrow(0, 0, rows), row_sum = row_sum_.narrow(0, 0, rows);
    for (int64_t j0 = k_begin; j0 < k_end; j0 += kBlockKeys) {
      const int64_t nk = std::min(kBlockKeys, k_end - j0);
      int64_t visible_keys = nk;
      if (mask) {
        visible_keys = std::count(mask + j0, mask + j0 + nk, true);
        if (visible_keys == 0) continue;  // padding block
      }
      // Causal / window block skipping: does any row see a key of this block,
      // and does every row see all of it (then no per-element mask is needed)?
      bool any = false, all = visible_keys == nk;
      for (int64_t r = 0; r < rows; ++r) {
        any |= std::max(lo_[r], j0) < std::min(hi_[r], j0 + nk);
        all &= lo_[r] <= j0 && hi_[r] >= j0 + nk;
      }
      if (!any) continue;
      // K and V blocks (keys x D) in fp32. fp16 / bf16 are widened into
      // staging tiles (as the CUDA kernel stages tiles in shared memory); fp32
      // is used in place.
      at::Tensor kb = k_head.narrow(0, j0, nk), vb = v_head.narrow(0, j0, nk);
      if constexpr (!std::is_same_v<T, float>) {
        kb = k_.narrow(0, 0, nk).copy_(kb);
        vb = v_.narrow(0, 0, nk).copy_(vb);
      }
      at::Tensor s = s_.narrow(0, 0, rows).narrow(1, 0, nk);  // row stride kBlockKeys
      at::mm_out(s, q, kb.t());                                 // scores (q was pre-scaled)
      if (p_.softcap > 0.f) s.div_(p_.softcap).tanh_().mul_(p_.softcap);
      if (p_.alibi.defined()) add_alibi(t, j0, nk);
      if (!all) {
        // Per-element visibility (causal / window edge, padding): invisible
        // scores become -inf so that exp gives exact zeros.
        float* sp = s_.data_ptr<float>();
        for (int64_t r = 0; r < rows; ++r) {
          float* sr = sp + r * kBlockKeys;
          const int64_t lo = std::clamp(lo_[r] - j0, int64_t{0}, nk), hi = std::clamp(hi_[r] - j0, int64_t{0}, nk);
          for (int64_t j = 0; j < lo; ++j) sr[j] = kNegInf;
          for (int64_t j = hi; j < nk; ++j) sr[j] = kNegInf;
          if (mask)
            for (int64_t j = lo; j < hi; ++j) sr[j] = mask[j0 + j] ? sr[j] : kNegInf;
        }
      }
      // Online softmax: m_new = max(m, block max), alpha = exp(m - m_new),
      // P = exp(s - m_new), l = l * alpha + rowsum(P), acc = acc * alpha + P V.
      // A row that sees nothing in this block (block max -inf) keeps its state:
      // it is shifted by 0 instead of -inf (so exp(-inf) = 0, not NaN) and alpha = 1.
      at::amax_out(block_max, s, 1);
      float* bm = block_max_.data_ptr<float>();
      float* sh = shift_.data_ptr<float>();
      float* al = alpha_.data_ptr<float>();
      bool rescale = false;
      for (int64_t r = 0; r < rows; ++r) {
        if (bm[r] == kNegInf) {
          sh[r] = 0.f;
          al[r] = 1.f;
          continue;
        }
        const float m_new = std::max(part.m[r], bm[r]);
        al[r] = std::exp(part.m[r] - m_new);  // 0 when m was -inf
        rescale |= al[r] != 1.f;
        sh[r] = m_new;
        part.m[r] = m_new;
      }
      s.sub_(shift.unsqueeze(1)).exp_();
      at::sum_out(row_sum, s, 1);
      if (rescale) {
        l.mul_(alpha);
        acc.mul_(alpha.unsqueeze(1));
      }
      l.add_(row_sum);
      acc.addmm_(s, vb);  // acc += P V
    }
  }

  // ALiBi: score(r, j) -= slope(head of r) * |pos(r) - j| for the block's keys.
  void add_alibi(const Tile& t, int64_t j0, int64_t nk) {
    const float* slopes = p_.alibi.data_ptr<float>() + t.b * p_.q_heads;
    const int64_t offset = p_.q_offset.defined() ? p_.q_offset.data_ptr<int32_t>()[t.b] : p_.k_len - p_.q_len;
    float* sp = s_.data_ptr<float>();
    for (int64_t r = 0; r < t.rows; ++r) {
      const int64_t row = t.row0 + r;
      const float slope = slopes[t.kv_head * group_ + row / p_.q_len];
      const int64_t pos = offset + row % p_.q_len;
      float* sr = sp + r * kBlockKeys;
      for (int64_t j = 0; j < nk; ++j) sr[j] -= slope * static_cast<float>(std::abs(pos - (j0 + j)));
    }
  }

  // out = acc / l; rows that saw no key (l == 0) are zeros, never NaN.
  void store(const Tile& t, const Partial& part) {
    for (int64_t r = 0; r < t.rows; ++r) {
      const int64_t row = t.row0 + r;
      const int64_t h = t.kv_head * group_ + row / p_.q_len, i = row % p_.q_len;
      T* dst = p_.out.data_ptr<T>() + ((t.b * p_.q_len + i) * p_.q_heads + h) * D_;
      const float inv = part.l[r] > 0.f ? 1.f / part.l[r] : 0.f;
      for (int64_t d = 0; d < D_; ++d) dst[d] = static_cast<T>(part.acc[r * D_ + d] * inv);
    }
  }

 private:
  const AttentionProblem& p_;
  const int64_t D_, group_;
  at::Tensor q_, k_, v_, s_;  // fp32 staging tiles: scaled Q, K, V, scores / probabilities
  at::Tensor block_max_, shift_, alpha_, row_sum_;  // per-row online-softmax scratch
  std::vector<int64_t> lo_, hi_;
};

template <typename T>
void run_attention_cpu(const AttentionProblem& p) {
  const int64_t D = p.head_dim;
  const int64_t rows_per_head = (p.q_heads / p.kv_heads) * p.q_len;
  const int64_t row_blocks = (rows_per_head + kBlockRows - 1) / kBlockRows;
  const int64_t num_tiles = p.batch * p.kv_heads * row_blocks;
  const int64_t splits = choose_num_splits(p);
  auto tile_at = [&](int64_t idx) {
    const int64_t rb = idx % row_blocks, bh = idx / row_blocks;
    const int64_t row0 = rb * kBlockRows;
    return Tile{bh / p.kv_heads, bh % p.kv_heads, row0, std::min(kBlockRows, rows_per_head - row0)};
  };

  // Partials for every (tile, split): acc, m, l.
  const int64_t part_floats = kBlockRows * (D + 2);
  // (Without split-KV each thread stores its tiles itself and only needs one.)
  std::vector<float> partials(static_cast<size_t>(splits > 1 ? num_tiles * splits * part_floats : 0));
  auto partial_in = [&](float* base) {
    return Partial{base, base + kBlockRows * D, base + kBlockRows * (D + 1)};
  };
  auto partial_at = [&](int64_t tile, int64_t split) {
    float* base = partials.data() + (tile * splits + split) * part_floats;
    return partial_in(base);
  };

  at::parallel_for(0, num_tiles * splits, 1, [&](int64_t begin, int64_t end) {
    // The tile products below are ATen calls on temporaries: skip autograd and
    // view tracking for them (this guard is per thread).
    c10::InferenceMode no_autograd;
    TileWorker<T> worker(p);
    std::vector<float> own(splits == 1 ? part_floats : 0);
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t tile_idx = idx / splits, split = idx % splits;
      const Tile t = tile_at(tile_idx);
      const Partial part = splits == 1 ? partial_in(own.data()) : partial_at(tile_idx, split);
      std::fill(part.acc, part.acc + kBlockRows * D, 0.f);
      std::fill(part.m, part.m + kBlockRows, kNegInf);
      std::fill(part.l, part.l + kBlockRows, 0.f);
      auto [lo, hi] = worker.row_ranges(t);
      // Split boundaries on whole key blocks of the visible range.
      const int64_t first_block = lo / kBlockKeys, blocks = (hi + kBlockKeys - 1) / kBlockKeys - first_block;
      const int64_t per_split = (blocks + splits - 1) / splits;
      const int64_t k_begin = std::max(lo, (first_block + split * per_split) * kBlockKeys);
      const int64_t k_end = std::min(hi, (first_block + (split + 1) * per_split) * kBlockKeys);
      if (k_begin < k_end) {
        worker.load_queries(t);
        worker.attend(t, k_begin, k_end, part);
      }
      // Without split-KV the tile is complete: store it now, so that prefill
      // needs a single parallel region (each region ends in a barrier where
      // idle OpenMP threads spin, which costs dearly on a loaded machine).
      if (splits == 1) worker.store(t, part);
    }
  });
  if (splits == 1) return;

  // Merge the splits: with M = max_s m_s, out = sum_s e^(m_s - M) acc_s / sum_s e^(m_s - M) l_s.
  at::parallel_for(0, num_tiles, 1, [&](int64_t begin, int64_t end) {
    c10::InferenceMode no_autograd;
    TileWorker<T> worker(p);
    std::vector<float> acc(kBlockRows * D), m(kBlockRows), l(kBlockRows);
    for (int64_t tile_idx = begin; tile_idx < end; ++tile_idx) {
      const Tile t = tile_at(tile_idx);
      Partial merged = partial_at(tile_idx, 0);
      if (splits > 1) {
        merged = Partial{acc.data(), m.data(), l.data()};
        for (int64_t r = 0; r < t.rows; ++r) {
          float mx = kNegInf;
          for (int64_t s = 0; s < splits; ++s) mx = std::max(mx, partial_at(tile_idx, s).m[r]);
          l[r] = 0.f;
          std::fill(acc.begin() + r * D, acc.begin() + (r + 1) * D, 0.f);
          if (mx == kNegInf) continue;
          for (int64_t s = 0; s < splits; ++s) {
            const Partial ps = partial_at(tile_idx, s);
            if (ps.m[r] == kNegInf) continue;
            const float w = std::exp(ps.m[r] - mx);
            l[r] += w * ps.l[r];
            for (int64_t d = 0; d < D; ++d) acc[r * D + d] += w * ps.acc[r * D + d];
          }
        }
      }
      worker.store(t, merged);
    }
  });
}

at::Tensor attention_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                         const std::optional<at::Tensor>& key_padding_mask, const std::optional<at::Tensor>& q_offset,
                         bool causal, std::optional<double> scale, int64_t window, double softcap,
                         const std::optional<at::Tensor>& alibi_slopes) {
  if (emulating_cuda()) {  // fastxf.testing.emulate_cuda(): the CUDA kernels, run by the emulator
    return emulated_op<decltype(attention_cpu)>("attention")
        .call(q, k, v, key_padding_mask, q_offset, causal, scale, window, softcap, alibi_slopes);
  }
  auto p = make_attention_problem(q, k, v, key_padding_mask, q_offset, causal, scale, window, softcap, alibi_slopes);
  if (p.out.numel() == 0) return p.out_view;
  if (p.k_len == 0) return p.out_view.zero_();
  FASTXF_DISPATCH_FLOAT(q.scalar_type(), scalar_t, [&] { run_attention_cpu<scalar_t>(p); });
  return p.out_view;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastxf, CPU, m) { m.impl("attention", &attention_cpu); }

}  // namespace fastxf
