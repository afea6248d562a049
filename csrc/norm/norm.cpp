// Argument checks and output allocation shared by the CPU and CUDA norm ops.
// Defined out of line, in one C++ translation unit, so that exactly one
// compiled copy exists (an inline definition was compiled by both g++ and
// nvcc's host pass, giving the linker two copies that need not agree).
#include "norm/norm.h"

namespace fastxf {

NormProblem make_norm_problem(NormKind kind, const at::Tensor& x, const std::optional<at::Tensor>& weight,
                              const std::optional<at::Tensor>& bias, double eps,
                              const std::optional<at::Tensor>& residual, bool unit_offset,
                              std::optional<at::ScalarType> out_dtype) {
  const char* op = kind == NormKind::kLayerNorm ? "fastxf.layer_norm" : "fastxf.rms_norm";
  TORCH_CHECK(x.dim() >= 1, op, ": x must have at least 1 dimension, got a 0-dim tensor");
  TORCH_CHECK(is_float_type(x.scalar_type()), op, ": x must be float32, float16 or bfloat16, got ",
              x.scalar_type());
  TORCH_CHECK(eps >= 0, op, ": eps must be >= 0, got ", eps);
  const int64_t hidden = x.size(-1);
  TORCH_CHECK(hidden > 0, op, ": the last dim of x (the normalised one) must be > 0");
  auto check_vector = [&](const std::optional<at::Tensor>& t, const char* name) {
    if (!t.has_value()) return at::Tensor();
    TORCH_CHECK(t->dim() == 1 && t->size(0) == hidden, op, ": ", name, " must have shape (", hidden,
                ",) to match x's last dim, got ", t->sizes());
    TORCH_CHECK(is_float_type(t->scalar_type()), op, ": ", name, " must be a float tensor, got ",
                t->scalar_type());
    TORCH_CHECK(t->device() == x.device(), op, ": ", name, " is on ", t->device(), " but x is on ", x.device());
    return t->contiguous();
  };
  NormProblem p;
  p.kind = kind;
  p.hidden = hidden;
  p.eps = eps;
  p.unit_offset = unit_offset;
  p.weight = check_vector(weight, "weight");
  p.bias = check_vector(bias, "bias");
  p.rows = hidden == 0 ? 0 : x.numel() / hidden;

  p.x = x.reshape({p.rows, hidden});
  if (p.x.stride(1) != 1) p.x = p.x.contiguous();
  if (residual.has_value()) {
    TORCH_CHECK(residual->sizes() == x.sizes(), op, ": residual must have x's shape ", x.sizes(), ", got ",
                residual->sizes());
    TORCH_CHECK(residual->scalar_type() == x.scalar_type(), op, ": residual must have x's dtype ",
                x.scalar_type(), ", got ", residual->scalar_type());
    TORCH_CHECK(residual->device() == x.device(), op, ": residual is on ", residual->device(), " but x is on ",
                x.device());
    p.residual = residual->reshape({p.rows, hidden});
    if (p.residual.stride(1) != 1) p.residual = p.residual.contiguous();
  }
  const auto dtype = out_dtype.value_or(x.scalar_type());
  TORCH_CHECK(is_float_type(dtype), op, ": out_dtype must be float32, float16 or bfloat16, got ", dtype);
  p.out_full = at::empty(x.sizes(), x.options().dtype(dtype));
  p.out = p.out_full.view({p.rows, hidden});
  if (p.residual.defined()) {
    p.residual_full = at::empty(x.sizes(), x.options());
    p.residual_out = p.residual_full.view({p.rows, hidden});
  } else {
    p.residual_full = at::empty({0}, x.options());
  }
  return p;
}

}  // namespace fastxf
