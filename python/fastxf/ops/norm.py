"""fastxf.ops.layer_norm and fastxf.ops.rms_norm (torch.ops.fastxf.layer_norm / rms_norm)."""

from __future__ import annotations

import torch

from .. import _extension
from . import reference
from ._checks import check_norm_args


def layer_norm(x, weight=None, bias=None, eps=1e-5, residual=None, *, out_dtype=None):
    """LayerNorm over the last dim. With `residual`: returns (layer_norm(x + residual), x + residual)."""
    check_norm_args("layer_norm", x, weight, bias, eps, residual, out_dtype)
    _extension.require_kernels_for(x.device, "layer_norm")
    out, new_residual = torch.ops.fastxf.layer_norm(x, weight, bias, float(eps), residual, out_dtype)
    return out if residual is None else (out, new_residual)


def rms_norm(x, weight=None, eps=1e-6, residual=None, *, unit_offset=False, out_dtype=None):
    """RMSNorm over the last dim; unit_offset=True scales by (1 + weight) (Gemma).
    With `residual`: returns (rms_norm(x + residual), x + residual)."""
    check_norm_args("rms_norm", x, weight, None, eps, residual, out_dtype)
    _extension.require_kernels_for(x.device, "rms_norm")
    out, new_residual = torch.ops.fastxf.rms_norm(x, weight, float(eps), residual, bool(unit_offset), out_dtype)
    return out if residual is None else (out, new_residual)


def _fake_outputs(x, residual, out_dtype):
    # The real ops return contiguous tensors, whatever x's strides.
    out = torch.empty(x.shape, dtype=out_dtype or x.dtype, device=x.device)
    new_residual = torch.empty(x.shape if residual is not None else (0,), dtype=x.dtype, device=x.device)
    return out, new_residual


@torch.library.register_fake("fastxf::layer_norm")
def _layer_norm_fake(x, weight, bias, eps, residual=None, out_dtype=None):
    check_norm_args("layer_norm", x, weight, bias, eps, residual, out_dtype)
    return _fake_outputs(x, residual, out_dtype)


@torch.library.register_fake("fastxf::rms_norm")
def _rms_norm_fake(x, weight, eps, residual=None, unit_offset=False, out_dtype=None):
    check_norm_args("rms_norm", x, weight, None, eps, residual, out_dtype)
    return _fake_outputs(x, residual, out_dtype)


# Autograd: the backward recomputes the forward with the plain PyTorch
# reference and differentiates that. Correct for every option; fused backward
# kernels are future work (fastxf targets inference).
def _recompute_grads(fn, inputs, grad_outputs, kwargs):
    leaves = [t.detach().requires_grad_(t.is_floating_point()) if t is not None else None for t in inputs]
    with torch.enable_grad():
        outs = [o for o in fn(*leaves, **kwargs) if o is not None]
        pairs = [(o, g) for o, g in zip(outs, grad_outputs) if g is not None and g.numel() == o.numel()]
        wrt = [t for t in leaves if t is not None and t.requires_grad]
        grads = iter(torch.autograd.grad([o for o, _ in pairs], wrt, [g for _, g in pairs], allow_unused=True))
    return tuple(next(grads) if (t is not None and t.requires_grad) else None for t in leaves)


def _layer_norm_setup(ctx, inputs, output):
    x, weight, bias, eps, residual, out_dtype = inputs
    ctx.eps, ctx.out_dtype = eps, out_dtype
    ctx.save_for_backward(x, weight, bias, residual)


def _layer_norm_backward(ctx, grad_out, grad_residual):
    x, weight, bias, residual = ctx.saved_tensors
    gx, gw, gb, gr = _recompute_grads(
        lambda x, w, b, r: reference.layer_norm(x, w, b, ctx.eps, r, ctx.out_dtype),
        [x, weight, bias, residual],
        [grad_out, grad_residual],
        {},
    )
    return gx, gw, gb, None, gr, None


def _rms_norm_setup(ctx, inputs, output):
    x, weight, eps, residual, unit_offset, out_dtype = inputs
    ctx.eps, ctx.unit_offset, ctx.out_dtype = eps, unit_offset, out_dtype
    ctx.save_for_backward(x, weight, residual)


def _rms_norm_backward(ctx, grad_out, grad_residual):
    x, weight, residual = ctx.saved_tensors
    gx, gw, gr = _recompute_grads(
        lambda x, w, r: reference.rms_norm(x, w, ctx.eps, r, ctx.unit_offset, ctx.out_dtype),
        [x, weight, residual],
        [grad_out, grad_residual],
        {},
    )
    return gx, gw, None, gr, None, None


torch.library.register_autograd("fastxf::layer_norm", _layer_norm_backward, setup_context=_layer_norm_setup)
torch.library.register_autograd("fastxf::rms_norm", _rms_norm_backward, setup_context=_rms_norm_setup)
