// Host side of the CUDA prefill path: checks what the kernel needs, fills
// prefill::Params and dispatches on (dtype, head dim) to the instantiations in
// prefill_<dtype>_hdim<D>.cu. Serves fastxf::attention (dense (B, H, S, D)
// views) and fastxf::attention_varlen (packed (total, H, D) views, the kernel's
// varlen variant).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <climits>
#include <cmath>

#include "attention/attention_cuda.h"
#include "attention/prefill_params.cuh"
#include "gpu_host.h"

// Head dims with a kernel instantiation; others run on the next larger one with
// the extra columns zero-filled inside the kernel (q.k and P.V are unchanged by
// zero columns; only d_out columns are written).
#define FASTXF_PREFILL_HEADDIM_SWITCH(HEAD_DIM, CONST_NAME, ...) \
  [&] {                                                          \
    if ((HEAD_DIM) <= 32) {                                      \
      constexpr int CONST_NAME = 32;                             \
      return __VA_ARGS__();                                      \
    } else if ((HEAD_DIM) <= 64) {                               \
      constexpr int CONST_NAME = 64;                             \
      return __VA_ARGS__();                                      \
    } else if ((HEAD_DIM) <= 128) {                              \
      constexpr int CONST_NAME = 128;                            \
      return __VA_ARGS__();                                      \
    } else {                                                     \
      constexpr int CONST_NAME = 256;                            \
      return __VA_ARGS__();                                      \
    }                                                            \
  }()

#define FASTXF_PREFILL_DTYPE_SWITCH(DTYPE, TYPE_NAME, ...)                                  \
  [&] {                                                                                     \
    if ((DTYPE) == at::kHalf) {                                                             \
      using TYPE_NAME = __half;                                                             \
      return __VA_ARGS__();                                                                 \
    } else {                                                                                \
      using TYPE_NAME = __nv_bfloat16;                                                      \
      return __VA_ARGS__();                                                                 \
    }                                                                                       \
  }()

namespace fastxf {
namespace {

// The kernel moves rows in 16-byte chunks: it needs 16-byte aligned base
// pointers and strides that are multiples of 8 elements (strides of size-1 dims
// never matter; the last dim is contiguous).
bool chunk_aligned(const at::Tensor& t) {
  if (reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 != 0) return false;
  for (int64_t d = 0; d + 1 < t.dim(); ++d) {
    if (t.size(d) > 1 && t.stride(d) % 8 != 0) return false;
  }
  return true;
}

// Rare layouts the kernel cannot read in place: a head dim that is not a
// multiple of 8 (zero-padded to one; the zero columns change neither q.k nor
// the first head_dim columns of P.V) or misaligned views (copied). Any rank:
// dense (B, H, S, D) or packed (total, H, D).
at::Tensor kernel_readable(const at::Tensor& t, int64_t d_load) {
  const int64_t last = t.dim() - 1;
  if (t.size(last) != d_load) {
    auto sizes = t.sizes().vec();
    sizes[last] = d_load;
    auto padded = at::zeros(sizes, t.options());
    padded.narrow(last, 0, t.size(last)).copy_(t);
    return padded;
  }
  if (!chunk_aligned(t)) return at::empty(t.sizes(), t.options()).copy_(t);
  return t;
}

// What both ops need from the dtype, head dim and device.
void check_prefill_supported(const char* op, at::ScalarType dtype, int64_t head_dim, int device) {
  TORCH_CHECK(dtype == at::kHalf || dtype == at::kBFloat16, op,
              ": CUDA kernels take float16/bfloat16; got ", dtype == at::kFloat ? "float32" : c10::toString(dtype));
  TORCH_CHECK(head_dim <= 256, op, ": the CUDA kernels support head_dim up to 256, got head_dim=", head_dim);
  const int major = gpu::device_props(device).major;
  TORCH_CHECK(major >= 8, op, ": the CUDA prefill kernel needs compute capability 8.0 or newer (Ampere, Hopper), got ",
              major, ".x");
}

// Scale, softcap and window in the kernel's base-2 form.
void set_score_params(prefill::Params& prm, double scale, double softcap, int64_t window, bool causal) {
  prm.causal = causal;
  prm.window = window;
  constexpr double kLog2e = 1.4426950408889634;
  prm.scale_log2 = static_cast<float>(scale * kLog2e);
  prm.use_softcap = softcap > 0.0;
  prm.softcap_in = prm.use_softcap ? static_cast<float>(2.0 * kLog2e * scale / softcap) : 0.f;
  prm.softcap_out = prm.use_softcap ? static_cast<float>(softcap * kLog2e) : 0.f;
}

}  // namespace

void prefill_attention_cuda(const AttentionProblem& p) {
  const char* op = "fastxf.attention";
  const auto dtype = p.q.scalar_type();
  const int device = p.q.get_device();
  check_prefill_supported(op, dtype, p.head_dim, device);
  TORCH_CHECK(p.q_len <= INT_MAX - 1024 && p.k_len <= INT_MAX - 1024, op,
              ": q_len and k_len must be below 2^31 - 1024 on CUDA, got q_len=", p.q_len, ", k_len=", p.k_len);
  TORCH_CHECK(p.batch <= 65535 && p.q_heads <= 65535, op,
              ": the CUDA prefill kernel supports batch and q_heads up to 65535, got batch=", p.batch,
              ", q_heads=", p.q_heads);

  const int64_t d_load = (p.head_dim + 7) / 8 * 8;
  const at::Tensor q = kernel_readable(p.q, d_load);
  const at::Tensor k = kernel_readable(p.k, d_load);
  const at::Tensor v = kernel_readable(p.v, d_load);

  prefill::Params prm{};
  prm.q = q.data_ptr();
  prm.k = k.data_ptr();
  prm.v = v.data_ptr();
  prm.out = p.out.data_ptr();
  prm.mask = p.key_mask.defined() ? p.key_mask.data_ptr<bool>() : nullptr;
  prm.q_offset = p.q_offset.defined() ? p.q_offset.data_ptr<int32_t>() : nullptr;
  prm.alibi = p.alibi.defined() ? p.alibi.data_ptr<float>() : nullptr;
  prm.q_sb = q.stride(0), prm.q_sh = q.stride(1), prm.q_ss = q.stride(2);
  prm.k_sb = k.stride(0), prm.k_sh = k.stride(1), prm.k_ss = k.stride(2);
  prm.v_sb = v.stride(0), prm.v_sh = v.stride(1), prm.v_ss = v.stride(2);
  prm.o_sb = p.out.stride(0), prm.o_ss = p.out.stride(1), prm.o_sh = p.out.stride(2);
  prm.q_len = static_cast<int>(p.q_len);
  prm.k_len = static_cast<int>(p.k_len);
  prm.group = static_cast<int>(p.q_heads / p.kv_heads);
  prm.d_load = static_cast<int>(d_load);
  prm.d_out = static_cast<int>(p.head_dim);
  prm.out_vec = p.head_dim % 8 == 0 && reinterpret_cast<uintptr_t>(p.out.data_ptr()) % 16 == 0;
  set_score_params(prm, p.scale, p.softcap, p.window, p.causal);

  gpu::KernelBuffers buffers;
  buffers.add(q, "q", false).add(k, "k", false).add(v, "v", false).add(p.key_mask, "key_padding_mask", false);
  buffers.add(p.q_offset, "q_offset", false).add(p.alibi, "alibi_slopes", false).add(p.out, "out", true).commit();
  const cudaStream_t stream = gpu::current_stream(device);
  FASTXF_PREFILL_DTYPE_SWITCH(dtype, T, [&] {
    FASTXF_PREFILL_HEADDIM_SWITCH(d_load, kD, [&] {
      gpu::trace_dispatch("prefill T=", dtype, " D=", kD, " d_load=", d_load, " d_out=", p.head_dim);
      prefill::run_prefill<T, kD>(prm, static_cast<int>(p.batch), static_cast<int>(p.q_heads), stream);
    });
  });
}

void prefill_attention_varlen_cuda(const VarlenProblem& p) {
  const char* op = "fastxf.attention_varlen";
  const auto dtype = p.q.scalar_type();
  const int64_t head_dim = p.q.size(2);
  const int device = p.q.get_device();
  check_prefill_supported(op, dtype, head_dim, device);

  const int64_t d_load = (head_dim + 7) / 8 * 8;
  const at::Tensor q = kernel_readable(p.q, d_load);
  const at::Tensor k = kernel_readable(p.k, d_load);
  const at::Tensor v = kernel_readable(p.v, d_load);
  // (B + 1,) int32: read in place when contiguous (the usual case), else one small device copy.
  const at::Tensor cu_q = p.cu_seqlens_q.contiguous();
  const at::Tensor cu_k = p.cu_seqlens_k.contiguous();

  prefill::Params prm{};
  prm.q = q.data_ptr();
  prm.k = k.data_ptr();
  prm.v = v.data_ptr();
  prm.out = p.out.data_ptr();
  prm.cu_seqlens_q = cu_q.data_ptr<int32_t>();
  prm.cu_seqlens_k = cu_k.data_ptr<int32_t>();
  prm.max_seqlen_q = static_cast<int>(p.max_seqlen_q);
  // Packed (total, H, D): rows are the sequence dim, no batch stride.
  prm.q_ss = q.stride(0), prm.q_sh = q.stride(1);
  prm.k_ss = k.stride(0), prm.k_sh = k.stride(1);
  prm.v_ss = v.stride(0), prm.v_sh = v.stride(1);
  prm.o_ss = p.out.stride(0), prm.o_sh = p.out.stride(1);
  prm.q_len = static_cast<int>(q.size(0));  // the bounds the kernel clamps the offsets to
  prm.k_len = static_cast<int>(k.size(0));
  prm.group = static_cast<int>(q.size(1) / k.size(1));
  prm.d_load = static_cast<int>(d_load);
  prm.d_out = static_cast<int>(head_dim);
  prm.out_vec = head_dim % 8 == 0 && reinterpret_cast<uintptr_t>(p.out.data_ptr()) % 16 == 0;
  set_score_params(prm, p.scale, p.softcap, p.window, p.causal);

  const int batch = static_cast<int>(cu_q.size(0) - 1);
  gpu::KernelBuffers buffers;
  buffers.add(q, "q", false).add(k, "k", false).add(v, "v", false);
  buffers.add(cu_q, "cu_seqlens_q", false).add(cu_k, "cu_seqlens_k", false).add(p.out, "out", true).commit();
  const cudaStream_t stream = gpu::current_stream(device);
  FASTXF_PREFILL_DTYPE_SWITCH(dtype, T, [&] {
    FASTXF_PREFILL_HEADDIM_SWITCH(d_load, kD, [&] {
      gpu::trace_dispatch("prefill_varlen T=", dtype, " D=", kD, " d_load=", d_load, " d_out=", head_dim);
      prefill::run_prefill<T, kD>(prm, batch, static_cast<int>(q.size(1)), stream);
    });
  });
}

}  // namespace fastxf
