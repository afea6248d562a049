// CUDA entry points of fastxf::layer_norm and fastxf::rms_norm (host code only):
// validate with make_norm_problem, prepare weight / bias, pick the vectorised or
// scalar variant from the actual pointers and strides, choose the launch shape
// from the hidden size, and launch on the current stream (no host syncs, so
// CUDA graph capture works). The kernels are in norm_kernels.cuh.
//
// Host code lives in a .cpp (compiled by the C++ compiler alone); only the
// kernels and their launchers go through nvcc. The CPU emulator (fastxf._emu)
// compiles this same file with FASTXF_EMULATOR: gpu_host.h then supplies the
// device properties, stream and registration of the emulated op.
#if FASTXF_WITH_CUDA || defined(FASTXF_EMULATOR)

#include <limits>

#include "gpu_host.h"
#include "norm/norm.h"
#include "norm/norm_cuda.cuh"

namespace fastxf {
namespace {

using norm_cuda::LaunchConfig;
using norm_cuda::NormParams;

bool aligned(const void* ptr, int64_t bytes) { return reinterpret_cast<uintptr_t>(ptr) % bytes == 0; }

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

int64_t next_pow2(int64_t v) {
  int64_t p = 1;
  while (p < v) p <<= 1;
  return p;
}

// Launch shape from the number of chunks (VEC-element pieces) in a row.
// Rules of thumb behind it:
//  - about 4 chunks per thread: enough independent 16-byte loads in flight per
//    thread (memory-level parallelism) while the packed row costs 16 registers
//    (ptxas: <= 64 registers, so >= 1024 threads per SM stay resident);
//  - rows of <= 128 chunks get a warp (or a power-of-two sub-warp) each, several
//    rows per 128-thread block, and reduce with shuffles only;
//  - longer rows get a block each of G = ceil(chunks / N) threads rounded up
//    to whole warps (so e.g. hidden 5000 does not waste a power-of-two block);
//  - the scalar variant goes to 8 or 16 (2-byte) chunks per thread when 1024
//    threads x 4 is not enough; rows longer than 1024 threads can hold
//    (bf16: 32768 elements vectorised, 16384 scalar) are streamed twice by
//    norm_large_kernel.
LaunchConfig choose_config(int64_t hidden, bool vectorized, int64_t vec) {
  LaunchConfig cfg;
  cfg.vectorized = vectorized;
  const int64_t chunks = hidden / vec;
  int n;
  if (chunks <= 32) {
    n = 1;
  } else if (chunks <= 64) {
    n = 2;
  } else if (chunks <= 4 * 1024) {
    n = 4;
  } else if (!vectorized && chunks <= 8 * 1024) {
    n = 8;
  } else if (!vectorized && chunks <= 16 * 1024) {
    n = 16;
  } else {
    cfg.chunks_per_thread = 0;
    cfg.threads_per_row = 512;
    cfg.rows_per_block = 1;
    return cfg;
  }
  const int64_t g = (chunks + n - 1) / n;
  cfg.chunks_per_thread = n;
  if (g <= 32) {
    cfg.threads_per_row = static_cast<int>(next_pow2(g));  // shuffle groups must be powers of two
    cfg.rows_per_block = 128 / cfg.threads_per_row;
  } else {
    cfg.threads_per_row = static_cast<int>(round_up(g, 32));
    cfg.rows_per_block = 1;
  }
  return cfg;
}

// The kernels read weight / bias either in x's dtype or in fp32; anything else
// (e.g. fp16 weights on bf16 x) is converted to fp32 here, once per call.
at::Tensor prepare_param(const at::Tensor& t, at::ScalarType x_dtype, bool& is_f32) {
  if (!t.defined()) return t;
  at::Tensor r = t;
  if (r.scalar_type() != x_dtype && r.scalar_type() != at::kFloat) r = r.to(at::kFloat);
  is_f32 = r.scalar_type() == at::kFloat;
  return r;
}

int dtype_code(at::ScalarType t) { return t == at::kFloat ? 0 : t == at::kHalf ? 1 : 2; }

void run_norm_cuda(NormProblem& p) {
  if (p.rows == 0) return;
  const auto x_dtype = p.x.scalar_type();
  NormParams prm;
  at::Tensor weight = prepare_param(p.weight, x_dtype, prm.weight_f32);
  at::Tensor bias = prepare_param(p.bias, x_dtype, prm.bias_f32);

  // Vectorised when every row of every tensor starts on a 16-byte boundary
  // (outputs and fp32 weights on their own pack size); otherwise the scalar
  // variant, so misaligned views and odd hidden sizes still work.
  const int64_t vec = 16 / p.x.element_size();
  const auto row_ok = [&](const at::Tensor& t) {
    return aligned(t.const_data_ptr(), t.element_size() * vec) && (p.rows == 1 || t.stride(0) % vec == 0);
  };
  bool vectorized = p.hidden % vec == 0 && row_ok(p.x) && row_ok(p.out);
  if (p.residual.defined()) vectorized = vectorized && row_ok(p.residual) && row_ok(p.residual_out);
  if (vectorized) {
    // A misaligned weight view (e.g. w[1:]) is copied rather than giving up
    // the vectorised path for the whole input.
    for (at::Tensor* t : {&weight, &bias}) {
      if (t->defined() && !aligned(t->const_data_ptr(), t->element_size() * vec)) *t = t->clone();
    }
  }
  const LaunchConfig cfg = choose_config(p.hidden, vectorized, vectorized ? vec : 1);
  TORCH_CHECK(p.rows / cfg.rows_per_block < std::numeric_limits<int32_t>::max(), "fastxf norm: too many rows (",
              p.rows, ")");

  prm.x = p.x.const_data_ptr();
  prm.x_stride = p.x.stride(0);
  if (p.residual.defined()) {
    prm.residual = p.residual.const_data_ptr();
    prm.residual_stride = p.residual.stride(0);
    prm.residual_out = p.residual_out.mutable_data_ptr();
  }
  prm.weight = weight.defined() ? weight.const_data_ptr() : nullptr;
  prm.bias = bias.defined() ? bias.const_data_ptr() : nullptr;
  prm.out = p.out.mutable_data_ptr();
  prm.rows = p.rows;
  prm.hidden = p.hidden;
  prm.eps = static_cast<float>(p.eps);
  prm.layer_norm = p.kind == NormKind::kLayerNorm;
  prm.unit_offset = p.unit_offset;

  gpu::trace_dispatch("norm ", prm.layer_norm ? "layer" : "rms", " x=", x_dtype, " out=", p.out.scalar_type(),
                      " vec=", cfg.vectorized, " N=", cfg.chunks_per_thread, " G=", cfg.threads_per_row,
                      " rows_per_block=", cfg.rows_per_block);
  gpu::KernelBuffers buffers;
  buffers.add(p.x, "x", false).add(p.residual, "residual", false).add(weight, "weight", false);
  buffers.add(bias, "bias", false).add(p.out, "out", true).add(p.residual_out, "residual_out", true).commit();
  const cudaStream_t stream = gpu::current_stream(p.x.get_device());
  norm_cuda::launch(prm, cfg, dtype_code(x_dtype), dtype_code(p.out.scalar_type()), stream);
  FASTXF_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor> layer_norm_cuda(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                                                   const std::optional<at::Tensor>& bias, double eps,
                                                   const std::optional<at::Tensor>& residual,
                                                   std::optional<at::ScalarType> out_dtype) {
  const gpu::DeviceGuard guard(x.device());
  auto p = make_norm_problem(NormKind::kLayerNorm, x, weight, bias, eps, residual, false, out_dtype);
  run_norm_cuda(p);
  return {p.out_full, p.residual_full};
}

std::tuple<at::Tensor, at::Tensor> rms_norm_cuda(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                                                 double eps, const std::optional<at::Tensor>& residual,
                                                 bool unit_offset, std::optional<at::ScalarType> out_dtype) {
  const gpu::DeviceGuard guard(x.device());
  auto p = make_norm_problem(NormKind::kRmsNorm, x, weight, std::nullopt, eps, residual, unit_offset, out_dtype);
  run_norm_cuda(p);
  return {p.out_full, p.residual_full};
}

}  // namespace

FASTXF_GPU_LIBRARY_IMPL(m) {
  m.impl("layer_norm", &layer_norm_cuda);
  m.impl("rms_norm", &rms_norm_cuda);
}

}  // namespace fastxf

#endif  // FASTXF_WITH_CUDA || FASTXF_EMULATOR
