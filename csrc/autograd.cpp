// The autograd kernels of fastxf's ops (DispatchKey::Autograd, which covers
// every device).
//
// Why C++: every call of torch.ops.fastxf.<op> goes through its Autograd
// kernel first, also under torch.no_grad(). A Python kernel
// (torch.library.register_autograd) costs a few microseconds per call even
// when it only redispatches, which is most of a decode step's host time; here
// a call that records no graph is one check and one redispatch.
//
// Each op has a torch::autograd::Function whose forward redispatches below
// autograd and saves the inputs; its backward calls fastxf::<op>_backward
// through the dispatcher (schemas in schemas.h; implemented in Python in
// python/fastxf/ops/, with fake kernels so AOTAutograd can trace a backward
// under torch.compile). Only the gradients some input needs are asked for.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <tuple>

namespace fastxf {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using OptTensor = std::optional<at::Tensor>;

// The C++ signatures of the ops' schemas (schemas.h).
using AttentionSig = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptTensor&,
                                const OptTensor&, bool, std::optional<double>, int64_t, double, const OptTensor&);
using AttentionBackwardSig = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptTensor&, const OptTensor&,
    bool, std::optional<double>, int64_t, double, const OptTensor&, std::array<bool, 3>);
using AttentionVarlenSig = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                      const at::Tensor&, int64_t, int64_t, bool, std::optional<double>, int64_t,
                                      double);
using AttentionVarlenBackwardSig = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    int64_t, int64_t, bool, std::optional<double>, int64_t, double, std::array<bool, 3>);
using LayerNormSig = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const OptTensor&, const OptTensor&, double,
                                                        const OptTensor&, std::optional<at::ScalarType>);
using LayerNormBackwardSig = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const OptTensor&, const OptTensor&, const at::Tensor&, const OptTensor&, const OptTensor&, double,
    const OptTensor&, std::optional<at::ScalarType>, std::array<bool, 4>);
using RmsNormSig = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const OptTensor&, double, const OptTensor&,
                                                      bool, std::optional<at::ScalarType>);
using RmsNormBackwardSig = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const OptTensor&, const OptTensor&, const at::Tensor&, const OptTensor&, double, const OptTensor&, bool,
    std::optional<at::ScalarType>, std::array<bool, 3>);

// fastxf::<name>'s typed handle. The lookup runs once per op (function-local
// static): the schemas are registered when the library loads, before any call.
template <typename Sig>
c10::TypedOperatorHandle<Sig> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}
#define FASTXF_OP(SIG, NAME)                                  \
  [] {                                                        \
    static const auto handle = find_op<SIG>("fastxf::" NAME); \
    return handle;                                            \
  }()

bool requires_grad(const at::Tensor& t) { return t.defined() && t.requires_grad(); }
bool requires_grad(const OptTensor& t) { return t.has_value() && requires_grad(*t); }
// A tangent of forward-mode AD: such calls take the autograd::Function path,
// which raises (no jvp), rather than silently dropping the tangent.
bool has_fw_grad(const at::Tensor& t) { return t.defined() && t._fw_grad(/*level=*/0).defined(); }
bool has_fw_grad(const OptTensor& t) { return t.has_value() && has_fw_grad(*t); }

// True when a call may record autograd state: otherwise the kernels just
// redispatch below autograd, with no autograd::Function (node, edges) built.
template <typename... Ts>
bool needs_autograd(const Ts&... tensors) {
  if (torch::autograd::GradMode::is_enabled() && (requires_grad(tensors) || ...)) return true;
  return (has_fw_grad(tensors) || ...);
}

// Runs a backward op with grad mode off even under create_graph=True: the
// gradients are not differentiable (double backward is not supported, as it
// never was), so they must not pretend to be. The Python implementations turn
// grad mode back on for their own recompute.
using NoGradForBackward = torch::autograd::AutoGradMode;

at::Tensor saved(const OptTensor& t) { return t.value_or(at::Tensor()); }
OptTensor optional(const at::Tensor& t) { return t.defined() ? OptTensor(t) : std::nullopt; }

// ctx->needs_input_grad counts only the tensor arguments that were given
// (an absent optional tensor has no autograd edge); this walks them in order.
struct EdgeIndex {
  size_t next = 0;
  // Whether the gradient of this argument (absent: no) is needed.
  bool needs(AutogradContext* ctx, const at::Tensor& t) { return t.defined() && ctx->needs_input_grad(next++); }
};

// ------------------------------------------------------------ attention ----
struct AttentionFunction : torch::autograd::Function<AttentionFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const OptTensor& key_padding_mask, const OptTensor& q_offset, bool causal,
                            std::optional<double> scale, int64_t window, double softcap,
                            const OptTensor& alibi_slopes) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({q, k, v, saved(key_padding_mask), saved(q_offset), saved(alibi_slopes)});
    ctx->saved_data["causal"] = causal;
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["window"] = window;
    ctx->saved_data["softcap"] = softcap;
    return FASTXF_OP(AttentionSig, "attention")
        .call(q, k, v, key_padding_mask, q_offset, causal, scale, window, softcap, alibi_slopes);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto s = ctx->get_saved_variables();
    // q, k, v are always the first three edges; alibi_slopes (which may require
    // grad) gets none, as the masks and offsets.
    const std::array<bool, 3> mask = {ctx->needs_input_grad(0), ctx->needs_input_grad(1), ctx->needs_input_grad(2)};
    at::Tensor gq, gk, gv;
    if (mask[0] || mask[1] || mask[2]) {
      NoGradForBackward no_grad(false);
      std::tie(gq, gk, gv) = FASTXF_OP(AttentionBackwardSig, "attention_backward")
                                 .call(grad_outputs[0], s[0], s[1], s[2], optional(s[3]), optional(s[4]),
                                       ctx->saved_data["causal"].toBool(),
                                       ctx->saved_data["scale"].toOptional<double>(),
                                       ctx->saved_data["window"].toInt(), ctx->saved_data["softcap"].toDouble(),
                                       optional(s[5]), mask);
    }
    return {gq, gk, gv, {}, {}, {}, {}, {}, {}, {}};
  }
};

at::Tensor attention_autograd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                              const OptTensor& key_padding_mask, const OptTensor& q_offset, bool causal,
                              std::optional<double> scale, int64_t window, double softcap,
                              const OptTensor& alibi_slopes) {
  if (!needs_autograd(q, k, v, alibi_slopes)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return FASTXF_OP(AttentionSig, "attention")
        .call(q, k, v, key_padding_mask, q_offset, causal, scale, window, softcap, alibi_slopes);
  }
  return AttentionFunction::apply(q, k, v, key_padding_mask, q_offset, causal, scale, window, softcap,
                                  alibi_slopes);
}

// ----------------------------------------------------- attention_varlen ----
struct AttentionVarlenFunction : torch::autograd::Function<AttentionVarlenFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const at::Tensor& cu_seqlens_q, const at::Tensor& cu_seqlens_k, int64_t max_seqlen_q,
                            int64_t max_seqlen_k, bool causal, std::optional<double> scale, int64_t window,
                            double softcap) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({q, k, v, cu_seqlens_q, cu_seqlens_k});
    ctx->saved_data["max_seqlen_q"] = max_seqlen_q;
    ctx->saved_data["max_seqlen_k"] = max_seqlen_k;
    ctx->saved_data["causal"] = causal;
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["window"] = window;
    ctx->saved_data["softcap"] = softcap;
    return FASTXF_OP(AttentionVarlenSig, "attention_varlen")
        .call(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, scale, window, softcap);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto s = ctx->get_saved_variables();
    const std::array<bool, 3> mask = {ctx->needs_input_grad(0), ctx->needs_input_grad(1), ctx->needs_input_grad(2)};
    at::Tensor gq, gk, gv;
    if (mask[0] || mask[1] || mask[2]) {
      NoGradForBackward no_grad(false);
      std::tie(gq, gk, gv) =
          FASTXF_OP(AttentionVarlenBackwardSig, "attention_varlen_backward")
              .call(grad_outputs[0], s[0], s[1], s[2], s[3], s[4], ctx->saved_data["max_seqlen_q"].toInt(),
                    ctx->saved_data["max_seqlen_k"].toInt(), ctx->saved_data["causal"].toBool(),
                    ctx->saved_data["scale"].toOptional<double>(), ctx->saved_data["window"].toInt(),
                    ctx->saved_data["softcap"].toDouble(), mask);
    }
    return {gq, gk, gv, {}, {}, {}, {}, {}, {}, {}, {}};
  }
};

at::Tensor attention_varlen_autograd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                     const at::Tensor& cu_seqlens_q, const at::Tensor& cu_seqlens_k,
                                     int64_t max_seqlen_q, int64_t max_seqlen_k, bool causal,
                                     std::optional<double> scale, int64_t window, double softcap) {
  if (!needs_autograd(q, k, v)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return FASTXF_OP(AttentionVarlenSig, "attention_varlen")
        .call(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, scale, window, softcap);
  }
  return AttentionVarlenFunction::apply(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal,
                                        scale, window, softcap);
}

// ----------------------------------------------------------------- norms ----
// Both outputs (out, new residual) are differentiable; with materialize_grads
// off, the one the loss does not use arrives undefined and is passed as None.
variable_list tensor_list(const std::tuple<at::Tensor, at::Tensor>& t) { return {std::get<0>(t), std::get<1>(t)}; }

struct LayerNormFunction : torch::autograd::Function<LayerNormFunction> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const OptTensor& weight,
                               const OptTensor& bias, double eps, const OptTensor& residual,
                               std::optional<at::ScalarType> out_dtype) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({x, saved(weight), saved(bias), saved(residual)});
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["out_dtype"] = out_dtype;
    return tensor_list(FASTXF_OP(LayerNormSig, "layer_norm").call(x, weight, bias, eps, residual, out_dtype));
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto s = ctx->get_saved_variables();
    EdgeIndex edge;
    const std::array<bool, 4> mask = {edge.needs(ctx, s[0]), edge.needs(ctx, s[1]), edge.needs(ctx, s[2]),
                                      edge.needs(ctx, s[3])};
    at::Tensor gx, gw, gb, gr;
    const bool any_grad_out = grad_outputs[0].defined() || grad_outputs[1].defined();
    if (any_grad_out && (mask[0] || mask[1] || mask[2] || mask[3])) {
      NoGradForBackward no_grad(false);
      const auto out_dtype = ctx->saved_data["out_dtype"].toOptional<at::ScalarType>();
      std::tie(gx, gw, gb, gr) =
          FASTXF_OP(LayerNormBackwardSig, "layer_norm_backward")
              .call(optional(grad_outputs[0]), optional(grad_outputs[1]), s[0], optional(s[1]), optional(s[2]),
                    ctx->saved_data["eps"].toDouble(), optional(s[3]), out_dtype, mask);
    }
    return {gx, gw, gb, {}, gr, {}};
  }
};

std::tuple<at::Tensor, at::Tensor> layer_norm_autograd(const at::Tensor& x, const OptTensor& weight,
                                                       const OptTensor& bias, double eps, const OptTensor& residual,
                                                       std::optional<at::ScalarType> out_dtype) {
  if (!needs_autograd(x, weight, bias, residual)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return FASTXF_OP(LayerNormSig, "layer_norm").call(x, weight, bias, eps, residual, out_dtype);
  }
  const auto outs = LayerNormFunction::apply(x, weight, bias, eps, residual, out_dtype);
  return {outs[0], outs[1]};
}

struct RmsNormFunction : torch::autograd::Function<RmsNormFunction> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const OptTensor& weight, double eps,
                               const OptTensor& residual, bool unit_offset, std::optional<at::ScalarType> out_dtype) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({x, saved(weight), saved(residual)});
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["unit_offset"] = unit_offset;
    ctx->saved_data["out_dtype"] = out_dtype;
    return tensor_list(FASTXF_OP(RmsNormSig, "rms_norm").call(x, weight, eps, residual, unit_offset, out_dtype));
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto s = ctx->get_saved_variables();
    EdgeIndex edge;
    const std::array<bool, 3> mask = {edge.needs(ctx, s[0]), edge.needs(ctx, s[1]), edge.needs(ctx, s[2])};
    at::Tensor gx, gw, gr;
    const bool any_grad_out = grad_outputs[0].defined() || grad_outputs[1].defined();
    if (any_grad_out && (mask[0] || mask[1] || mask[2])) {
      NoGradForBackward no_grad(false);
      const auto out_dtype = ctx->saved_data["out_dtype"].toOptional<at::ScalarType>();
      std::tie(gx, gw, gr) = FASTXF_OP(RmsNormBackwardSig, "rms_norm_backward")
                                 .call(optional(grad_outputs[0]), optional(grad_outputs[1]), s[0], optional(s[1]),
                                       ctx->saved_data["eps"].toDouble(), optional(s[2]),
                                       ctx->saved_data["unit_offset"].toBool(), out_dtype, mask);
    }
    return {gx, gw, {}, gr, {}, {}};
  }
};

std::tuple<at::Tensor, at::Tensor> rms_norm_autograd(const at::Tensor& x, const OptTensor& weight, double eps,
                                                     const OptTensor& residual, bool unit_offset,
                                                     std::optional<at::ScalarType> out_dtype) {
  if (!needs_autograd(x, weight, residual)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return FASTXF_OP(RmsNormSig, "rms_norm").call(x, weight, eps, residual, unit_offset, out_dtype);
  }
  const auto outs = RmsNormFunction::apply(x, weight, eps, residual, unit_offset, out_dtype);
  return {outs[0], outs[1]};
}

}  // namespace
}  // namespace fastxf

TORCH_LIBRARY_IMPL(fastxf, Autograd, m) {
  m.impl("attention", &fastxf::attention_autograd);
  m.impl("attention_varlen", &fastxf::attention_varlen_autograd);
  m.impl("layer_norm", &fastxf::layer_norm_autograd);
  m.impl("rms_norm", &fastxf::rms_norm_autograd);
}
