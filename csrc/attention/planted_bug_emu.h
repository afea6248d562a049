// A minimal host launcher of the prefill kernel (fp16, head dim 64, no mask or
// q_offset) for the planted-bug tests (tests/test_emulated_planted_bugs.py).
// Included by planted_bugs_emu.cpp (the unmodified kernel) and by each
// planted_bug<n>_emu.cpp, which first sets FASTXF_PLANT_BUG=n and renames the
// kernel's namespace so that its broken instantiation cannot collide with the
// real one. FASTXF_PLANTED_FN names this translation unit's launcher.
#include <cmath>

#include "attention/prefill_kernel.cuh"
#include "gpu_host.h"

namespace fastxf {
namespace planted {

// q (B, Hq, Sq, 64), k / v (B, Hkv, Sk, 64) contiguous fp16; out (B, Sq, Hq, 64) contiguous.
void FASTXF_PLANTED_FN(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
                       bool causal) {
  prefill::Params prm{};
  prm.q = q.data_ptr();
  prm.k = k.data_ptr();
  prm.v = v.data_ptr();
  prm.out = out.data_ptr();
  prm.q_sb = q.stride(0), prm.q_sh = q.stride(1), prm.q_ss = q.stride(2);
  prm.k_sb = k.stride(0), prm.k_sh = k.stride(1), prm.k_ss = k.stride(2);
  prm.v_sb = v.stride(0), prm.v_sh = v.stride(1), prm.v_ss = v.stride(2);
  prm.o_sb = out.stride(0), prm.o_ss = out.stride(1), prm.o_sh = out.stride(2);
  prm.q_len = static_cast<int>(q.size(2));
  prm.k_len = static_cast<int>(k.size(2));
  prm.group = static_cast<int>(q.size(1) / k.size(1));
  prm.d_load = prm.d_out = 64;
  prm.out_vec = true;
  prm.causal = causal;
  prm.scale_log2 = static_cast<float>(1.4426950408889634 / std::sqrt(64.0));
  gpu::KernelBuffers buffers;
  buffers.add(q, "q", false).add(k, "k", false).add(v, "v", false).add(out, "out", true).commit();
  prefill::run_prefill<__half, 64>(prm, static_cast<int>(q.size(0)), static_cast<int>(q.size(1)), nullptr);
}

}  // namespace planted
}  // namespace fastxf
