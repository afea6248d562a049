// The packed half-precision path of the CPU attention kernel: fp16 / bf16
// prefill on CPUs with AMX, through the oneDNN micro-kernels torch exports
// (at::native::cpublas::brgemm, the same ones its CPU flash attention uses).
//
// Why a path of its own: the generic tiles (tile_kernel.inc) hand each tile's two
// products to a GEMM that re-packs K and V into its internal layout on every call,
// i.e. once per query tile. Here the K / V of every (batch, kv head) are packed
// once per call into the VNNI layout the AMX kernels read (pairs of consecutive
// rows of the B operand interleaved: B[k][n] at ((k / 2) * ldb + n) * 2 + k % 2),
// and every query tile of the group reuses them:
//   S   = Q K^T      brgemm(A = Q rows,  B = K^T block packed, C = S, fp32)
//   acc += P V       brgemm(A = P rows,  B = V block packed,   C = acc, fp32, add)
// with the online softmax of attention_cpu.cpp in between (fp32 m, l, acc; P
// rounded to the input dtype for the second product, as torch's SDPA does).
//
// Shapes given to the micro-kernels are rounded (rows to 16, keys to 32; the
// padding of Q / P rows is never read back, padded keys are zeros in K / V and
// get P = 0) so that a handful of kernels, which oneDNN generates once per shape
// and thread, serve every problem. With enough groups to share out, each thread
// packs whole groups into its own buffer and attends them (one parallel region);
// with few, all threads pack a chunk of groups (at most kMaxPackedBytes) into a
// buffer owned by the calling thread, then all attend it. Buffers are kept
// between calls (grown, never shrunk), as is per-thread tile scratch, so a warm
// call allocates nothing.
//
// The path is taken only where it can run and pays (packed_path_applies):
// bf16 / fp16 with cpublas::could_pack (AMX, resp. AMX-FP16; false when the user
// disabled mkldnn), an even head dim (VNNI pairs), at least kMinRows query rows
// per (batch, kv head) (decode keeps the generic loops), and a one-time check that
// the micro-kernel reads this file's packing as intended. Everything here runs
// only on CPUs with AMX, so the file is compiled for AVX-512 (+ BF16) throughout.
// FASTXF_CPU_ATTENTION_BRGEMM=0 turns the path off (the generic tiles run every
// problem); =require makes a problem it does not take an error saying why (tests).
#include "attention/cpu/half_tiles.h"

#include "attention/cpu/aligned.h"
#include "attention/cpu/work_queue.h"

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

// torch's oneDNN micro-kernel entry points (declared in ATen/native/CPUBlas.h),
// redeclared weak so that the extension still loads against a torch without them.
namespace at::native::cpublas {
void brgemm(int64_t M, int64_t N, int64_t K, int64_t ld_a, int64_t ld_b, int64_t ld_c, bool add_C,
            const at::BFloat16* A, const at::BFloat16* B, float* C, bool is_vnni) __attribute__((weak));
void brgemm(int64_t M, int64_t N, int64_t K, int64_t ld_a, int64_t ld_b, int64_t ld_c, bool add_C, const at::Half* A,
            const at::Half* B, float* C, bool is_vnni) __attribute__((weak));
void brgemm_release(bool is_vnni) __attribute__((weak));
bool could_pack(c10::ScalarType dt_in) __attribute__((weak));
}  // namespace at::native::cpublas

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))

namespace fastxf {
namespace {
namespace cpublas = at::native::cpublas;

// Query rows per (batch, kv head) below which the generic tiles are used:
// packing all of K / V for a few query rows (decode) costs more than it saves.
// Measured (bf16, 1 thread, packed / generic time): 32 rows x 2048..4096 keys
// 1.3..1.5x slower, 64 rows 0.7..1.0x, 96..128 rows 0.7..0.8x.
constexpr int64_t kMinRows = 64;
constexpr int64_t kBlockRows = 128, kBlockKeys = 256;
// Packed K / V of at most this many groups at a time (memory kept between calls).
constexpr int64_t kMaxPackedBytes = int64_t{16} << 20;
// Groups packed by the thread that attends them (see per_group) up to this size
// (keys up to 16k at D = 64, 8k at D = 128); longer ones are shared by all threads.
constexpr int64_t kMaxGroupBytes = int64_t{4} << 20;
// Problems below this many flops run on the calling thread (as attention_cpu.cpp).
constexpr double kSerialFlops = 1.5e6;

constexpr int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// The micro-kernel for T (null when torch lacks it).
template <typename T>
auto brgemm_fn() {
  return static_cast<void (*)(int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, bool, const T*, const T*, float*,
                              bool)>(&cpublas::brgemm);
}

template <typename T>
void brgemm(int64_t M, int64_t N, int64_t K, int64_t lda, int64_t ldb, int64_t ldc, bool add_c, const uint16_t* a,
            const uint16_t* b, float* c) {
  brgemm_fn<T>()(M, N, K, lda, ldb, ldc, add_c, reinterpret_cast<const T*>(a), reinterpret_cast<const T*>(b), c,
                 /*is_vnni=*/true);
}

}  // namespace
}  // namespace fastxf

// Everything below runs only on CPUs with AMX, which all have these.
// (GCC 12 flags _mm512_undefined_ps inside its own masked-load / reduce
// intrinsics as "(maybe) uninitialized": a false positive, GCC bug 105593.)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma,f16c"))), \
                             apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma,f16c")
#endif

namespace fastxf {
namespace {

// ------------------------------------------------------------------ packing
// K and V are handled as raw 16-bit patterns (packing only moves them).

// K rows [0, nk) (row stride ldk) as the B operand of S = Q K^T, i.e. K^T
// (D x nkp) in VNNI layout with ldb = nkp: the pair (K[n][2i], K[n][2i+1]) is the
// 32-bit word i * nkp + n, a transpose of K seen as 32-bit pairs (16 x 16 blocks
// in registers, scalar edges). Keys [nk, nkp) are zeros.
void pack_k(const uint16_t* k, int64_t ldk, int64_t nk, int64_t nkp, int64_t D, uint16_t* out) {
  uint32_t* o = reinterpret_cast<uint32_t*>(out);
  const int64_t pairs = D / 2;
  auto scalar = [&](int64_t n0, int64_t n1, int64_t i0, int64_t i1) {
    for (int64_t n = n0; n < n1; ++n)
      for (int64_t i = i0; i < i1; ++i) {
        uint32_t w;
        std::memcpy(&w, k + n * ldk + 2 * i, sizeof(w));
        o[i * nkp + n] = w;
      }
  };
  const int64_t nk16 = nk / 16 * 16, pairs16 = pairs / 16 * 16;
  for (int64_t n0 = 0; n0 < nk16; n0 += 16) {
    for (int64_t i0 = 0; i0 < pairs16; i0 += 16) {
      __m512i r[16], t[16];
      for (int x = 0; x < 16; ++x) r[x] = _mm512_loadu_si512(k + (n0 + x) * ldk + 2 * i0);
      // t[4g + c], 128-bit lane L: rows 4g..4g+3 of column 4L + c.
      for (int x = 0; x < 16; x += 4) {
        const __m512i a = _mm512_unpacklo_epi32(r[x], r[x + 1]), b = _mm512_unpackhi_epi32(r[x], r[x + 1]);
        const __m512i c = _mm512_unpacklo_epi32(r[x + 2], r[x + 3]), d = _mm512_unpackhi_epi32(r[x + 2], r[x + 3]);
        t[x] = _mm512_unpacklo_epi64(a, c);
        t[x + 1] = _mm512_unpackhi_epi64(a, c);
        t[x + 2] = _mm512_unpacklo_epi64(b, d);
        t[x + 3] = _mm512_unpackhi_epi64(b, d);
      }
      // Column 4L + c gathers lane L of t[c], t[4 + c], t[8 + c], t[12 + c].
      for (int c = 0; c < 4; ++c) {
        const __m512i v0 = _mm512_shuffle_i32x4(t[c], t[4 + c], 0x88), v1 = _mm512_shuffle_i32x4(t[c], t[4 + c], 0xDD);
        const __m512i w0 = _mm512_shuffle_i32x4(t[8 + c], t[12 + c], 0x88);
        const __m512i w1 = _mm512_shuffle_i32x4(t[8 + c], t[12 + c], 0xDD);
        _mm512_storeu_si512(o + (i0 + c) * nkp + n0, _mm512_shuffle_i32x4(v0, w0, 0x88));
        _mm512_storeu_si512(o + (i0 + c + 4) * nkp + n0, _mm512_shuffle_i32x4(v1, w1, 0x88));
        _mm512_storeu_si512(o + (i0 + c + 8) * nkp + n0, _mm512_shuffle_i32x4(v0, w0, 0xDD));
        _mm512_storeu_si512(o + (i0 + c + 12) * nkp + n0, _mm512_shuffle_i32x4(v1, w1, 0xDD));
      }
    }
    scalar(n0, n0 + 16, pairs16, pairs);
  }
  scalar(nk16, nk, 0, pairs);
  if (nk < nkp)
    for (int64_t i = 0; i < pairs; ++i) std::fill(o + i * nkp + nk, o + (i + 1) * nkp, 0u);
}

// V rows [0, nk) (row stride ldv) as the B operand of acc += P V (nkp x D) in
// VNNI layout with ldb = D: V[2j + e][d] goes to ((j * D) + d) * 2 + e. Rows
// [nk, nkp) are zeros (P is zero there too, but 0 * garbage could be NaN).
void pack_v(const uint16_t* v, int64_t ldv, int64_t nk, int64_t nkp, int64_t D, uint16_t* out) {
  // Lanes 0..31 of the result take a[0], b[0], a[1], b[1], ... (a = lanes 0..31,
  // b = lanes 32..63 of the two-register permute).
  alignas(64) static const uint16_t kLo[32] = {0, 32, 1, 33, 2,  34, 3,  35, 4,  36, 5,  37, 6,  38, 7,  39,
                                               8, 40, 9, 41, 10, 42, 11, 43, 12, 44, 13, 45, 14, 46, 15, 47};
  const __m512i idx_lo = _mm512_load_si512(kLo);
  const __m512i idx_hi = _mm512_add_epi16(idx_lo, _mm512_set1_epi16(16));
  for (int64_t j = 0; j < nkp / 2; ++j) {
    const int64_t r0 = 2 * j, r1 = r0 + 1;
    const uint16_t* a = r0 < nk ? v + r0 * ldv : nullptr;
    const uint16_t* b = r1 < nk ? v + r1 * ldv : nullptr;
    uint16_t* o = out + j * D * 2;
    int64_t d = 0;
    for (; d + 32 <= D; d += 32) {
      const __m512i va = a ? _mm512_loadu_si512(a + d) : _mm512_setzero_si512();
      const __m512i vb = b ? _mm512_loadu_si512(b + d) : _mm512_setzero_si512();
      _mm512_storeu_si512(o + 2 * d, _mm512_permutex2var_epi16(va, idx_lo, vb));
      _mm512_storeu_si512(o + 2 * d + 32, _mm512_permutex2var_epi16(va, idx_hi, vb));
    }
    for (; d < D; ++d) {
      o[2 * d] = a ? a[d] : 0;
      o[2 * d + 1] = b ? b[d] : 0;
    }
  }
}

// ------------------------------------------------------------------ vectors

// 2^t for t <= 0 or -inf, for lanes in `keep` (others 0): 2^(t - n) with n =
// round(t) by a degree-5 polynomial fitted to relative error on [-1/2, 1/2]
// (1.9e-7 in fp32, ~1.5 ulp), scaled by 2^n. Exact 0 at -inf (masked keys
// contribute nothing) and below -126; NaN stays NaN.
inline __m512 exp2_nonpos(__m512 t, __mmask16 keep) {
  const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(t, n);
  __m512 p = _mm512_set1_ps(1.3218672247603536e-3f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.671698324382305e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.550893023610115e-2f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022237956523895e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.931468844413757e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.f));
  keep &= _mm512_cmp_ps_mask(t, _mm512_set1_ps(-126.f), _CMP_NLT_UQ);
  return _mm512_maskz_scalef_ps(keep, p, n);
}

// 16 floats rounded to nearest even as 16 fp16 / bf16.
template <typename T>
inline __m256i to_half(__m512 x) {
  if constexpr (std::is_same_v<T, c10::BFloat16>)
    return reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(x));
  else
    return _mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}

// Lanes of [j, j + 16) that lie in [lo, hi).
inline __mmask16 lanes_in(int64_t j, int64_t lo, int64_t hi) {
  const int64_t a = std::clamp<int64_t>(lo - j, 0, 16), b = std::clamp<int64_t>(hi - j, 0, 16);
  return static_cast<__mmask16>(((1u << b) - 1u) & ~((1u << a) - 1u));
}

// One row of the online softmax over a key block. x_j = s[j] * scale (+ bias[j],
// 0 or -inf for padding) for j in [lo, hi), scale > 0; every other key of
// [0, nkp) is invisible. Updates (m, l), rescales the row's acc and writes
// P = e^(x - m) in the input dtype to p[0, nkp) (exact zeros where invisible).
// Both passes need masks only on the edge vectors of [lo, hi); s and bias are
// readable (finite or -inf) on all of [0, nkp).
template <typename T>
void softmax_row(const float* s, const float* bias, int64_t lo, int64_t hi, int64_t nkp, float scale, float& m,
                 float& l, uint16_t* p, float* acc, int64_t D) {
  constexpr float kLog2e = 1.44269504088896341f;
  const __m512 neg_inf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  auto lanes = [&](int64_t j) {
    return j >= lo && j + 16 <= hi ? static_cast<__mmask16>(0xFFFF) : lanes_in(j, lo, hi);
  };
  auto raw = [&](int64_t j) {  // s (+ bias) as loaded
    const __m512 x = _mm512_loadu_ps(s + j);
    return bias ? _mm512_add_ps(x, _mm512_loadu_ps(bias + j)) : x;
  };
  // Row max of the raw scores (scale > 0 keeps the order).
  const int64_t j_lo = lo / 16 * 16;
  // (Four accumulators over the unmasked middle: one would wait on each max.)
  __m512 m0 = neg_inf, m1 = neg_inf, m2 = neg_inf, m3 = neg_inf;
  int64_t j = j_lo;
  if (j < lo && j < hi) m0 = _mm512_mask_max_ps(m0, lanes(j), m0, raw(j)), j += 16;
  for (; j + 64 <= hi; j += 64) {
    m0 = _mm512_max_ps(m0, raw(j));
    m1 = _mm512_max_ps(m1, raw(j + 16));
    m2 = _mm512_max_ps(m2, raw(j + 32));
    m3 = _mm512_max_ps(m3, raw(j + 48));
  }
  for (; j < hi; j += 16) m0 = _mm512_mask_max_ps(m0, lanes(j), m0, raw(j));
  const float bm = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_max_ps(m0, m1), _mm512_max_ps(m2, m3))) * scale;
  if (bm == -std::numeric_limits<float>::infinity()) {  // sees nothing here: state kept, P = 0
    std::fill(p, p + nkp, uint16_t{0});
    return;
  }
  if (bm > m) {  // new max: rescale what came before by e^(m - bm) (nothing came before if m = -inf)
    if (m != -std::numeric_limits<float>::infinity()) {
      const float alpha = std::exp(m - bm);
      l *= alpha;
      const __m512 va = _mm512_set1_ps(alpha);
      for (int64_t d = 0; d < D; d += 16) {
        const __mmask16 k = lanes_in(d, 0, D);
        _mm512_mask_storeu_ps(acc + d, k, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, acc + d), va));
      }
    }
    m = bm;
  }
  // P = 2^(x log2e - m log2e), one FMA per score for the scale, the shift and the base.
  const __m512 c = _mm512_set1_ps(scale * kLog2e), shift = _mm512_set1_ps(m * kLog2e);
  __m512 vsum = _mm512_setzero_ps();
  const __m256i zero = _mm256_setzero_si256();
  for (j = 0; j < j_lo; j += 16) _mm256_storeu_si256(reinterpret_cast<__m256i*>(p + j), zero);
  for (; j < hi; j += 16) {
    const __m512 e = exp2_nonpos(_mm512_fmsub_ps(raw(j), c, shift), lanes(j));
    vsum = _mm512_add_ps(vsum, e);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p + j), to_half<T>(e));
  }
  for (; j < nkp; j += 16) _mm256_storeu_si256(reinterpret_cast<__m256i*>(p + j), zero);
  l += _mm512_reduce_add_ps(vsum);
}

// out = acc / l in the input dtype (zeros when l == 0: the row saw no key).
template <typename T>
void store_row(const float* acc, float l, int64_t D, uint16_t* dst) {
  const __m512 inv = _mm512_set1_ps(l > 0.f ? 1.f / l : 0.f);
  for (int64_t d = 0; d < D; d += 16) {
    const __mmask16 k = lanes_in(d, 0, D);
    _mm256_mask_storeu_epi16(dst + d, k, to_half<T>(_mm512_mul_ps(_mm512_maskz_loadu_ps(k, acc + d), inv)));
  }
}

// ------------------------------------------------------------------ self-test

// The micro-kernel must read pack_k / pack_v the way this file writes them
// (and add to C): checked once per dtype on small integers, exact in fp32.
template <typename T>
bool packing_matches_kernel() {
  constexpr int64_t M = 16, N = 48, K = 64;
  auto val = [](int64_t i, int64_t j) { return static_cast<float>((i * 7 + j * 3) % 5 - 2); };
  auto bits = [](float x) {
    const T h(x);
    uint16_t b;
    std::memcpy(&b, &h, sizeof(b));
    return b;
  };
  std::vector<uint16_t> a(M * K), bt(N * K), b(K * N), packed(K * N);
  for (int64_t i = 0; i < M; ++i)
    for (int64_t k = 0; k < K; ++k) a[i * K + k] = bits(val(i, k));
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k) bt[n * K + k] = bits(val(k + 1, n));  // B^T rows, as K is stored
  for (int64_t k = 0; k < K; ++k)
    for (int64_t n = 0; n < N; ++n) b[k * N + n] = bits(val(k + 1, n));  // B rows, as V is stored
  bool ok = true;
  std::vector<float> c(M * N);
  // S = A B with B given as B^T rows (pack_k), N = 48 keys, 32 of them real.
  pack_k(bt.data(), K, 32, N, K, packed.data());
  brgemm<T>(M, N, K, K, N, N, false, a.data(), packed.data(), c.data());
  for (int64_t i = 0; i < M; ++i)
    for (int64_t n = 0; n < N; ++n) {
      float want = 0.f;
      for (int64_t k = 0; k < K && n < 32; ++k) want += val(i, k) * val(k + 1, n);
      ok &= c[i * N + n] == want;
    }
  // C += A B with B given as rows (pack_v), 60 of the K = 64 rows real.
  pack_v(b.data(), N, 60, K, N, packed.data());
  std::fill(c.begin(), c.end(), 1.f);
  brgemm<T>(M, N, K, K, N, N, true, a.data(), packed.data(), c.data());
  for (int64_t i = 0; i < M; ++i)
    for (int64_t n = 0; n < N; ++n) {
      float want = 1.f;
      for (int64_t k = 0; k < 60; ++k) want += val(i, k) * val(k + 1, n);
      ok &= c[i * N + n] == want;
    }
  cpublas::brgemm_release(true);
  return ok;
}

// ------------------------------------------------------------------ the call

// Per-thread tile buffers, kept between calls. (Every part starts on a cache
// line: rows are a multiple of 16, keys of 32 and D is even.)
struct HalfScratch {
  std::vector<float> f;
  std::vector<uint16_t> h;
  std::vector<int64_t> ranges;
  float *s, *acc, *m, *l, *bias;
  uint16_t *q, *p;
  int64_t *lo, *hi;

  void reserve(int64_t rows, int64_t keys, int64_t D) {
    const size_t nf = rows * keys + rows * D + 2 * rows + keys, nh = rows * D + rows * keys;
    if (ranges.size() < static_cast<size_t>(2 * rows)) ranges.resize(2 * rows);
    s = aligned64(f, nf), acc = s + rows * keys, m = acc + rows * D, l = m + rows, bias = l + rows;
    q = aligned64(h, nh), p = q + rows * D;
    lo = ranges.data(), hi = lo + rows;
  }
};

template <typename T>
void run_packed(const AttentionProblem& pr) {
  const int64_t D = pr.head_dim, Sq = pr.q_len, Sk = pr.k_len, Hq = pr.q_heads, Hkv = pr.kv_heads;
  const int64_t group = Hq / Hkv, rows_per_head = group * Sq;

  // Tile geometry: up to BR query rows (a multiple of 16, the AMX row block) by
  // key blocks of KB (a multiple of 32, the bf16 AMX depth). Measured (1 thread,
  // the bf16 prefill grid of benchmarks/bench_attention_cpu.py) among BR 32..256 x
  // KB 256 / 512: 128 x 256 was best or within noise of it everywhere; the smaller
  // key block skips more of the causal triangle than SDPA's 512.
  const int64_t BR = std::min(kBlockRows, round_up(rows_per_head, 16));
  const int64_t KB = std::min(kBlockKeys, round_up(Sk, 32));
  const int64_t row_blocks = (rows_per_head + BR - 1) / BR, key_blocks = (Sk + KB - 1) / KB;
  const int64_t groups = pr.batch * Hkv;
  const int64_t block_elems = KB * D;                        // one packed K or V block
  const int64_t group_elems = 2 * key_blocks * block_elems;  // K blocks, then V blocks
  const int64_t chunk_groups =
      std::clamp<int64_t>(kMaxPackedBytes / (group_elems * int64_t{sizeof(uint16_t)}), 1, groups);

  const uint16_t* q = static_cast<const uint16_t*>(pr.q.data_ptr());
  const uint16_t* k = static_cast<const uint16_t*>(pr.k.data_ptr());
  const uint16_t* v = static_cast<const uint16_t*>(pr.v.data_ptr());
  uint16_t* out = static_cast<uint16_t*>(pr.out.data_ptr());
  const bool* key_mask = pr.key_mask.defined() ? pr.key_mask.data_ptr<bool>() : nullptr;
  const float* alibi = pr.alibi.defined() ? pr.alibi.data_ptr<float>() : nullptr;
  const int32_t* q_offset = pr.q_offset.defined() ? pr.q_offset.data_ptr<int32_t>() : nullptr;
  const int64_t qs0 = pr.q.stride(0), qs1 = pr.q.stride(1), qs2 = pr.q.stride(2);
  const int64_t ks0 = pr.k.stride(0), ks1 = pr.k.stride(1), ks2 = pr.k.stride(2);
  const int64_t vs0 = pr.v.stride(0), vs1 = pr.v.stride(1), vs2 = pr.v.stride(2);
  const float scale = pr.scale, softcap = pr.softcap;

  const double flops = 4.0 * pr.batch * Hq * Sq * Sk * D;
  const bool serial = flops < kSerialFlops || at::get_num_threads() == 1;
  // Whole groups per task when they split evenly over the threads (or are many
  // enough that the rest hardly matters) and a group's packed K / V is small:
  // packing and attention in one parallel region, each packed block read from
  // the cache of the thread that packed it. (Without padding every group costs
  // the same, whatever its causal / window shape.)
  const int64_t threads = serial ? 1 : at::get_num_threads();
  const bool per_group = (groups % threads == 0 || groups >= 4 * threads) &&
                         group_elems * int64_t{sizeof(uint16_t)} <= kMaxGroupBytes;
  // Runs fn(i) for i in [0, n) on the pool; every thread that ran a micro-kernel
  // hands its AMX state back at the end (the kernels cache it per thread).
  auto parallel = [&](int64_t n, auto&& fn) {
    parallel_take(n, threads, [&](auto next) {
      for (int64_t i; (i = next()) < n;) fn(i);
      cpublas::brgemm_release(true);
    });
  };
  // Padding: does key block kb of batch b have a visible key at all?
  auto block_visible = [&](int64_t b, int64_t kb) {
    if (!key_mask) return true;
    const bool* mk = key_mask + b * Sk;
    return std::any_of(mk + kb * KB, mk + std::min(Sk, (kb + 1) * KB), [](bool x) { return x; });
  };

  // Packs key block kb of group g (its K block, then its V block at v_offset).
  const int64_t v_offset = key_blocks * block_elems;
  auto pack_block = [&](int64_t g, int64_t kb, uint16_t* group_packed) {
    const int64_t b = g / Hkv, h = g % Hkv;
    if (!block_visible(b, kb)) return;
    const int64_t j0 = kb * KB, nk = std::min(KB, Sk - j0), nkp = round_up(nk, 32);
    uint16_t* kdst = group_packed + kb * block_elems;
    pack_k(k + b * ks0 + h * ks1 + j0 * ks2, ks2, nk, nkp, D, kdst);
    pack_v(v + b * vs0 + h * vs1 + j0 * vs2, vs2, nk, nkp, D, kdst + v_offset);
  };

  // Row block i of group g (the last first under causality), over the group's packed K / V.
  auto attend_rows = [&](int64_t g, int64_t i, const uint16_t* group_packed) {
    thread_local HalfScratch sc;
    sc.reserve(BR, KB, D);
    const int64_t b = g / Hkv, kvh = g % Hkv;
    // Under causality the cost of a row block grows with its index: the
    // costliest come first (threads take the next item, see parallel_take).
    const int64_t rb = pr.causal ? row_blocks - 1 - i : i;
    const int64_t row0 = rb * BR, R = std::min(BR, rows_per_head - row0), Rp = round_up(R, 16);
    const int64_t q_pos0 = q_offset ? q_offset[b] : Sk - Sq;
    // Row r is query head kvh * group + (row0 + r) / Sq at position q_pos0 + (row0 + r) % Sq.
    int64_t lo_all = Sk, hi_all = 0;
    for (int64_t r = 0; r < R; ++r) {
      const int64_t row = row0 + r, hq = kvh * group + row / Sq, pos = q_pos0 + row % Sq;
      std::memcpy(sc.q + r * D, q + b * qs0 + hq * qs1 + (row % Sq) * qs2, D * sizeof(uint16_t));
      int64_t lo = 0, hi = Sk;
      if (pr.causal) hi = std::clamp<int64_t>(pos + 1, 0, Sk);
      if (pr.window > 0) lo = std::clamp<int64_t>(pos - pr.window + 1, 0, Sk);
      sc.lo[r] = lo, sc.hi[r] = hi;
      if (lo < hi) lo_all = std::min(lo_all, lo), hi_all = std::max(hi_all, hi);
    }
    std::fill(sc.acc, sc.acc + Rp * D, 0.f);
    std::fill(sc.m, sc.m + R, -std::numeric_limits<float>::infinity());
    std::fill(sc.l, sc.l + R, 0.f);

    for (int64_t kb = lo_all / KB; kb * KB < hi_all; ++kb) {
      const int64_t j0 = kb * KB, nk = std::min(KB, Sk - j0), nkp = round_up(nk, 32);
      if (!block_visible(b, kb)) continue;
      bool any = false;
      for (int64_t r = 0; r < R; ++r) any |= std::max(sc.lo[r], j0) < std::min(sc.hi[r], j0 + nk);
      if (!any) continue;
      const float* bias = nullptr;
      if (key_mask) {
        const bool* mk = key_mask + b * Sk + j0;
        if (!std::all_of(mk, mk + nk, [](bool x) { return x; })) {
          for (int64_t j = 0; j < nk; ++j) sc.bias[j] = mk[j] ? 0.f : -std::numeric_limits<float>::infinity();
          bias = sc.bias;
        }
      }
      const uint16_t* k_packed = group_packed + kb * block_elems;

      // Keys past every row's end (the causal diagonal block) are not computed:
      // both products run on the first nkq keys of the block (the packed K keeps
      // its row stride nkp; those of V are consecutive pairs anyway).
      const int64_t nkq = round_up(std::min(nk, hi_all - j0), 32);

      // S = Q K^T (unscaled, fp32)
      brgemm<T>(Rp, nkq, D, D, nkp, KB, false, sc.q, k_packed, sc.s);

      // Softcap / ALiBi (or a scale <= 0, which the fast row code does not take): the
      // final scores in place, rare enough for scalar code.
      float row_scale = scale;
      if (softcap > 0.f || alibi || !(scale > 0.f)) {
        row_scale = 1.f;
        for (int64_t r = 0; r < R; ++r) {
          const int64_t row = row0 + r, pos = q_pos0 + row % Sq;
          const float slope = alibi ? alibi[b * Hq + kvh * group + row / Sq] : 0.f;
          float* sr = sc.s + r * KB;
          const int64_t lo = std::clamp(sc.lo[r] - j0, int64_t{0}, nk);
          const int64_t hi = std::clamp(sc.hi[r] - j0, int64_t{0}, nk);
          for (int64_t j = lo; j < hi; ++j) {
            float x = sr[j] * scale;
            if (softcap > 0.f) x = softcap * std::tanh(x / softcap);
            if (alibi) x -= slope * static_cast<float>(std::abs(pos - (j0 + j)));
            sr[j] = x;
          }
        }
      }

      for (int64_t r = 0; r < R; ++r) {
        const int64_t lo = std::clamp(sc.lo[r] - j0, int64_t{0}, nk), hi = std::clamp(sc.hi[r] - j0, int64_t{0}, nk);
        softmax_row<T>(sc.s + r * KB, bias, lo, hi, nkq, row_scale, sc.m[r], sc.l[r], sc.p + r * KB,
                       sc.acc + r * D, D);
      }

      // acc += P V
      brgemm<T>(Rp, D, nkq, KB, D, D, true, sc.p, k_packed + v_offset, sc.acc);
    }

    for (int64_t r = 0; r < R; ++r) {
      const int64_t row = row0 + r, hq = kvh * group + row / Sq, pos = row % Sq;
      store_row<T>(sc.acc + r * D, sc.l[r], D, out + ((b * Sq + pos) * Hq + hq) * D);
    }
  };

  if (per_group) {
    // One parallel region: each thread packs a group's K / V into its own
    // buffer, which stays in its cache while every row block of the group reads it.
    parallel(groups, [&](int64_t g) {
      thread_local std::vector<uint16_t> own;
      uint16_t* const group_packed = aligned64(own, group_elems);
      for (int64_t kb = 0; kb < key_blocks; ++kb) pack_block(g, kb, group_packed);
      for (int64_t i = 0; i < row_blocks; ++i) attend_rows(g, i, group_packed);
    });
    return;
  }
  // Few groups: pack on every thread (a group's key blocks in parallel), then
  // attend (its row blocks in parallel), a chunk of groups at a time.
  thread_local std::vector<uint16_t> packed;
  uint16_t* const chunk = aligned64(packed, chunk_groups * group_elems);
  for (int64_t g0 = 0; g0 < groups; g0 += chunk_groups) {
    const int64_t gn = std::min(chunk_groups, groups - g0);
    parallel(gn * key_blocks, [&](int64_t u) {
      pack_block(g0 + u / key_blocks, u % key_blocks, chunk + (u / key_blocks) * group_elems);
    });
    // Row block by row block over the chunk's groups, so that the costliest come first.
    parallel(gn * row_blocks, [&](int64_t u) { attend_rows(g0 + u % gn, u / gn, chunk + (u % gn) * group_elems); });
  }
}

}  // namespace
}  // namespace fastxf

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

namespace fastxf {
namespace {

// Whether the packed path applies to this problem (compiled for baseline x86-64:
// nothing of the AVX-512 code above runs before these checks pass).
// FASTXF_CPU_ATTENTION_BRGEMM=0 turns the path off (the generic tiles run);
// =require makes a problem it does not take an error that says why (tests).
template <typename T>
bool packed_path_applies(const AttentionProblem& p) {
  const char* env = std::getenv("FASTXF_CPU_ATTENTION_BRGEMM");
  const std::string_view want = env ? env : "";
  if (want == "0") return false;
  auto no = [&](const char* why) {
    TORCH_CHECK(want != "require", "FASTXF_CPU_ATTENTION_BRGEMM=require, but the packed fp16 / bf16 path ", why);
    return false;
  };
  if (p.head_dim % 2 != 0) return no("needs an even head dim");
  if ((p.q_heads / p.kv_heads) * p.q_len < kMinRows) return no("needs (Hq / Hkv) * Sq >= 64 query rows");
  if (!cpublas::could_pack || !cpublas::brgemm_release || !brgemm_fn<T>())
    return no("needs torch's cpublas::brgemm / could_pack, which this torch does not export");
  static const bool cpu_ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                             __builtin_cpu_supports("avx512bf16");
  // could_pack also says no when the user turned mkldnn off: asked on every call.
  if (!cpu_ok || !cpublas::could_pack(c10::CppTypeToScalarType<T>::value))
    return no("needs AMX for this dtype (cpublas::could_pack) and AVX512-BF16");
  static const bool layout_ok = packing_matches_kernel<T>();
  if (!layout_ok) return no("found that oneDNN's micro-kernel does not read its VNNI packing as expected");
  return true;
}

template <typename T>
bool run_if_applies(const AttentionProblem& p) {
  if (!packed_path_applies<T>(p)) return false;
  run_packed<T>(p);
  return true;
}

}  // namespace

bool attention_cpu_packed_half(const AttentionProblem& p) {
  switch (p.q.scalar_type()) {
    case at::kBFloat16: return run_if_applies<c10::BFloat16>(p);
    case at::kHalf: return run_if_applies<c10::Half>(p);
    default: return false;
  }
}

}  // namespace fastxf

#else  // not x86-64 with GCC / Clang: never AMX

namespace fastxf {
bool attention_cpu_packed_half(const AttentionProblem&) { return false; }
}  // namespace fastxf

#endif
