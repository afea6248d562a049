"""Shared pieces of the fastxf::*_backward ops (the gradients that the C++ autograd
kernels in csrc/autograd.cpp ask for): the recompute-and-differentiate formula
and the fake outputs.

The backward recomputes the forward with the plain PyTorch reference and
differentiates that: correct for every option; fused backward kernels are future
work (fastxf targets inference)."""

from __future__ import annotations

import torch


def recompute_grads(fn, inputs, grad_outputs, output_mask):
    """Gradients of fn(*inputs) (a tuple of outputs, None for an absent one) against
    grad_outputs (None for an output the loss does not use), for the inputs that
    output_mask selects; None for the others. A selected input gets a gradient
    even if nothing reaches it (zeros), so the result matches grads_like's fake."""
    leaves = [None if t is None else t.detach().requires_grad_(bool(need)) for t, need in zip(inputs, output_mask)]
    wrt = [t for t in leaves if t is not None and t.requires_grad]
    with torch.enable_grad():
        pairs = [(o, g) for o, g in zip(fn(*leaves), grad_outputs) if o is not None and g is not None]
        if pairs and wrt:
            grads = torch.autograd.grad([o for o, _ in pairs], wrt, [g for _, g in pairs], allow_unused=True)
        else:
            grads = [None] * len(wrt)
    found = iter(grads)
    result = []
    for leaf in leaves:
        if leaf is None or not leaf.requires_grad:
            result.append(None)
            continue
        g = next(found)
        g = torch.zeros(leaf.shape, dtype=leaf.dtype, device=leaf.device) if g is None else g.contiguous()
        # A custom op must not return an alias of its inputs: autograd may hand
        # back a grad_output itself (e.g. the residual's gradient of a float32 norm).
        if any(o is not None and g.untyped_storage().data_ptr() == o.untyped_storage().data_ptr() for o in grad_outputs):
            g = g.clone()
        result.append(g)
    return tuple(result)


def grads_like(inputs, output_mask):
    """The fake outputs of a backward op: a contiguous tensor shaped like each selected
    input (as recompute_grads returns), None for the others."""
    return tuple(
        torch.empty(t.shape, dtype=t.dtype, device=t.device) if need and t is not None else None
        for t, need in zip(inputs, output_mask)
    )
