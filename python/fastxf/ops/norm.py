"""fastxf.ops.layer_norm and fastxf.ops.rms_norm (torch.ops.fastxf.layer_norm / rms_norm)."""

from __future__ import annotations

import torch

from .. import _extension
from . import reference
from ._backward import grads_like, recompute_grads
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


# The backward ops, which the C++ autograd kernels (csrc/autograd.cpp) call.
@torch.library.impl("fastxf::layer_norm_backward", "CompositeExplicitAutograd")
def _layer_norm_backward(grad_out, grad_residual, x, weight, bias, eps, residual, out_dtype, output_mask):
    return recompute_grads(
        lambda x, w, b, r: reference.layer_norm(x, w, b, eps, r, out_dtype),
        [x, weight, bias, residual],
        [grad_out, grad_residual],
        output_mask,
    )


@torch.library.register_fake("fastxf::layer_norm_backward")
def _layer_norm_backward_fake(grad_out, grad_residual, x, weight, bias, eps, residual, out_dtype, output_mask):
    return grads_like([x, weight, bias, residual], output_mask)


@torch.library.impl("fastxf::rms_norm_backward", "CompositeExplicitAutograd")
def _rms_norm_backward(grad_out, grad_residual, x, weight, eps, residual, unit_offset, out_dtype, output_mask):
    return recompute_grads(
        lambda x, w, r: reference.rms_norm(x, w, eps, r, unit_offset, out_dtype),
        [x, weight, residual],
        [grad_out, grad_residual],
        output_mask,
    )


@torch.library.register_fake("fastxf::rms_norm_backward")
def _rms_norm_backward_fake(grad_out, grad_residual, x, weight, eps, residual, unit_offset, out_dtype, output_mask):
    return grads_like([x, weight, residual], output_mask)
