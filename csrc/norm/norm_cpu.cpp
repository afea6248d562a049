// CPU implementation of fastxf::layer_norm and fastxf::rms_norm: the reference
// for the CUDA kernels and a usable fallback. Rows are processed in parallel;
// each row is loaded once into an fp32 scratch row (the residual sum rounded to
// x's dtype first, as an unfused block would), statistics are two-pass in fp32
// over that row, and the output is written once.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "norm/norm.h"

namespace fastxf {
namespace {

template <typename T>
inline float to_float(T v) {
  return static_cast<float>(v);
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

  // Weight and bias once in fp32 (they may come in any float dtype).
  std::vector<float> w, b;
  if (p.weight.defined()) {
    auto wf = p.weight.to(at::kFloat).contiguous();
    w.assign(wf.data_ptr<float>(), wf.data_ptr<float>() + n);
    if (p.unit_offset)
      for (auto& v : w) v += 1.0f;
  }
  if (p.bias.defined()) {
    auto bf = p.bias.to(at::kFloat).contiguous();
    b.assign(bf.data_ptr<float>(), bf.data_ptr<float>() + n);
  }
  const bool layer_norm = p.kind == NormKind::kLayerNorm;
  const float eps = static_cast<float>(p.eps);
  // Grain: about 64k elements per task so small problems stay single-threaded.
  const int64_t grain = std::max<int64_t>(1, 65536 / n);

  at::parallel_for(0, p.rows, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> row(n);
    for (int64_t r = begin; r < end; ++r) {
      const scalar_t* xr = x + r * x_stride;
      if (res) {
        const scalar_t* rr = res + r * res_stride;
        scalar_t* ro = res_out + r * n;
        for (int64_t i = 0; i < n; ++i) {
          const scalar_t s = static_cast<scalar_t>(to_float(xr[i]) + to_float(rr[i]));
          ro[i] = s;
          row[i] = to_float(s);
        }
      } else {
        for (int64_t i = 0; i < n; ++i) row[i] = to_float(xr[i]);
      }
      float mean = 0.f;
      if (layer_norm) {
        double sum = 0.0;
        for (int64_t i = 0; i < n; ++i) sum += row[i];
        mean = static_cast<float>(sum / n);
      }
      double sq = 0.0;
      for (int64_t i = 0; i < n; ++i) {
        const float d = row[i] - mean;
        sq += d * d;
      }
      const float rstd = 1.0f / std::sqrt(static_cast<float>(sq / n) + eps);
      out_t* o = out + r * n;
      for (int64_t i = 0; i < n; ++i) {
        float v = (row[i] - mean) * rstd;
        if (!w.empty()) v *= w[i];
        if (!b.empty()) v += b[i];
        o[i] = static_cast<out_t>(v);
      }
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
  auto p = make_norm_problem(NormKind::kLayerNorm, x, weight, bias, eps, residual, false, out_dtype);
  run_norm_cpu(p);
  return {p.out_full, p.residual_full};
}

std::tuple<at::Tensor, at::Tensor> rms_norm_cpu(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                                                double eps, const std::optional<at::Tensor>& residual,
                                                bool unit_offset, std::optional<at::ScalarType> out_dtype) {
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
