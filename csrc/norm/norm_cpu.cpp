// CPU implementation of fastxf::layer_norm and fastxf::rms_norm: the reference
// for the CUDA kernels and a usable fallback. Rows are processed in parallel;
// each row is loaded once into an fp32 scratch row (the residual sum rounded to
// x's dtype first, as an unfused block would), statistics are two-pass in fp32
// over that row, and the output is written once.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "emulation.h"
#include "norm/norm.h"

namespace fastxf {
namespace {

template <typename T>
inline float to_float(T v) {
  return static_cast<float>(v);
}
// bf16 -> fp32 is a shift; spelled out so the loops around it vectorise.
template <>
inline float to_float(at::BFloat16 v) {
  const uint32_t bits = static_cast<uint32_t>(v.x) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

// Sum of f(v[i]) over a row. kLanes independent fp32 accumulators let the
// compiler vectorise without reassociating (no -ffast-math needed); they are
// folded into a double every kBlock elements so that fp32 rounding only ever
// accumulates over short runs, whatever the hidden size.
template <typename F>
double lane_sum(const float* v, int64_t n, F f) {
  constexpr int kLanes = 16;
  constexpr int64_t kBlock = 4096;
  const int64_t full = n - n % kLanes;
  double total = 0.0;
  int64_t i = 0;
  while (i < full) {
    const int64_t end = std::min(full, i + kBlock);
    float acc[kLanes] = {};
    for (; i < end; i += kLanes)
      for (int j = 0; j < kLanes; ++j) acc[j] += f(v[i + j]);
    for (int j = 0; j < kLanes; ++j) total += acc[j];
  }
  for (; i < n; ++i) total += f(v[i]);
  return total;
}

template <typename scalar_t, typename out_t>
void norm_rows_cpu(const NormProblem& p) {
  const int64_t n = p.hidden;
  const scalar_t* x = p.x.data_ptr<scalar_t>();
  const scalar_t* res = p.residual.defined() ? p.residual.data_ptr<scalar_t>() : nullptr;
  const int64_t x_stride = p.x.stride(0);
  const int64_t res_stride = p.residual.defined() ? p.residual.stride(0) : 0;
  scalar_t* res_out = p.residual_out.defined() ? p.residual_out.data_ptr<scalar_t>() : nullptr;
  out_t* out = p.out.data_ptr<out_t>();

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
  const bool layer_norm = p.kind == NormKind::kLayerNorm;
  const float eps = static_cast<float>(p.eps);
  // Grain: about 64k elements per task so small problems stay single-threaded.
  const int64_t grain = std::max<int64_t>(1, 65536 / n);

  at::parallel_for(0, p.rows, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> row(n);
    float* rw = row.data();
    const float* wp = w.data();
    const float* bp = b.data();
    for (int64_t r = begin; r < end; ++r) {
      const scalar_t* xr = x + r * x_stride;
      if (res) {
        const scalar_t* rr = res + r * res_stride;
        scalar_t* ro = res_out + r * n;
        for (int64_t i = 0; i < n; ++i) {
          const scalar_t s = static_cast<scalar_t>(to_float(xr[i]) + to_float(rr[i]));
          ro[i] = s;
          rw[i] = to_float(s);
        }
      } else {
        for (int64_t i = 0; i < n; ++i) rw[i] = to_float(xr[i]);
      }
      // Two passes over the fp32 row: mean, then squared deviations from it.
      const float mean = layer_norm ? static_cast<float>(lane_sum(rw, n, [](float v) { return v; }) / n) : 0.f;
      const double sq = lane_sum(rw, n, [mean](float v) {
        const float d = v - mean;
        return d * d;
      });
      const float rstd = 1.0f / std::sqrt(static_cast<float>(sq / n) + eps);
      out_t* o = out + r * n;
      for (int64_t i = 0; i < n; ++i) o[i] = static_cast<out_t>((rw[i] - mean) * rstd * wp[i] + bp[i]);
    }
  });
}

void run_norm_cpu(const NormProblem& p) {
  if (p.rows == 0) return;
  FASTXF_DISPATCH_FLOAT(p.x.scalar_type(), scalar_t, [&] {
    FASTXF_DISPATCH_FLOAT(p.out.scalar_type(), out_t, [&] { norm_rows_cpu<scalar_t, out_t>(p); });
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
