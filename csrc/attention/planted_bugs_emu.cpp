// fastxf_emu::planted_prefill(q, k, v, causal, bug): the prefill kernel (fp16,
// head dim 64) with planted bug `bug` (0 = none), for
// tests/test_emulated_planted_bugs.py: each planted bug must be caught, by the
// emulator's checker (an error) or by the accuracy check (wrong output).
#include <torch/library.h>

#define FASTXF_PLANTED_FN run_planted_bug0
#include "attention/planted_bug_emu.h"  // bug 0: the real kernel

namespace fastxf {
namespace planted {

using Launcher = void (*)(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, bool);
void run_planted_bug1(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, bool);
void run_planted_bug2(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, bool);
void run_planted_bug3(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, bool);
void run_planted_bug4(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, bool);

at::Tensor planted_prefill(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, bool causal, int64_t bug) {
  static const Launcher launchers[] = {run_planted_bug0, run_planted_bug1, run_planted_bug2, run_planted_bug3,
                                       run_planted_bug4};
  TORCH_CHECK(bug >= 0 && bug < 5, "planted_prefill: bug must be 0..4, got ", bug);
  TORCH_CHECK(q.scalar_type() == at::kHalf && q.dim() == 4 && q.size(3) == 64 && q.is_contiguous() &&
                  k.is_contiguous() && v.is_contiguous() && k.sizes() == v.sizes(),
              "planted_prefill: contiguous fp16 q, k, v with head dim 64");
  at::Tensor out = at::empty({q.size(0), q.size(2), q.size(1), 64}, q.options());
  launchers[bug](q, k, v, out, causal);
  return out.transpose(1, 2);
}

}  // namespace planted
}  // namespace fastxf

TORCH_LIBRARY_FRAGMENT(fastxf_emu, m) {
  m.def("planted_prefill(Tensor q, Tensor k, Tensor v, bool causal, int bug) -> Tensor");
  m.impl("planted_prefill", c10::DispatchKey::CPU, &fastxf::planted::planted_prefill);
}
