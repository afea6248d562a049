// CUDA entry point of fastxf::attention_varlen: checks the arguments' metadata,
// then runs the varlen variant of the prefill kernel (prefill_cuda.cu). No host
// sync: the offsets' values stay on the device, unchecked; the kernel clamps
// them so that bad offsets never cause an out-of-bounds access (see
// prefill_kernel.cuh, "Varlen"). (Also compiled for the CPU emulator, where it
// registers fastxf_emu::attention_varlen; see gpu_host.h.)
#include <climits>
#include <cmath>

#include "attention/attention_cuda.h"
#include "gpu_host.h"

namespace fastxf {
namespace {

constexpr const char* kOp = "fastxf.attention_varlen";

void check_cu_seqlens(const at::Tensor& cu, const char* name, const at::Tensor& q) {
  TORCH_CHECK(cu.scalar_type() == at::kInt, kOp, ": ", name, " must be int32, got ", cu.scalar_type());
  TORCH_CHECK(cu.dim() == 1 && cu.size(0) >= 1, kOp, ": ", name, " must be 1-D (batch + 1,), got shape ",
              cu.sizes());
  TORCH_CHECK(cu.device() == q.device(), kOp, ": ", name, " is on ", cu.device(), " but q is on ", q.device());
}

at::Tensor attention_varlen_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                 const at::Tensor& cu_seqlens_q, const at::Tensor& cu_seqlens_k, int64_t max_seqlen_q,
                                 int64_t max_seqlen_k, bool causal, std::optional<double> scale, int64_t window,
                                 double softcap) {
  TORCH_CHECK(q.dim() == 3, kOp, ": q must be 3-D (total_q, q_heads, head_dim), got shape ", q.sizes());
  TORCH_CHECK(k.dim() == 3, kOp, ": k must be 3-D (total_k, kv_heads, head_dim), got shape ", k.sizes());
  TORCH_CHECK(k.sizes() == v.sizes(), kOp, ": k and v must have the same shape, got ", k.sizes(), " and ",
              v.sizes());
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(), kOp,
              ": q, k and v must share one dtype, got ", q.scalar_type(), ", ", k.scalar_type(), ", ",
              v.scalar_type());
  TORCH_CHECK(k.device() == q.device() && v.device() == q.device(), kOp, ": q, k and v must be on one device, got ",
              q.device(), ", ", k.device(), ", ", v.device());
  for (const auto& [t, name] : {std::pair<const at::Tensor&, const char*>{q, "q"}, {k, "k"}, {v, "v"}}) {
    TORCH_CHECK(t.size(2) <= 1 || t.stride(2) == 1, kOp, ": ", name,
                "'s last dim must be contiguous (stride 1), got stride ", t.stride(2));
  }
  TORCH_CHECK(k.size(2) == q.size(2) && q.size(2) > 0, kOp, ": k has head_dim ", k.size(2), " but q has head_dim ",
              q.size(2), " (must match and be > 0)");
  TORCH_CHECK(k.size(1) > 0 && q.size(1) % k.size(1) == 0, kOp, ": q_heads (", q.size(1),
              ") must be a multiple of kv_heads (", k.size(1), ")");
  check_cu_seqlens(cu_seqlens_q, "cu_seqlens_q", q);
  check_cu_seqlens(cu_seqlens_k, "cu_seqlens_k", q);
  TORCH_CHECK(cu_seqlens_q.sizes() == cu_seqlens_k.sizes(), kOp,
              ": cu_seqlens_q and cu_seqlens_k must have the same length (batch + 1), got shapes ",
              cu_seqlens_q.sizes(), " and ", cu_seqlens_k.sizes());
  TORCH_CHECK(max_seqlen_q >= 0 && max_seqlen_k >= 0, kOp, ": max_seqlen_q / max_seqlen_k must be >= 0, got ",
              max_seqlen_q, " / ", max_seqlen_k);
  TORCH_CHECK(window >= 0, kOp, ": window must be >= 0 (0 = no sliding window), got ", window);
  TORCH_CHECK(softcap >= 0.0, kOp, ": softcap must be >= 0 (0 = no softcap), got ", softcap);
  // Rows are int32 in the kernel (as the offsets are); tiles of a sequence start below max_seqlen_q + 256.
  TORCH_CHECK(q.size(0) <= INT_MAX - 1024 && k.size(0) <= INT_MAX - 1024 && max_seqlen_q <= INT_MAX - 1024, kOp,
              ": total_q, total_k and max_seqlen_q must be below 2^31 - 1024 on CUDA, got ", q.size(0), ", ",
              k.size(0), ", ", max_seqlen_q);
  TORCH_CHECK(cu_seqlens_q.size(0) - 1 <= 65535 && q.size(1) <= 65535, kOp,
              ": the CUDA kernel supports up to 65535 sequences and q_heads, got batch=", cu_seqlens_q.size(0) - 1,
              ", q_heads=", q.size(1));

  const gpu::DeviceGuard guard(q.device());
  VarlenProblem p;
  p.out = at::empty(q.sizes(), q.options().memory_format(at::MemoryFormat::Contiguous));
  if (p.out.numel() == 0) return p.out;
  // dtype, head dim and compute capability are checked by the kernel's dispatch.
  // total_k == 0 needs no special case: every sequence then has no key and its
  // CTAs write zeros without reading k / v.
  p.q = q, p.k = k, p.v = v;
  p.cu_seqlens_q = cu_seqlens_q, p.cu_seqlens_k = cu_seqlens_k;
  p.max_seqlen_q = max_seqlen_q;
  p.causal = causal;
  p.scale = scale.has_value() ? *scale : 1.0 / std::sqrt(static_cast<double>(q.size(2)));
  p.window = window;
  p.softcap = softcap;
  prefill_attention_varlen_cuda(p);
  return p.out;
}

}  // namespace

FASTXF_GPU_LIBRARY_IMPL(m) { m.impl("attention_varlen", &attention_varlen_cuda); }

}  // namespace fastxf
