// Test kernels of the emulator itself (tests/test_emulator_runtime.py), written
// against csrc/cuda/primitives.cuh like the real kernels and registered as
// torch.ops.fastxf_emu_selftest.* in fastxf._emu:
//  - mma_gemm: C = A B with mma.m16n8k16, fragments either gathered from
//    global memory by the PTX ISA index formulas or loaded with ldmatrix (A:
//    x4, B: x2.trans), compared with torch.mm by the test;
//  - ldmatrix_probe: the registers ldmatrix returns for given row addresses,
//    compared with an explicit gather in Python;
//  - shfl_probe / vote_probe: one warp's shuffles and votes;
//  - cp_async_probe: cp.async with src-size 0..16 (zero fill), landed at its wait;
//  - planted_bug: small kernels with one deliberate bug each, which the
//    checker must report (and a correct twin, which it must not).
#include <ATen/ATen.h>
#include <torch/library.h>

#include "cuda/primitives.cuh"

namespace fastxf {
namespace emu_selftest {

namespace {

emu::GlobalBuffer buffer(const at::Tensor& t, const char* name, bool writable) {
  return emu::GlobalBuffer(t.data_ptr(), t.nbytes(), name, writable);
}

// ------------------------------------------------------------------ mma ----
// One warp per 16 x 8 tile of C. a: (M, K) row-major, b: (K, N) row-major, T
// bits as uint16; c: (M, N) fp32.
template <typename T, bool kLdmatrix>
__global__ void mma_gemm_kernel(const uint16_t* a, const uint16_t* b, float* c, int M, int N, int K) {
  const int lane = threadIdx.x, g = lane >> 2, t = lane & 3;
  const int m0 = blockIdx.y * 16, n0 = blockIdx.x * 8;
  FASTXF_SHARED(uint16_t[16][16], sA);  // A tile, row-major
  FASTXF_SHARED(uint16_t[16][8], sB);   // B tile, [k][n]
  float acc[4] = {0.f, 0.f, 0.f, 0.f};
  auto A = [&](int r, int k) { return static_cast<uint32_t>(ld_global(a + (m0 + r) * K + k)); };
  auto B = [&](int k, int n) { return static_cast<uint32_t>(ld_global(b + k * N + n0 + n)); };
  for (int k0 = 0; k0 < K; k0 += 16) {
    uint32_t fa[4], b0, b1;
    if constexpr (!kLdmatrix) {
      // PTX ISA, mma.m16n8k16 .f16/.bf16: A row g / g+8, columns 2t, 2t+1 (+8);
      // B columns (k) 2t, 2t+1 (+8) of row (n) g; the lower index in the low half.
      fa[0] = A(g, k0 + 2 * t) | (A(g, k0 + 2 * t + 1) << 16);
      fa[1] = A(g + 8, k0 + 2 * t) | (A(g + 8, k0 + 2 * t + 1) << 16);
      fa[2] = A(g, k0 + 2 * t + 8) | (A(g, k0 + 2 * t + 9) << 16);
      fa[3] = A(g + 8, k0 + 2 * t + 8) | (A(g + 8, k0 + 2 * t + 9) << 16);
      b0 = B(k0 + 2 * t, g) | (B(k0 + 2 * t + 1, g) << 16);
      b1 = B(k0 + 2 * t + 8, g) | (B(k0 + 2 * t + 9, g) << 16);
    } else {
      for (int i = lane; i < 16 * 16; i += 32) st_shared(&sA[i / 16][i % 16], static_cast<uint16_t>(A(i / 16, k0 + i % 16)));
      for (int i = lane; i < 16 * 8; i += 32) st_shared(&sB[i / 8][i % 8], static_cast<uint16_t>(B(k0 + i / 8, i % 8)));
      sync_warp();
      // A: matrices (rows 0-7, cols 0-7), (rows 8-15, cols 0-7), (rows 0-7,
      // cols 8-15), (rows 8-15, cols 8-15) = a0..a3; lane 8i + r gives row r
      // of matrix i. B stored [k][n]: .trans of (k 0-7) and (k 8-15) = b0, b1.
      const int i = lane >> 3, r = lane & 7;
      ldmatrix_x4(fa[0], fa[1], fa[2], fa[3], cvta_to_shared(&sA[r + 8 * (i & 1)][8 * (i >> 1)]));
      ldmatrix_x2_trans(b0, b1, cvta_to_shared(&sB[r + 8 * (i & 1)][0]));
      sync_warp();  // the next k-step overwrites the tiles
    }
    mma_m16n8k16<T>(acc, fa, b0, b1);
  }
  // C: rows g and g + 8, columns 2t, 2t + 1.
  st_global(c + (m0 + g) * N + n0 + 2 * t, acc[0]);
  st_global(c + (m0 + g) * N + n0 + 2 * t + 1, acc[1]);
  st_global(c + (m0 + g + 8) * N + n0 + 2 * t, acc[2]);
  st_global(c + (m0 + g + 8) * N + n0 + 2 * t + 1, acc[3]);
}

at::Tensor mma_gemm(const at::Tensor& a, const at::Tensor& b, bool use_ldmatrix) {
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2 && a.size(1) == b.size(0), "mma_gemm: a (M, K) and b (K, N)");
  TORCH_CHECK(a.scalar_type() == b.scalar_type() && (a.scalar_type() == at::kHalf || a.scalar_type() == at::kBFloat16),
              "mma_gemm: a and b must both be float16 or bfloat16");
  const int M = a.size(0), K = a.size(1), N = b.size(1);
  TORCH_CHECK(M % 16 == 0 && N % 8 == 0 && K % 16 == 0, "mma_gemm: M % 16, N % 8, K % 16 must be 0");
  const at::Tensor ac = a.contiguous(), bc = b.contiguous();
  at::Tensor c = at::empty({M, N}, a.options().dtype(at::kFloat));
  auto ga = buffer(ac, "a", false), gb = buffer(bc, "b", false), gc = buffer(c, "c", true);
  const auto* pa = static_cast<const uint16_t*>(ac.data_ptr());
  const auto* pb = static_cast<const uint16_t*>(bc.data_ptr());
  float* pc = c.data_ptr<float>();
  const dim3 grid(N / 8, M / 16);
  const bool bf = a.scalar_type() == at::kBFloat16;
  if (bf && use_ldmatrix) FASTXF_LAUNCH((mma_gemm_kernel<__nv_bfloat16, true>), grid, 32, 0, nullptr, pa, pb, pc, M, N, K);
  if (bf && !use_ldmatrix) FASTXF_LAUNCH((mma_gemm_kernel<__nv_bfloat16, false>), grid, 32, 0, nullptr, pa, pb, pc, M, N, K);
  if (!bf && use_ldmatrix) FASTXF_LAUNCH((mma_gemm_kernel<__half, true>), grid, 32, 0, nullptr, pa, pb, pc, M, N, K);
  if (!bf && !use_ldmatrix) FASTXF_LAUNCH((mma_gemm_kernel<__half, false>), grid, 32, 0, nullptr, pa, pb, pc, M, N, K);
  return c;
}

// D = (A B) B2 for one 16 x 16 A, 16 x 16 B, 16 x 8 B2: the accumulators of
// A B (two n8 tiles, C layout) are packed to T and fed to the second mma as its
// A operand, as attention kernels do with P. With A / B fragments loaded by
// ldmatrix (whose layout the test checks on its own), this pins the C layout
// relative to the A layout, which a plain GEMM cannot (a consistent permutation
// of C in both the kernel and the emulator would cancel out).
template <typename T>
__global__ void mma_chain_kernel(const uint16_t* a, const uint16_t* b, const uint16_t* b2, float* d) {
  FASTXF_SHARED(uint16_t[16][16], sA);
  FASTXF_SHARED(uint16_t[16][16], sB);   // [k][n]
  FASTXF_SHARED(uint16_t[16][8], sB2);   // [k][n]
  const int lane = threadIdx.x, g = lane >> 2, t = lane & 3, i = lane >> 3, r = lane & 7;
  for (int e = lane; e < 256; e += 32) {
    st_shared(&sA[e / 16][e % 16], ld_global(a + e));
    st_shared(&sB[e / 16][e % 16], ld_global(b + e));
  }
  for (int e = lane; e < 128; e += 32) st_shared(&sB2[e / 8][e % 8], ld_global(b2 + e));
  sync_warp();
  uint32_t fa[4], b0, b1, b2r, b3;
  ldmatrix_x4(fa[0], fa[1], fa[2], fa[3], cvta_to_shared(&sA[r + 8 * (i & 1)][8 * (i >> 1)]));
  // B [k][n], .trans: matrices (k 0-7, n 0-7), (k 8-15, n 0-7), (k 0-7, n 8-15), (k 8-15, n 8-15).
  ldmatrix_x4_trans(b0, b1, b2r, b3, cvta_to_shared(&sB[r + 8 * (i & 1)][8 * (i >> 1)]));
  float s0[4] = {0.f, 0.f, 0.f, 0.f}, s1[4] = {0.f, 0.f, 0.f, 0.f};
  mma_m16n8k16<T>(s0, fa, b0, b1);   // columns 0-7 of A B
  mma_m16n8k16<T>(s1, fa, b2r, b3);  // columns 8-15
  const uint32_t p[4] = {pack2<T>(s0[0], s0[1]), pack2<T>(s0[2], s0[3]), pack2<T>(s1[0], s1[1]),
                         pack2<T>(s1[2], s1[3])};
  uint32_t c0, c1;
  ldmatrix_x2_trans(c0, c1, cvta_to_shared(&sB2[r + 8 * (i & 1)][0]));
  float o[4] = {0.f, 0.f, 0.f, 0.f};
  mma_m16n8k16<T>(o, p, c0, c1);
  st_global(d + g * 8 + 2 * t, o[0]);
  st_global(d + g * 8 + 2 * t + 1, o[1]);
  st_global(d + (g + 8) * 8 + 2 * t, o[2]);
  st_global(d + (g + 8) * 8 + 2 * t + 1, o[3]);
}

at::Tensor mma_chain(const at::Tensor& a, const at::Tensor& b, const at::Tensor& b2) {
  TORCH_CHECK(a.sizes() == at::IntArrayRef({16, 16}) && b.sizes() == at::IntArrayRef({16, 16}) &&
                  b2.sizes() == at::IntArrayRef({16, 8}),
              "mma_chain: a (16, 16), b (16, 16), b2 (16, 8)");
  TORCH_CHECK(a.scalar_type() == b.scalar_type() && a.scalar_type() == b2.scalar_type() &&
                  (a.scalar_type() == at::kHalf || a.scalar_type() == at::kBFloat16),
              "mma_chain: float16 or bfloat16 inputs of one dtype");
  const at::Tensor ac = a.contiguous(), bc = b.contiguous(), b2c = b2.contiguous();
  at::Tensor d = at::empty({16, 8}, a.options().dtype(at::kFloat));
  auto g1 = buffer(ac, "a", false), g2 = buffer(bc, "b", false), g3 = buffer(b2c, "b2", false),
       g4 = buffer(d, "d", true);
  const auto* pa = static_cast<const uint16_t*>(ac.data_ptr());
  const auto* pb = static_cast<const uint16_t*>(bc.data_ptr());
  const auto* pb2 = static_cast<const uint16_t*>(b2c.data_ptr());
  if (a.scalar_type() == at::kHalf) {
    FASTXF_LAUNCH(mma_chain_kernel<__half>, 1, 32, 0, nullptr, pa, pb, pb2, d.data_ptr<float>());
  } else {
    FASTXF_LAUNCH(mma_chain_kernel<__nv_bfloat16>, 1, 32, 0, nullptr, pa, pb, pb2, d.data_ptr<float>());
  }
  return d;
}

// ------------------------------------------------------------- ldmatrix ----
// smem_rows: (R, 8) int16 copied to shared memory; rows: (32,) row index per
// lane (lane 8i + r addresses row r of matrix i). Returns (32, num) int32.
template <int kNum, bool kTrans>
__global__ void ldmatrix_kernel(const uint16_t* src, const int* rows, int* out, int R) {
  uint16_t* s = dynamic_shared<uint16_t>();
  const int lane = threadIdx.x;
  for (int i = lane; i < R * 8; i += 32) st_shared(s + i, ld_global(src + i));
  sync_warp();
  const uint32_t addr = cvta_to_shared(s) + 16u * static_cast<uint32_t>(ld_global(rows + lane));
  uint32_t r[4] = {0, 0, 0, 0};
  if constexpr (kNum == 1) kTrans ? ldmatrix_x1_trans(r[0], addr) : ldmatrix_x1(r[0], addr);
  if constexpr (kNum == 2) kTrans ? ldmatrix_x2_trans(r[0], r[1], addr) : ldmatrix_x2(r[0], r[1], addr);
  if constexpr (kNum == 4)
    kTrans ? ldmatrix_x4_trans(r[0], r[1], r[2], r[3], addr) : ldmatrix_x4(r[0], r[1], r[2], r[3], addr);
  for (int i = 0; i < kNum; ++i) st_global(out + lane * kNum + i, static_cast<int>(r[i]));
}

at::Tensor ldmatrix_probe(const at::Tensor& smem_rows, const at::Tensor& rows, int64_t num, bool trans) {
  TORCH_CHECK(smem_rows.scalar_type() == at::kShort && smem_rows.dim() == 2 && smem_rows.size(1) == 8 &&
                  smem_rows.is_contiguous(),
              "ldmatrix_probe: smem_rows must be a contiguous (R, 8) int16 tensor");
  TORCH_CHECK(rows.scalar_type() == at::kInt && rows.numel() == 32 && rows.is_contiguous(),
              "ldmatrix_probe: rows must be 32 contiguous int32");
  TORCH_CHECK(num == 1 || num == 2 || num == 4, "ldmatrix_probe: num must be 1, 2 or 4, got ", num);
  const int R = smem_rows.size(0);
  at::Tensor out = at::zeros({32, num}, rows.options());
  auto g1 = buffer(smem_rows, "smem_rows", false), g2 = buffer(rows, "rows", false), g3 = buffer(out, "out", true);
  const auto* src = static_cast<const uint16_t*>(smem_rows.data_ptr());
  const int* pr = rows.data_ptr<int>();
  int* po = out.data_ptr<int>();
  const size_t smem = static_cast<size_t>(R) * 16;
#define FASTXF_LDM(N, TR) \
  if (num == N && trans == TR) FASTXF_LAUNCH((ldmatrix_kernel<N, TR>), 1, 32, smem, nullptr, src, pr, po, R)
  FASTXF_LDM(1, false);
  FASTXF_LDM(2, false);
  FASTXF_LDM(4, false);
  FASTXF_LDM(1, true);
  FASTXF_LDM(2, true);
  FASTXF_LDM(4, true);
#undef FASTXF_LDM
  return out;
}

// ------------------------------------------------------ shuffles, votes ----
// mode: 0 idx, 1 xor, 2 down, 3 up. vals, args: (32,) int32.
__global__ void shfl_kernel(const int* vals, const int* args, int* out, int mode, int width, unsigned mask) {
  const int lane = threadIdx.x;
  if (!((mask >> lane) & 1u)) return;
  const int v = ld_global(vals + lane), a = ld_global(args + lane);
  int r = 0;
  switch (mode) {
    case 0: r = shfl_sync(mask, v, a, width); break;
    case 1: r = shfl_xor_sync(mask, v, a, width); break;
    case 2: r = shfl_down_sync(mask, v, static_cast<unsigned>(a), width); break;
    default: r = shfl_up_sync(mask, v, static_cast<unsigned>(a), width); break;
  }
  st_global(out + lane, r);
}

at::Tensor shfl_probe(const at::Tensor& vals, const at::Tensor& args, int64_t mode, int64_t width, int64_t mask) {
  TORCH_CHECK(vals.scalar_type() == at::kInt && vals.numel() == 32 && args.scalar_type() == at::kInt &&
                  args.numel() == 32,
              "shfl_probe: vals and args must be 32 int32");
  TORCH_CHECK(mode >= 0 && mode <= 3, "shfl_probe: mode must be 0 (idx), 1 (xor), 2 (down) or 3 (up), got ", mode);
  const at::Tensor v = vals.contiguous(), a = args.contiguous();
  at::Tensor out = at::full({32}, -1, vals.options());
  auto g1 = buffer(v, "vals", false), g2 = buffer(a, "args", false), g3 = buffer(out, "out", true);
  FASTXF_LAUNCH(shfl_kernel, 1, 32, 0, nullptr, v.data_ptr<int>(), a.data_ptr<int>(), out.data_ptr<int>(),
                static_cast<int>(mode), static_cast<int>(width), static_cast<unsigned>(mask));
  return out;
}

// Per lane: ballot, any, all of pred over the full warp, and the float
// warp_reduce_sum / warp_reduce_max of pred.
__global__ void vote_kernel(const int* pred, int* out, float* red) {
  const int lane = threadIdx.x;
  const int p = ld_global(pred + lane);
  st_global(out + 3 * lane, static_cast<int>(ballot_sync(0xffffffffu, p)));
  st_global(out + 3 * lane + 1, static_cast<int>(any_sync(0xffffffffu, p)));
  st_global(out + 3 * lane + 2, static_cast<int>(all_sync(0xffffffffu, p)));
  st_global(red + 2 * lane, warp_reduce_sum(static_cast<float>(p)));
  st_global(red + 2 * lane + 1, warp_reduce_max(static_cast<float>(p)));
}

std::tuple<at::Tensor, at::Tensor> vote_probe(const at::Tensor& pred) {
  TORCH_CHECK(pred.scalar_type() == at::kInt && pred.numel() == 32, "vote_probe: pred must be 32 int32");
  const at::Tensor p = pred.contiguous();
  at::Tensor out = at::zeros({32, 3}, pred.options());
  at::Tensor red = at::zeros({32, 2}, pred.options().dtype(at::kFloat));
  auto g1 = buffer(p, "pred", false), g2 = buffer(out, "out", true), g3 = buffer(red, "red", true);
  FASTXF_LAUNCH(vote_kernel, 1, 32, 0, nullptr, p.data_ptr<int>(), out.data_ptr<int>(), red.data_ptr<float>());
  return {out, red};
}

// ------------------------------------------------------------- cp.async ----
// Thread i copies 16-byte chunk i of src (src_bytes[i] of it, zero-filling the
// rest) into shared memory, in two commit groups (even / odd threads' second
// copy). The result is read back after the waits.
__global__ void cp_async_kernel(const unsigned char* src, const int* src_bytes, unsigned char* out, int n) {
  unsigned char* s = dynamic_shared<unsigned char>();
  const int i = threadIdx.x;
  const int nb = ld_global(src_bytes + i);
  cp_async_16(s + 16 * i, nb > 0 ? src + 16 * i : src, nb);
  cp_async_commit();
  cp_async_16(s + 16 * (n + i), src + 16 * i, 16);
  cp_async_commit();
  cp_async_wait<1>();  // the first group has landed, the second may not have
  sync_threads();
  for (int k = 0; k < 16; ++k) st_global(out + 16 * i + k, ld_shared(s + 16 * ((i + 1) % n) + k));
  cp_async_wait<0>();
  sync_threads();
  for (int k = 0; k < 16; ++k) st_global(out + 16 * (n + i) + k, ld_shared(s + 16 * (n + (i + 1) % n) + k));
}

at::Tensor cp_async_probe(const at::Tensor& src, const at::Tensor& src_bytes) {
  TORCH_CHECK(src.scalar_type() == at::kByte && src.is_contiguous(), "cp_async_probe: src must be contiguous uint8");
  TORCH_CHECK(src_bytes.scalar_type() == at::kInt && src_bytes.is_contiguous(), "cp_async_probe: src_bytes must be int32");
  const int n = src_bytes.numel();
  TORCH_CHECK(n >= 1 && n <= 1024 && src.numel() == 16 * n, "cp_async_probe: src must hold 16 bytes per thread");
  at::Tensor out = at::zeros({2 * n, 16}, src.options());
  auto g1 = buffer(src, "src", false), g2 = buffer(src_bytes, "src_bytes", false), g3 = buffer(out, "out", true);
  FASTXF_LAUNCH(cp_async_kernel, 1, n, 32 * n, nullptr, src.data_ptr<uint8_t>(), src_bytes.data_ptr<int>(),
                out.data_ptr<uint8_t>(), n);
  return out;
}

// --------------------------------------------------------- planted bugs ----
enum Bug : int {
  kNone = 0,
  kDroppedBarrier,      // race: read a neighbour's value with no barrier after its write
  kGlobalOob,           // read one element past the end of `in`
  kSharedOob,           // write one element past a static shared array
  kUninitShared,        // read shared memory nobody wrote
  kCpAsyncEarly,        // read a cp.async destination before its wait_group
  kDivergentExit,       // __syncthreads that half of the block never reaches (they exit)
  kDivergentSites,      // two halves of the block at two different __syncthreads
  kDynamicOob,          // read past the end of dynamic shared memory
  kReadOnlyWrite,       // write to an input buffer
  kRefillRace,          // cp.async overwrites a stage others are still reading (dropped barrier)
  kMisaligned,          // 16-byte load from an 8-byte aligned address
  kWarpDivergentShfl,   // full-mask shuffle that half of the warp never reaches
  kBugCount,
};

// 64 threads; in: (64 + 8,) float, out: (64,) float.
constexpr int kDynFloats = 256;
__global__ void planted_kernel(const float* in, float* out, int bug) {
  FASTXF_SHARED(float[64], s);
  float* dyn = dynamic_shared<float>();  // kDynFloats
  const int tid = threadIdx.x, n = 64;
  const float x = ld_global(in + tid);
  float v = x;
  switch (bug) {
    case kNone: {
      st_shared(&s[tid], x);
      sync_threads();
      v = ld_shared(&s[(tid + 1) % n]);
      sync_threads();
      st_shared(&s[tid], v + 1.f);
      sync_threads();
      v += ld_shared(&s[(tid + 33) % n]);
      cp_async_16(dyn + 4 * tid, in + 4 * (tid % 16), tid < 32 ? 16 : 0);
      cp_async_commit();
      cp_async_wait<0>();
      sync_threads();
      v += ld_shared(dyn + (tid + 5) % kDynFloats);
      v += shfl_xor_sync(0xffffffffu, v, 3);
      break;
    }
    case kDroppedBarrier: {
      st_shared(&s[tid], x);
      sync_threads();
      st_shared(&s[tid], x + 1.f);
      // missing sync_threads()
      v = ld_shared(&s[tid ^ 32]);
      break;
    }
    case kGlobalOob: v = ld_global(in + 64 + 8 + (tid == 5 ? 0 : -1)); break;
    case kSharedOob: {
      st_shared(&s[tid + (tid == 63 ? 1 : 0)], x);
      break;
    }
    case kUninitShared: {
      if (tid != 7) st_shared(&s[tid], x);
      sync_threads();
      v = ld_shared(&s[(tid + 1) % n]);
      break;
    }
    case kCpAsyncEarly: {
      cp_async_16(dyn + 4 * tid, in + 4 * (tid % 16), 16);
      cp_async_commit();
      sync_threads();
      v = ld_shared(dyn + 4 * ((tid + 1) % 64));  // the wait_group comes too late
      cp_async_wait<0>();
      break;
    }
    case kDivergentExit: {
      if (tid >= 32) return;
      sync_threads();
      break;
    }
    case kDivergentSites: {
      st_shared(&s[tid], x);
      if (tid < 32) {
        sync_threads();
      } else {
        sync_threads();
      }
      v = ld_shared(&s[tid ^ 1]);
      break;
    }
    case kDynamicOob: {
      st_shared(dyn + tid, x);
      st_shared(dyn + 64 + tid, x);
      sync_threads();
      v = ld_shared(dyn + tid + (tid == 3 ? kDynFloats : 0));
      break;
    }
    case kReadOnlyWrite: {
      if (tid == 9) st_global(const_cast<float*>(in) + tid, 0.f);
      break;
    }
    case kRefillRace: {
      // Stage 0 holds data everyone reads, then thread i refills its chunk
      // with no barrier after the reads.
      st_shared(dyn + tid, x);
      st_shared(dyn + 64 + tid, x);
      sync_threads();
      v = ld_shared(dyn + (tid + 4) % 128);
      // missing sync_threads()
      if (tid < 32) cp_async_16(dyn + 4 * tid, in + 4 * (tid % 16), 16);
      cp_async_commit();
      cp_async_wait<0>();
      break;
    }
    case kMisaligned: {
      if (tid == 0) {
        const float4 q = ld_global(reinterpret_cast<const float4*>(in + 2));
        v = q.x;
      }
      break;
    }
    case kWarpDivergentShfl: {
      if ((tid & 31) < 16) v = shfl_xor_sync(0xffffffffu, v, 1);
      break;
    }
    default: break;
  }
  st_global(out + tid, v);
}

at::Tensor planted_bug(const at::Tensor& in, int64_t bug) {
  TORCH_CHECK(in.scalar_type() == at::kFloat && in.is_contiguous() && in.numel() == 72,
              "planted_bug: in must be 72 contiguous float32");
  TORCH_CHECK(bug >= 0 && bug < kBugCount, "planted_bug: bug must be in [0, ", static_cast<int>(kBugCount), "), got ", bug);
  at::Tensor out = at::zeros({64}, in.options());
  auto g1 = buffer(in, "in", false), g2 = buffer(out, "out", true);
  FASTXF_LAUNCH(planted_kernel, 1, 64, kDynFloats * sizeof(float), nullptr, in.data_ptr<float>(), out.data_ptr<float>(),
                static_cast<int>(bug));
  return out;
}

// A launch with more dynamic shared memory than the default 48 KiB, with or
// without the opt-in (the GPU refuses the launch without it).
__global__ void big_smem_kernel(float* out) {
  float* d = dynamic_shared<float>();
  st_shared(d + threadIdx.x, 1.f);
  sync_threads();
  st_global(out + threadIdx.x, ld_shared(d + (threadIdx.x + 1) % 32));
}

at::Tensor big_smem(int64_t bytes, bool opt_in) {
  at::Tensor out = at::zeros({32}, at::kFloat);
  auto g = buffer(out, "out", true);
  if (opt_in) set_max_dynamic_shared_bytes(big_smem_kernel, static_cast<int>(bytes));
  FASTXF_LAUNCH(big_smem_kernel, 1, 32, static_cast<size_t>(bytes), nullptr, out.data_ptr<float>());
  if (opt_in) set_max_dynamic_shared_bytes(big_smem_kernel, 0);
  return out;
}

// Many blocks and threads with barriers and shuffles (the scheduler, block
// coordinates, parallel blocks): out[block][thread] = block-wide sum of in's
// row for that block + the thread index.
__global__ void block_sum_kernel(const float* in, float* out, int n) {
  FASTXF_SHARED(float[32], partial);
  const int tid = threadIdx.x + threadIdx.y * blockDim.x, nt = blockDim.x * blockDim.y;
  const int blk = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  float v = 0.f;
  for (int i = tid; i < n; i += nt) v += ld_global(in + static_cast<int64_t>(blk) * n + i);
  v = warp_reduce_sum(v);
  if ((tid & 31) == 0) st_shared(&partial[tid >> 5], v);
  sync_threads();
  float total = 0.f;
  for (int w = 0; w < (nt + 31) / 32; ++w) total += ld_shared(&partial[w]);
  st_global(out + static_cast<int64_t>(blk) * nt + tid, total + static_cast<float>(tid));
}

at::Tensor block_sum(const at::Tensor& in, std::vector<int64_t> grid, std::vector<int64_t> block) {
  TORCH_CHECK(grid.size() == 3 && block.size() == 3, "block_sum: grid and block are 3 ints");
  TORCH_CHECK(in.scalar_type() == at::kFloat && in.dim() == 2 && in.is_contiguous(), "block_sum: in must be (blocks, n) float32");
  const int64_t nb = grid[0] * grid[1] * grid[2], nt = block[0] * block[1] * block[2];
  TORCH_CHECK(in.size(0) == nb, "block_sum: in must have one row per block");
  at::Tensor out = at::zeros({nb, nt}, in.options());
  auto g1 = buffer(in, "in", false), g2 = buffer(out, "out", true);
  FASTXF_LAUNCH(block_sum_kernel, dim3(grid[0], grid[1], grid[2]), dim3(block[0], block[1], block[2]), 0, nullptr,
                in.data_ptr<float>(), out.data_ptr<float>(), static_cast<int>(in.size(1)));
  return out;
}

// Shared and global atomics and the counting barriers, over many blocks (which
// run on several OS threads: the global atomics must be real ones).
// out[block] = {min, max, count of the shared atomics, __syncthreads_count,
// _and, _or}; counter / fsum: global atomic sums over every thread.
__global__ void atomics_kernel(int* counter, float* fsum, int* out) {
  FASTXF_SHARED(int, s_min);
  FASTXF_SHARED(int, s_max);
  FASTXF_SHARED(int, s_cnt);
  const int tid = threadIdx.x;
  if (tid == 0) {
    st_shared(&s_min, 1 << 30);
    st_shared(&s_max, -(1 << 30));
    st_shared(&s_cnt, 0);
  }
  sync_threads();
  const int key = static_cast<int>((blockIdx.x * 37u + tid * 11u) % 1000u);
  atomic_min(&s_min, key);
  atomic_max(&s_max, key);
  atomic_add(&s_cnt, 1);
  atomic_add(counter, 1);
  atomic_add(fsum, 0.5f);
  const int c = sync_threads_count(tid % 3 == 0);
  const int a = sync_threads_and(tid < 1000);
  const int o = sync_threads_or(tid == 5);
  if (tid == 0) {
    int* row = out + 6 * blockIdx.x;
    st_global(row, ld_shared(&s_min));
    st_global(row + 1, ld_shared(&s_max));
    st_global(row + 2, ld_shared(&s_cnt));
    st_global(row + 3, c);
    st_global(row + 4, a);
    st_global(row + 5, o);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> atomics_probe(int64_t blocks, int64_t threads) {
  TORCH_CHECK(blocks >= 1 && threads >= 1 && threads <= 1024, "atomics_probe: 1 <= threads <= 1024, blocks >= 1");
  at::Tensor counter = at::zeros({1}, at::kInt), fsum = at::zeros({1}, at::kFloat);
  at::Tensor out = at::zeros({blocks, 6}, at::kInt);
  auto g1 = buffer(counter, "counter", true), g2 = buffer(fsum, "fsum", true), g3 = buffer(out, "out", true);
  FASTXF_LAUNCH(atomics_kernel, static_cast<unsigned>(blocks), static_cast<unsigned>(threads), 0, nullptr,
                counter.data_ptr<int>(), fsum.data_ptr<float>(), out.data_ptr<int>());
  return {counter, fsum, out};
}

// Warp-synchronous exchange through shared memory: lane l writes s[l] and reads
// s[l ^ 1]. Ordered by __syncwarp when `with_syncwarp`; without it the race
// detector must report it (lanes of a warp are not in lockstep since Volta).
__global__ void warp_exchange_kernel(float* out, int with_syncwarp) {
  FASTXF_SHARED(float[64], s);
  const int tid = threadIdx.x;
  st_shared(&s[tid], 0.f);
  sync_threads();
  st_shared(&s[tid], static_cast<float>(tid));
  if (with_syncwarp) sync_warp();
  st_global(out + tid, ld_shared(&s[tid ^ 1]));
}

at::Tensor warp_exchange(bool with_syncwarp) {
  at::Tensor out = at::zeros({64}, at::kFloat);
  auto g = buffer(out, "out", true);
  FASTXF_LAUNCH(warp_exchange_kernel, 1, 64, 0, nullptr, out.data_ptr<float>(), with_syncwarp ? 1 : 0);
  return out;
}

}  // namespace

TORCH_LIBRARY(fastxf_emu_selftest, m) {
  m.def("mma_gemm(Tensor a, Tensor b, bool use_ldmatrix) -> Tensor", &mma_gemm);
  m.def("mma_chain(Tensor a, Tensor b, Tensor b2) -> Tensor", &mma_chain);
  m.def("ldmatrix_probe(Tensor smem_rows, Tensor rows, int num, bool trans) -> Tensor", &ldmatrix_probe);
  m.def("shfl_probe(Tensor vals, Tensor args, int mode, int width, int mask) -> Tensor", &shfl_probe);
  m.def("vote_probe(Tensor pred) -> (Tensor, Tensor)", &vote_probe);
  m.def("cp_async_probe(Tensor src, Tensor src_bytes) -> Tensor", &cp_async_probe);
  m.def("planted_bug(Tensor input, int bug) -> Tensor", &planted_bug);
  m.def("big_smem(int bytes, bool opt_in) -> Tensor", &big_smem);
  m.def("atomics_probe(int blocks, int threads) -> (Tensor, Tensor, Tensor)", &atomics_probe);
  m.def("warp_exchange(bool with_syncwarp) -> Tensor", &warp_exchange);
  m.def("block_sum(Tensor input, int[] grid, int[] block) -> Tensor", &block_sum);
}

}  // namespace emu_selftest
}  // namespace fastxf
