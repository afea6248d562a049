// CUDA entry point of fastxf::attention: validates, then picks the decode
// (split-KV) or the prefill kernel. (Also compiled for the CPU emulator, where
// it registers fastxf_emu::attention; see gpu_host.h.)
#include "attention/attention_cuda.h"
#include "gpu_host.h"

namespace fastxf {
namespace {

at::Tensor attention_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                          const std::optional<at::Tensor>& key_padding_mask, const std::optional<at::Tensor>& q_offset,
                          bool causal, std::optional<double> scale, int64_t window, double softcap,
                          const std::optional<at::Tensor>& alibi_slopes) {
  const gpu::DeviceGuard guard(q.device());
  auto p = make_attention_problem(q, k, v, key_padding_mask, q_offset, causal, scale, window, softcap, alibi_slopes);
  if (p.out.numel() == 0) return p.out_view;
  if (p.k_len == 0) return p.out_view.zero_();
  if (!decode_attention_cuda(p)) prefill_attention_cuda(p);
  return p.out_view;
}

}  // namespace

FASTXF_GPU_LIBRARY_IMPL(m) { m.impl("attention", &attention_cuda); }

}  // namespace fastxf
