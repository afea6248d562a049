// CPU implementation of fastxf::attention.
//
// Algorithm (the same as the CUDA kernels, with CPU-sized tiles): work is split
// into tiles of up to kBlockRows (see choose_blocks) query rows of one (batch,
// kv head). For grouped-query attention the rows of a tile are the (query head of the group,
// query position) pairs, so every K/V block is read once for all query heads
// that share it. Each tile streams K/V in blocks of kBlockKeys keys with an
// online softmax (running max m and sum l per row, the accumulator rescaled by
// e^(m_old - m_new)), skipping key blocks that no row of the tile can see
// (causal, sliding window, padding) and cutting the others to the keys its rows
// see. Padding at the ends of a sequence is turned into a key range once per
// call, like causality, so only masks with holes are read per key. Blocks whose
// rows see different keys (causal diagonal, window edge) are multiplied in
// bands of kBandRows rows, each over the keys it sees (fp32). When there are too
// few tiles to keep every thread busy and the key range is long (decode over a
// long cache), the keys are also split (split-KV): each split produces a partial
// (acc, m, l) and a merge combines them exactly.
//
// What makes it fast on small problems is what it does not do: no ATen call,
// tensor or heap allocation per tile (per-thread scratch is kept between calls,
// on cache lines), a single parallel region in which threads take the next
// tiles from a shared counter (cpu/work_queue.h), no thread at all for problems
// too small to pay for waking one (in flops and in K / V bytes), and no copy of
// Q where BLAS can read it in place. The two tile products (S = Q K^T, acc += P V) are
//   - for tiles of fewer than kBlasMinRows rows (decode: the query heads of a
//     group x a few positions), vectorised loops in cpu/tile_kernel.inc that read
//     K / V in place in their own dtype (a BLAS call would cost more than the work);
//   - for larger tiles, one BLAS call each, made directly on the BLAS torch links
//     (found through weak symbols, so the extension loads without them; MKL is
//     told the calls are sequential, see SequentialBlas): sgemm
//     for fp32, and MKL's fp16 / bf16 GEMMs with fp32 accumulation (AMX or
//     AVX512-BF16 where the CPU has them) for fp16 / bf16. Without those, fp16 /
//     bf16 K / V are widened to fp32 for sgemm; without any BLAS the loops do it all.
// tile_kernel.inc is compiled three times (baseline x86-64, AVX2 + FMA, AVX-512)
// and the best version for the running CPU is picked at run time, since this
// file is compiled for baseline x86-64. Three environment variables exist for the
// tests: FASTXF_CPU_ATTENTION_ISA=base|avx2|avx512 forces a version,
// FASTXF_CPU_ATTENTION_BLAS=0 runs the loops on every tile and
// FASTXF_CPU_ATTENTION_BLOCKS=rows,keys sets the tile sizes.
//
// Scores, the softmax state (m, l), the accumulator and the merge are fp32 for
// every dtype; the output is rounded once at the end. With the fp16 / bf16 GEMMs
// the probabilities P are rounded to the input dtype for the P V product (as
// torch's CPU SDPA does) while l sums them in fp32.
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string_view>
#include <type_traits>
#include <vector>

#include "attention/attention.h"
#include "attention/cpu/aligned.h"
#include "attention/cpu/half_tiles.h"
#include "attention/cpu/work_queue.h"
#include "cpu_isa.h"
#include "emulation.h"

// The Fortran BLAS entry point of the library torch links (MKL or OpenBLAS).
// Weak, so that the extension still loads against a torch without one.
extern "C" void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
                       const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
                       const float* beta, float* c, const int* ldc) __attribute__((weak));
// MKL's fp16 / bf16 GEMMs with fp32 accumulation and output (CBLAS interface,
// 32-bit ints; layout / transpose are the CBLAS enum values). Weak as well:
// without them fp16 / bf16 tiles are widened and go through sgemm.
extern "C" void cblas_gemm_bf16bf16f32(int layout, int transa, int transb, int m, int n, int k, float alpha,
                                       const uint16_t* a, int lda, const uint16_t* b, int ldb, float beta, float* c,
                                       int ldc) __attribute__((weak));
extern "C" void cblas_gemm_f16f16f32(int layout, int transa, int transb, int m, int n, int k, float alpha,
                                     const uint16_t* a, int lda, const uint16_t* b, int ldb, float beta, float* c,
                                     int ldc) __attribute__((weak));
// MKL's per-thread thread count (returns the previous one, 0 = none was set).
// The C entry point: MKL's header maps mkl_set_num_threads_local to it, and the
// lower-case symbol torch exports is the Fortran one, which takes a pointer.
// Absent from other BLAS libraries, hence weak.
extern "C" int MKL_Set_Num_Threads_Local(int nthreads) __attribute__((weak));

namespace fastxf {
namespace {

// Tile sizes. Large tiles go through BLAS, whose per-call cost wants big
// products, while 128-row / 256-key blocks still let causal and padding block
// skipping drop most invisible work (the at::mm-based predecessor measured
// 128 x 256 best among 64..256 x 128..512). choose_blocks() picks per problem;
// kMaxBlockRows bounds what it may pick.
constexpr int64_t kBlockRows = 128;
constexpr int64_t kBlockKeys = 256;
constexpr int64_t kMaxBlockRows = 256;
// Tiles with fewer rows use the vectorised loops instead of BLAS.
constexpr int64_t kBlasMinRows = 8;
// Rows per band of a key block that the rows see differently (causal diagonal,
// window edge): such blocks are multiplied band by band over the keys each band
// sees. 32 rows keep the sgemm calls efficient while a 128-row causal block
// computes 5/8 of its scores instead of all of them.
constexpr int64_t kBandRows = 32;

// Null when the BLAS lacks them.
const auto blas_sgemm = &sgemm_;
const auto blas_gemm_bf16 = &cblas_gemm_bf16bf16f32;
const auto blas_gemm_f16 = &cblas_gemm_f16f16f32;

// Row-major products through the column-major BLAS: a row-major X (ld) is the
// column-major X^T, so C = A B is computed as C^T = B^T A^T.
// C (m x n, ldc) = A (m x k, lda) * B^T with B (n x k, ldb).
void blas_gemm_nt(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb,
                  float* c, int64_t ldc) {
  const int mi = m, ni = n, ki = k, la = lda, lb = ldb, lc = ldc;
  const float one = 1.f, zero = 0.f;
  blas_sgemm("T", "N", &ni, &mi, &ki, &one, b, &lb, a, &la, &zero, c, &lc);
}
// C (m x n, ldc) += A (m x k, lda) * B (k x n, ldb).
void blas_gemm_nn_acc(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb,
                      float* c, int64_t ldc) {
  const int mi = m, ni = n, ki = k, la = lda, lb = ldb, lc = ldc;
  const float one = 1.f;
  blas_sgemm("N", "N", &ni, &mi, &ki, &one, b, &lb, a, &la, &one, c, &lc);
}

constexpr int kCblasRowMajor = 101, kCblasNoTrans = 111, kCblasTrans = 112;
template <typename T>
void blas_half_gemm(int transb, int64_t m, int64_t n, int64_t k, float alpha, const T* a, int64_t lda, const T* b,
                    int64_t ldb, float beta, float* c, int64_t ldc) {
  if constexpr (sizeof(T) == 2) {  // (never chosen for fp32)
    auto fn = std::is_same_v<T, c10::BFloat16> ? blas_gemm_bf16 : blas_gemm_f16;
    fn(kCblasRowMajor, kCblasNoTrans, transb, m, n, k, alpha, reinterpret_cast<const uint16_t*>(a), lda,
       reinterpret_cast<const uint16_t*>(b), ldb, beta, c, ldc);
  }
}
// C (m x n, ldc) = alpha * A (m x k, lda) * B^T with B (n x k, ldb); fp32 C.
template <typename T>
void blas_half_gemm_nt(int64_t m, int64_t n, int64_t k, float alpha, const T* a, int64_t lda, const T* b,
                       int64_t ldb, float* c, int64_t ldc) {
  blas_half_gemm<T>(kCblasTrans, m, n, k, alpha, a, lda, b, ldb, 0.f, c, ldc);
}
// C (m x n, ldc) += A (m x k, lda) * B (k x n, ldb); fp32 C.
template <typename T>
void blas_half_gemm_nn_acc(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b, int64_t ldb,
                           float* c, int64_t ldc) {
  blas_half_gemm<T>(kCblasNoTrans, m, n, k, 1.f, a, lda, b, ldb, 1.f, c, ldc);
}

// The problem as plain pointers and strides (elements), for the tile code.
struct TileArgs {
  const void *q, *k, *v;
  void* out;  // (B, Sq, Hq, D) contiguous
  int64_t q_stride[3], k_stride[3], v_stride[3];
  int64_t batch, q_heads, kv_heads, group, q_len, k_len, head_dim;
  float scale, softcap;
  const bool* key_mask;  // (B, Sk) or null
  // Per sequence b: its visible keys lie in [pad_range[2b], pad_range[2b + 1]) and
  // holes[b] says whether some key in between is masked. Padding at either end
  // thus becomes a key range like causality (whole blocks skipped, blocks cut to
  // it, no per-key test); key_mask is read only for sequences with holes.
  const int64_t* pad_range;  // (B, 2) or null (no mask)
  const bool* holes;         // (B) or null
  const float* alibi;    // (B, Hq) or null
  bool use_blas;         // false with FASTXF_CPU_ATTENTION_BLAS=0 (tests run the loops on every tile)
};

// Query rows [row0, row0 + rows) of one (batch, kv head). Row r is query head
// kv_head * group + r / q_len at query position q_pos0 + r % q_len.
struct Tile {
  int64_t b, kv_head, row0, rows, q_pos0;
};

// Per-thread buffers, kept between calls (grown, never shrunk) so that a call
// allocates nothing once warm.
struct Scratch {
  std::vector<float> buf;
  std::vector<int64_t> bounds;
  float *q = nullptr, *k = nullptr, *v = nullptr, *s = nullptr, *acc = nullptr, *m = nullptr, *l = nullptr;
  float *qh = nullptr, *ph = nullptr;  // Q and P in fp16 / bf16 for the half-precision BLAS (2-byte elements)
  int64_t *lo = nullptr, *hi = nullptr;  // visible key range [lo, hi) of each row (causal / window)
  int64_t block_keys = 0;

  void reserve(int64_t rows, int64_t keys, int64_t D) {
    const size_t need = static_cast<size_t>(rows * D * 3 + keys * D * 2 + rows * keys * 2 + rows * 2);
    if (bounds.size() < static_cast<size_t>(2 * rows)) bounds.resize(2 * rows);
    // From a cache line (the parts then start on lines too when D and the block
    // sizes are multiples of 16): fp32 encoder / prefill tiles measured 5-10% faster.
    float* p = aligned64(buf, need);
    q = p, p += rows * D;
    acc = p, p += rows * D;
    k = p, p += keys * D;
    v = p, p += keys * D;
    s = p, p += rows * keys;
    qh = p, p += rows * D;
    ph = p, p += rows * keys;
    m = p, p += rows;
    l = p;
    lo = bounds.data();
    hi = lo + rows;
    block_keys = keys;
  }
};

using UnitFn = void (*)(const TileArgs&, const Tile&, int64_t, int64_t, float*, float*, float*, Scratch&, bool);
struct UnitFns {
  UnitFn f32, f16, bf16;
};

}  // namespace
}  // namespace fastxf

// The vector helpers pass 64-byte vectors by value only between always-inlined
// functions, so the ABI note about them does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"

// ---- the tile code, once per instruction set --------------------------------
// (Each copy lives in its own namespace; see tile_kernel.inc and cpu_isa.h.)
#define FASTXF_ISA_FILE "attention/cpu/tile_kernel.inc"
#define FASTXF_ISA_NAMESPACE(isa) cpu_attention_##isa
#include "cpu_isa_instances.inc"

namespace fastxf {
namespace {

// The tile code for this CPU. FASTXF_CPU_ATTENTION_ISA=base|avx2|avx512 forces
// one (tests run every version the CPU can execute).
const UnitFns& unit_fns() {
  switch (cpu_isa("FASTXF_CPU_ATTENTION_ISA")) {
    case CpuIsa::kAvx512: return cpu_attention_avx512::kUnitFns;
    case CpuIsa::kAvx2: return cpu_attention_avx2::kUnitFns;
    default: return cpu_attention_base::kUnitFns;
  }
}

// Number of key splits per tile. Depends on shapes and the thread count only
// (never on values), so results are reproducible for a given thread count.
// Splitting pays when there are too few tiles to keep every thread busy: the
// time of the parallel loop is ceil(tiles * s / threads) units of 1 / s of a
// tile. Take the smallest s that cuts that by at least 10% over s = 1 (the merge,
// the partial buffers and the smaller BLAS calls are not free), with at least
// kMinKeysPerSplit keys per split so that each split's work dwarfs its merge.
int64_t choose_num_splits(int64_t tiles, int64_t threads, int64_t k_len) {
  constexpr int64_t kMinKeysPerSplit = 512;
  const int64_t max_splits = std::clamp<int64_t>(k_len / kMinKeysPerSplit, 1, 16);
  auto cost = [&](int64_t s) { return static_cast<double>((tiles * s + threads - 1) / threads) / s; };
  int64_t best = 1;
  double best_cost = cost(1);
  for (int64_t s = 2; s <= max_splits; ++s) {
    if (cost(s) < 0.9 * best_cost) {
      best = s;
      best_cost = cost(s);
    }
  }
  return best;
}

// Rows per tile and keys per block for a problem.
// FASTXF_CPU_ATTENTION_BLOCKS=rows,keys overrides both (for re-tuning and for
// the tests; rows a multiple of kBandRows up to kMaxBlockRows, keys a multiple of 16).
std::pair<int64_t, int64_t> choose_blocks(const AttentionProblem& p) {
  if (const char* env = std::getenv("FASTXF_CPU_ATTENTION_BLOCKS")) {
    long rows = 0, keys = 0;
    TORCH_CHECK(std::sscanf(env, "%ld,%ld", &rows, &keys) == 2 && rows > 0 && rows % kBandRows == 0 &&
                    rows <= kMaxBlockRows && keys > 0 && keys % 16 == 0,
                "FASTXF_CPU_ATTENTION_BLOCKS must be 'rows,keys' with rows a multiple of ", kBandRows, " up to ",
                kMaxBlockRows, " and keys a multiple of 16, got '", env, "'");
    return {rows, keys};
  }
  // Without causality or a window every row of a BLAS tile sees the same keys:
  // no block skipping to lose, so 512-key blocks halve the online-softmax
  // rescales and give sgemm wider products (measured 3-7% faster than 256 on
  // 1024-key prefill and 256 / 512-token encoders, fp32, where 128 vs 256 rows
  // made no clear difference). Decode tiles (loops) keep 256: their split-KV
  // works on whole blocks.
  // Up to 1024 keys one block holds them all, so no online rescale at all
  // (1024-key prefill measured 1-2% faster at one thread than 512-key blocks;
  // longer rows keep 512, whose score scratch stays within L2). Only with at
  // least two tiles per thread: fewer tiles are split over the threads on
  // whole key blocks, which needs more than one.
  const int64_t rows = p.q_heads / p.kv_heads * p.q_len;
  const bool blas_tiles = rows >= kBlasMinRows;
  if (blas_tiles && !p.causal && p.window <= 0) {
    const int64_t tiles = p.batch * p.kv_heads * ((rows + kBlockRows - 1) / kBlockRows);
    const bool one_block = p.k_len <= 4 * kBlockKeys && tiles >= 2 * at::get_num_threads();
    return {kBlockRows, one_block ? 4 * kBlockKeys : 2 * kBlockKeys};
  }
  return {kBlockRows, kBlockKeys};
}

// Tells MKL, for the lifetime of the object, that BLAS calls on this thread
// are sequential (a no-op with another BLAS).
class SequentialBlas {
 public:
  // active: whether BLAS will be called at all (decode tiles never call it).
  explicit SequentialBlas(bool active)
      : active_(active && MKL_Set_Num_Threads_Local), previous_(active_ ? MKL_Set_Num_Threads_Local(1) : 0) {}
  ~SequentialBlas() {
    if (active_) MKL_Set_Num_Threads_Local(previous_);
  }
  SequentialBlas(const SequentialBlas&) = delete;
  SequentialBlas& operator=(const SequentialBlas&) = delete;

 private:
  bool active_;
  int previous_;
};

// Problems below this many flops that read less than this much K / V run on
// the calling thread: waking the pool costs more than the arithmetic. The
// bytes count because decode with few query heads per KV head is bound by
// reading K / V, not by flops (MHA decode over 300 keys: 1.2 MFLOP but 2.4 MB
// of fp32 K / V, twice as fast on two threads, each of which then reads half
// from its own L2).
constexpr double kSerialFlops = 1.5e6;
constexpr double kSerialBytes = 1 << 20;

template <typename T>
void run_attention_cpu(const AttentionProblem& p) {
  TileArgs a;
  a.q = p.q.data_ptr();
  a.k = p.k.data_ptr();
  a.v = p.v.data_ptr();
  a.out = p.out.data_ptr();
  for (int i = 0; i < 3; ++i) {
    a.q_stride[i] = p.q.stride(i);
    a.k_stride[i] = p.k.stride(i);
    a.v_stride[i] = p.v.stride(i);
  }
  a.batch = p.batch;
  a.q_heads = p.q_heads;
  a.kv_heads = p.kv_heads;
  a.group = p.q_heads / p.kv_heads;
  a.q_len = p.q_len;
  a.k_len = p.k_len;
  a.head_dim = p.head_dim;
  a.scale = p.scale;
  a.softcap = p.softcap;
  a.key_mask = p.key_mask.defined() ? p.key_mask.data_ptr<bool>() : nullptr;
  a.alibi = p.alibi.defined() ? p.alibi.data_ptr<float>() : nullptr;
  a.pad_range = nullptr;
  a.holes = nullptr;
  if (a.key_mask) {
    // One pass over the (B, Sk) mask on the calling thread; kept between calls.
    thread_local std::vector<int64_t> pad_range;
    thread_local std::vector<char> holes;
    pad_range.resize(2 * p.batch);
    holes.resize(p.batch);
    for (int64_t b = 0; b < p.batch; ++b) {
      const bool* mb = a.key_mask + b * p.k_len;
      int64_t lo = 0, hi = p.k_len;
      while (lo < hi && !mb[lo]) ++lo;
      while (hi > lo && !mb[hi - 1]) --hi;
      pad_range[2 * b] = lo;
      pad_range[2 * b + 1] = hi;
      holes[b] = std::find(mb + lo, mb + hi, false) != mb + hi;
    }
    a.pad_range = pad_range.data();
    a.holes = reinterpret_cast<const bool*>(holes.data());
  }
  const int32_t* q_offset = p.q_offset.defined() ? p.q_offset.data_ptr<int32_t>() : nullptr;

  const char* blas_env = std::getenv("FASTXF_CPU_ATTENTION_BLAS");
  a.use_blas = !(blas_env && std::string_view(blas_env) == "0");
  // fp16 / bf16 prefill with AMX: K / V packed once per call (cpu/half_tiles.cpp).
  if (!std::is_same_v<T, float> && a.use_blas && attention_cpu_packed_half(p)) return;
  const UnitFns& fns = unit_fns();
  const UnitFn unit = std::is_same_v<T, float> ? fns.f32 : std::is_same_v<T, at::Half> ? fns.f16 : fns.bf16;

  const int64_t D = p.head_dim;
  const int64_t rows_per_head = a.group * p.q_len;
  const auto [block_rows, max_block_keys] = choose_blocks(p);
  // No wider than the keys (rounded to whole vectors): the block width is also
  // the row stride of the score scratch, and 16 keys at a 256-float stride
  // would spread a tile's scores over 16 times the cache lines.
  const int64_t block_keys = std::min(max_block_keys, (p.k_len + 15) / 16 * 16);
  const int64_t row_blocks = (rows_per_head + block_rows - 1) / block_rows;
  const int64_t tile_rows = std::min(block_rows, rows_per_head);
  const int64_t num_tiles = p.batch * p.kv_heads * row_blocks;
  // Causal: a head's last row blocks see the most keys, so they come first
  // (threads take tiles in this order, see parallel_take).
  auto tile_at = [&](int64_t idx) {
    const int64_t rb = p.causal ? row_blocks - 1 - idx % row_blocks : idx % row_blocks, bh = idx / row_blocks;
    const int64_t b = bh / p.kv_heads, row0 = rb * block_rows;
    const int64_t q_pos0 = q_offset ? q_offset[b] : p.k_len - p.q_len;
    return Tile{b, bh % p.kv_heads, row0, std::min(block_rows, rows_per_head - row0), q_pos0};
  };
  // Visible key range [lo, hi) of every row from causal / window and the
  // sequence's padding range (holes are applied per key) into sc.lo / sc.hi;
  // returns the union over the rows.
  auto row_ranges = [&](const Tile& t, Scratch& sc) {
    int64_t lo_all = p.k_len, hi_all = 0;
    const int64_t pad_lo = a.pad_range ? a.pad_range[2 * t.b] : 0;
    const int64_t pad_hi = a.pad_range ? a.pad_range[2 * t.b + 1] : p.k_len;
    for (int64_t r = 0, i = t.row0 % p.q_len; r < t.rows; ++r, i = i + 1 == p.q_len ? 0 : i + 1) {
      const int64_t pos = t.q_pos0 + i;  // (row0 + r) % q_len, without a division per row
      int64_t lo = pad_lo, hi = pad_hi;
      if (p.causal) hi = std::clamp<int64_t>(pos + 1, 0, hi);
      if (p.window > 0) lo = std::clamp<int64_t>(pos - p.window + 1, lo, p.k_len);
      sc.lo[r] = lo;
      sc.hi[r] = hi;
      if (lo < hi) {
        lo_all = std::min(lo_all, lo);
        hi_all = std::max(hi_all, hi);
      }
    }
    return std::pair<int64_t, int64_t>{lo_all, std::max(lo_all, hi_all)};
  };

  const double flops = 4.0 * p.batch * p.q_heads * p.q_len * p.k_len * D;
  const double kv_bytes = 2.0 * p.batch * p.kv_heads * p.k_len * D * sizeof(T);
  const int64_t threads = flops < kSerialFlops && kv_bytes < kSerialBytes ? 1 : at::get_num_threads();
  const int64_t splits = choose_num_splits(num_tiles, threads, p.k_len);
  const int64_t units = num_tiles * splits;
  const int64_t part_floats = tile_rows * (D + 2);
  // Partials (acc, m, l) of every (tile, split) for the merge; the calling
  // thread's buffer is reused between calls. Without split-KV each thread
  // stores its tiles itself and needs none.
  thread_local std::vector<float> partials;
  float* part_base = splits > 1 ? aligned64(partials, units * part_floats) : nullptr;

  parallel_take(units, threads, [&](auto next) {
    // Every BLAS call here is one thread's share of the work. Left to itself,
    // MKL inside a parallel region still plans for the pool's thread count and
    // then takes its packing (copy) kernels, whose cost dwarfs a 64 x 64 x 64
    // product; told it runs on one thread it takes the no-copy kernels it uses
    // in a single-threaded process (encoder 64-token tiles, 2 threads: see
    // benchmarks/results/cpu_attention.json).
    const SequentialBlas sequential_blas(a.use_blas && tile_rows >= kBlasMinRows);
    thread_local Scratch sc;
    sc.reserve(tile_rows, block_keys, D);
    for (int64_t idx; (idx = next()) < units;) {
      const int64_t tile_idx = idx / splits, split = idx % splits;
      const Tile t = tile_at(tile_idx);
      auto [lo, hi] = row_ranges(t, sc);
      // Split boundaries on whole key blocks of the visible range.
      const int64_t first_block = lo / block_keys, blocks = (hi + block_keys - 1) / block_keys - first_block;
      const int64_t per_split = (blocks + splits - 1) / splits;
      const int64_t k_begin = std::max(lo, (first_block + split * per_split) * block_keys);
      const int64_t k_end = std::min(hi, (first_block + (split + 1) * per_split) * block_keys);
      float* acc = splits > 1 ? part_base + idx * part_floats : sc.acc;
      float* m = splits > 1 ? acc + tile_rows * D : sc.m;
      float* l = splits > 1 ? m + tile_rows : sc.l;
      unit(a, t, k_begin, k_end, acc, m, l, sc, /*store=*/splits == 1);
    }
  });
  if (splits == 1) return;

  // Merge the splits on this thread (there are few tiles when splitting pays):
  // with M = max_s m_s, out = sum_s e^(m_s - M) acc_s / sum_s e^(m_s - M) l_s.
  thread_local Scratch sc;
  sc.reserve(tile_rows, block_keys, D);
  for (int64_t tile_idx = 0; tile_idx < num_tiles; ++tile_idx) {
    const Tile t = tile_at(tile_idx);
    for (int64_t r = 0; r < t.rows; ++r) {
      auto part = [&](int64_t s) { return part_base + (tile_idx * splits + s) * part_floats; };
      float mx = -std::numeric_limits<float>::infinity();
      for (int64_t s = 0; s < splits; ++s) mx = std::max(mx, part(s)[tile_rows * D + r]);
      float* acc = sc.acc + r * D;
      std::fill(acc, acc + D, 0.f);
      sc.l[r] = 0.f;
      if (mx == -std::numeric_limits<float>::infinity()) continue;
      for (int64_t s = 0; s < splits; ++s) {
        const float* ps = part(s);
        const float ms = ps[tile_rows * D + r];
        if (ms == -std::numeric_limits<float>::infinity()) continue;
        const float w = std::exp(ms - mx);
        sc.l[r] += w * ps[tile_rows * (D + 1) + r];
        for (int64_t d = 0; d < D; ++d) acc[d] += w * ps[r * D + d];
      }
    }
    // Normalise and store through the tile code's store (run_unit with an empty
    // key range would reset acc, so store directly here).
    const int64_t Dh = D;
    for (int64_t r = 0; r < t.rows; ++r) {
      const int64_t row = t.row0 + r;
      const int64_t h = t.kv_head * a.group + row / p.q_len, i = row % p.q_len;
      T* dst = static_cast<T*>(a.out) + ((t.b * p.q_len + i) * p.q_heads + h) * Dh;
      const float inv = sc.l[r] > 0.f ? 1.f / sc.l[r] : 0.f;
      for (int64_t d = 0; d < Dh; ++d) dst[d] = static_cast<T>(sc.acc[r * Dh + d] * inv);
    }
  }
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
