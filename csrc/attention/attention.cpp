// Argument checks and output allocation shared by the CPU and CUDA attention
// ops, defined out of line in one C++ translation unit (see norm/norm.cpp).
#include "attention/attention.h"

#include <cmath>
#include <limits>

namespace fastxf {

AttentionProblem make_attention_problem(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                        const std::optional<at::Tensor>& key_padding_mask,
                                        const std::optional<at::Tensor>& q_offset, bool causal,
                                        std::optional<double> scale, int64_t window, double softcap,
                                        const std::optional<at::Tensor>& alibi_slopes) {
  const char* op = "fastxf.attention";
  TORCH_CHECK(q.dim() == 4, op, ": q must be 4-D (batch, q_heads, q_len, head_dim), got shape ", q.sizes());
  TORCH_CHECK(k.dim() == 4, op, ": k must be 4-D (batch, kv_heads, k_len, head_dim), got shape ", k.sizes());
  TORCH_CHECK(v.dim() == 4, op, ": v must be 4-D (batch, kv_heads, k_len, head_dim), got shape ", v.sizes());
  TORCH_CHECK(is_float_type(q.scalar_type()), op, ": q must be float32, float16 or bfloat16, got ",
              q.scalar_type());
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(), op,
              ": q, k and v must share one dtype, got ", q.scalar_type(), ", ", k.scalar_type(), ", ",
              v.scalar_type());
  TORCH_CHECK(k.device() == q.device() && v.device() == q.device(), op,
              ": q, k and v must be on one device, got ", q.device(), ", ", k.device(), ", ", v.device());
  TORCH_CHECK(k.sizes() == v.sizes(), op, ": k and v must have the same shape, got ", k.sizes(), " and ",
              v.sizes());
  TORCH_CHECK(k.size(0) == q.size(0), op, ": k has batch ", k.size(0), " but q has batch ", q.size(0));
  TORCH_CHECK(k.size(3) == q.size(3), op, ": k has head_dim ", k.size(3), " but q has head_dim ", q.size(3));
  TORCH_CHECK(q.size(3) > 0, op, ": head_dim must be > 0");
  TORCH_CHECK(k.size(1) > 0 && q.size(1) % k.size(1) == 0, op, ": q_heads (", q.size(1),
              ") must be a multiple of kv_heads (", k.size(1), ")");
  TORCH_CHECK(q.stride(3) == 1 || q.size(3) == 1, op, ": q's last dim must be contiguous (stride 1), got stride ",
              q.stride(3));
  TORCH_CHECK(k.stride(3) == 1 || k.size(3) == 1, op, ": k's last dim must be contiguous (stride 1), got stride ",
              k.stride(3));
  TORCH_CHECK(v.stride(3) == 1 || v.size(3) == 1, op, ": v's last dim must be contiguous (stride 1), got stride ",
              v.stride(3));
  TORCH_CHECK(window >= 0, op, ": window must be >= 0 (0 = no sliding window), got ", window);
  TORCH_CHECK(softcap >= 0, op, ": softcap must be >= 0 (0 = no softcap), got ", softcap);

  AttentionProblem p;
  p.batch = q.size(0);
  p.q_heads = q.size(1);
  p.q_len = q.size(2);
  p.head_dim = q.size(3);
  p.kv_heads = k.size(1);
  p.k_len = k.size(2);
  p.q = q;
  p.k = k;
  p.v = v;
  p.causal = causal;
  // Key positions are 32-bit (q_offset is stored as int32) and every kernel
  // computes pos - window + 1 in 64 bits: a window past 2^40 sees exactly the
  // keys an infinite one does, and clamping it keeps that difference from
  // overflowing (window = INT64_MAX would).
  p.window = std::min<int64_t>(window, int64_t{1} << 40);
  p.softcap = static_cast<float>(softcap);
  p.scale = static_cast<float>(scale.has_value() ? *scale : 1.0 / std::sqrt(static_cast<double>(p.head_dim)));

  if (key_padding_mask.has_value()) {
    const auto& m = *key_padding_mask;
    TORCH_CHECK(m.scalar_type() == at::kBool, op, ": key_padding_mask must be bool (True = attend), got ",
                m.scalar_type());
    TORCH_CHECK(m.dim() == 2 && m.size(0) == p.batch && m.size(1) == p.k_len, op,
                ": key_padding_mask must have shape (batch, k_len) = (", p.batch, ", ", p.k_len, "), got ",
                m.sizes());
    TORCH_CHECK(m.device() == q.device(), op, ": key_padding_mask is on ", m.device(), " but q is on ",
                q.device());
    p.key_mask = m.contiguous();
  }
  if (q_offset.has_value()) {
    const auto& o = *q_offset;
    TORCH_CHECK(o.scalar_type() == at::kInt || o.scalar_type() == at::kLong, op,
                ": q_offset must be an int32 or int64 tensor, got ", o.scalar_type());
    TORCH_CHECK(o.dim() == 0 || (o.dim() == 1 && (o.size(0) == p.batch || o.size(0) == 1)), op,
                ": q_offset must have shape (), (1,) or (batch,) = (", p.batch, ",), got ", o.sizes());
    TORCH_CHECK(o.device() == q.device(), op, ": q_offset is on ", o.device(), " but q is on ", q.device());
    // The kernels read int32 offsets. An int64 value outside int32's range
    // would be cut silently by the conversion, so it is rejected. This reads the
    // values: free on the CPU, a host sync for an int64 CUDA tensor (pass int32
    // there, as fastxf's model path does, to avoid it).
    if (o.scalar_type() == at::kLong && o.numel() > 0) {
      const auto [lo, hi] = at::aminmax(o);
      const int64_t lo_v = lo.item<int64_t>(), hi_v = hi.item<int64_t>();
      TORCH_CHECK(lo_v >= std::numeric_limits<int32_t>::min() && hi_v <= std::numeric_limits<int32_t>::max(), op,
                  ": q_offset values must fit in int32 (key positions are 32-bit), got values in [", lo_v, ", ", hi_v,
                  "]");
    }
    p.q_offset = o.reshape({-1}).expand({p.batch}).to(at::kInt).contiguous();
  }
  if (alibi_slopes.has_value()) {
    const auto& a = *alibi_slopes;
    TORCH_CHECK(a.scalar_type() == at::kFloat, op, ": alibi_slopes must be float32, got ", a.scalar_type());
    TORCH_CHECK((a.dim() == 1 && a.size(0) == p.q_heads) || (a.dim() == 2 && a.size(0) == p.batch && a.size(1) == p.q_heads),
                op, ": alibi_slopes must have shape (q_heads,) = (", p.q_heads, ",) or (batch, q_heads) = (", p.batch,
                ", ", p.q_heads, "), got ", a.sizes());
    TORCH_CHECK(a.device() == q.device(), op, ": alibi_slopes is on ", a.device(), " but q is on ", q.device());
    p.alibi = a.expand({p.batch, p.q_heads}).contiguous();
  }
  p.out = at::empty({p.batch, p.q_len, p.q_heads, p.head_dim}, q.options());
  p.out_view = p.out.transpose(1, 2);
  return p;
}

}  // namespace fastxf
