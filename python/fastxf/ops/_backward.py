"""Shared pieces of the fastxf::*_backward ops (the gradients that the C++ autograd
kernels in csrc/autograd.cpp ask for): the recompute-and-differentiate formula
and the fake outputs.

The backward recomputes the forward with the plain PyTorch reference and
differentiates that: correct for every option; fused backward kernels are future
work (fastxf targets inference)."""

from __future__ import annotations

import torch


# The dispatch keys that the recompute needs back when a backward op runs
# under a TorchDispatchMode (a FlopCounterMode, opcheck's SchemaCheckMode...):
# the mode calls the op's kernel with every key above Python excluded, autograd
# among them, where the recompute's torch.autograd.grad would find no graph.
_RECOMPUTE_KEYS = (
    torch._C.DispatchKey.AutogradFunctionality,
    torch._C.DispatchKey.AutogradOther,
    torch._C.DispatchKey.AutogradNestedTensor,
    torch._C.DispatchKey.ADInplaceOrView,
    torch._C.DispatchKey.Conjugate,
    torch._C.DispatchKey.Negative,
    torch._C.DispatchKey.ZeroTensor,
)


def _autograd_dispatch():
    """A guard lifting the exclusion of the autograd (and view) dispatch keys; a no-op
    outside dispatch modes. The other exclusions (autocast, functorch) stay."""
    exclude = torch._C._dispatch_tls_local_exclude_set()
    for key in _RECOMPUTE_KEYS:
        exclude = exclude.remove(key)
    return torch._C._ForceDispatchKeyGuard(torch._C._dispatch_tls_local_include_set(), exclude)


def recompute_grads(fn, inputs, grad_outputs, output_mask):
    """Gradients of fn(*inputs) (a tuple of outputs, None for an absent one) against
    grad_outputs (None for an output the loss does not use), for the inputs that
    output_mask selects; None for the others. A selected input gets a gradient
    even if nothing reaches it (zeros), so the result matches grads_like's fake."""
    leaves = [None if t is None else t.detach().requires_grad_(bool(need)) for t, need in zip(inputs, output_mask)]
    wrt = [t for t in leaves if t is not None and t.requires_grad]
    with _autograd_dispatch(), torch.enable_grad():
        # An output that depends on no selected input (the norms' new residual when
        # only the weight needs a gradient) takes no part.
        pairs = [(o, g) for o, g in zip(fn(*leaves), grad_outputs) if o is not None and o.requires_grad and g is not None]
        if pairs and wrt:
            grads = torch.autograd.grad([o for o, _ in pairs], wrt, [g for _, g in pairs], allow_unused=True)
        else:
            grads = [None] * len(wrt)
    found = iter(grads)
    # An op's outputs must not alias its inputs or each other, but autograd may
    # hand back a grad_output itself, or one tensor for two inputs (x and the
    # residual of a float32 norm both get the gradient of x + residual).
    taken = {g.untyped_storage().data_ptr() for g in grad_outputs if g is not None and g.numel()}
    result = []
    for leaf in leaves:
        if leaf is None or not leaf.requires_grad:
            result.append(None)
            continue
        g = next(found)
        g = torch.zeros(leaf.shape, dtype=leaf.dtype, device=leaf.device) if g is None else g.contiguous()
        if g.numel() and g.untyped_storage().data_ptr() in taken:
            g = g.clone()
        if g.numel():
            taken.add(g.untyped_storage().data_ptr())
        result.append(g)
    return tuple(result)


def grads_like(inputs, output_mask):
    """The fake outputs of a backward op: a contiguous tensor shaped like each selected
    input (as recompute_grads returns), None for the others."""
    return tuple(
        torch.empty(t.shape, dtype=t.dtype, device=t.device) if need and t is not None else None
        for t, need in zip(inputs, output_mask)
    )
