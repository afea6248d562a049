// CPU implementation of fastxf::layer_norm and fastxf::rms_norm: the reference
// for the CUDA kernels and a usable fallback. Rows are processed in parallel;
// each row is loaded once into an fp32 scratch row (the residual sum rounded to
// x's dtype first, as an unfused block would), statistics are two-pass in fp32
// over that row, and the output is written once (cpu/norm_rows.inc, compiled
// for baseline x86-64, AVX2 and AVX-512 and picked at run time).
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "cpu_isa.h"
#include "emulation.h"
#include "norm/norm.h"

namespace fastxf {

// A norm problem as plain pointers for the row code (cpu/norm_rows.inc).
struct NormRows {
  const void* x;
  const void* residual;  // or null
  void* residual_out;    // with residual
  void* out;
  int64_t x_stride, residual_stride, hidden;
  const float* weight;  // fp32, ones when the op got none (plus 1 for unit_offset)
  const float* bias;    // fp32, zeros when none
  float eps;
  bool layer_norm;  // else RMSNorm (no mean)
};

}  // namespace fastxf

// ---- the row code, once per instruction set ---------------------------------
// (as the attention tiles: the file is compiled for baseline x86-64, and torch's
// own LayerNorm runs AVX-512 code; baseline SSE loops made fastxf's 1.7x slower
// than F.layer_norm at BERT sizes, 8192 x 384 / 768 fp32.)
#define FASTXF_ISA_FILE "norm/cpu/norm_rows.inc"
#define FASTXF_ISA_NAMESPACE(isa) cpu_norm_##isa
#include "cpu_isa_instances.inc"

namespace fastxf {
namespace {

using RowsFns = std::array<std::array<cpu_norm_base::RowsFn, 3>, 3>;

// The row code for this CPU. FASTXF_CPU_NORM_ISA=base|avx2|avx512 forces one
// (tests run every version the CPU can execute).
const RowsFns& rows_fns() {
  switch (cpu_isa("FASTXF_CPU_NORM_ISA")) {
    case CpuIsa::kAvx512: return cpu_norm_avx512::kRowsFns;
    case CpuIsa::kAvx2: return cpu_norm_avx2::kRowsFns;
    default: return cpu_norm_base::kRowsFns;
  }
}

int dtype_index(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return 0;
    case at::kHalf: return 1;
    case at::kBFloat16: return 2;
    default: TORCH_CHECK(false, "fastxf norm: unsupported dtype ", t);
  }
}

void run_norm_cpu(const NormProblem& p) {
  if (p.rows == 0) return;
  const int64_t n = p.hidden;
  // Weight and bias once in fp32 (they may come in any float dtype); a missing
  // weight is ones and a missing bias zeros, so the output loop has no branches.
  std::vector<float> w(n, 1.0f), b(n, 0.0f);
  if (p.weight.defined()) {
    auto wf = p.weight.to(at::kFloat).contiguous();
    std::copy(wf.data_ptr<float>(), wf.data_ptr<float>() + n, w.begin());
    if (p.unit_offset)
      for (auto& v : w) v += 1.0f;
  }
  if (p.bias.defined()) {
    auto bf = p.bias.to(at::kFloat).contiguous();
    std::copy(bf.data_ptr<float>(), bf.data_ptr<float>() + n, b.begin());
  }
  NormRows a;
  a.x = p.x.data_ptr();
  a.residual = p.residual.defined() ? p.residual.data_ptr() : nullptr;
  a.residual_out = p.residual_out.defined() ? p.residual_out.data_ptr() : nullptr;
  a.out = p.out.data_ptr();
  a.x_stride = p.x.stride(0);
  a.residual_stride = p.residual.defined() ? p.residual.stride(0) : 0;
  a.hidden = n;
  a.weight = w.data();
  a.bias = b.data();
  a.eps = static_cast<float>(p.eps);
  a.layer_norm = p.kind == NormKind::kLayerNorm;
  const auto rows = rows_fns()[dtype_index(p.x.scalar_type())][dtype_index(p.out.scalar_type())];
  // Grain: about 64k elements per task so small problems stay single-threaded.
  const int64_t grain = std::max<int64_t>(1, 65536 / n);
  at::parallel_for(0, p.rows, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> row(n);
    rows(a, begin, end, row.data());
  });
}

std::tuple<at::Tensor, at::Tensor> layer_norm_cpu(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                                                  const std::optional<at::Tensor>& bias, double eps,
                                                  const std::optional<at::Tensor>& residual,
                                                  std::optional<at::ScalarType> out_dtype) {
  if (emulating_cuda()) {  // fastxf.testing.emulate_cuda(): the CUDA kernels, run by the emulator
    return emulated_op<decltype(layer_norm_cpu)>("layer_norm").call(x, weight, bias, eps, residual, out_dtype);
  }
  auto p = make_norm_problem(NormKind::kLayerNorm, x, weight, bias, eps, residual, false, out_dtype);
  run_norm_cpu(p);
  return {p.out_full, p.residual_full};
}

std::tuple<at::Tensor, at::Tensor> rms_norm_cpu(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                                                double eps, const std::optional<at::Tensor>& residual,
                                                bool unit_offset, std::optional<at::ScalarType> out_dtype) {
  if (emulating_cuda()) {
    return emulated_op<decltype(rms_norm_cpu)>("rms_norm").call(x, weight, eps, residual, unit_offset, out_dtype);
  }
  auto p = make_norm_problem(NormKind::kRmsNorm, x, weight, std::nullopt, eps, residual, unit_offset, out_dtype);
  run_norm_cpu(p);
  return {p.out_full, p.residual_full};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastxf, CPU, m) {
  m.impl("layer_norm", &layer_norm_cpu);
  m.impl("rms_norm", &rms_norm_cpu);
}

}  // namespace fastxf
