"""Residual add fused into the following pre-norm, for Llama-shaped decoder layers.

The Llama family's decoder layer is

    residual = h; h = input_layernorm(h); h = self_attn(h, ...)[0]
    h = residual + h; residual = h; h = post_attention_layernorm(h)
    h = mlp(h); return residual + h

`residual + h` followed by `post_attention_layernorm` is one pass over the
hidden state with fastxf's rms_norm(x, w, eps, residual=...), which returns both
the normalised sum and the sum. The fused forward is bound to the layer
instance (never its class), and only where the layer has exactly that
structure: the four children above, the post-attention norm already a fastxf
norm, a forward taking `hidden_states` first; then a probe runs the class's
forward and the fused one on the same random input and must agree. Calls that
transformers would gradient-checkpoint run the class's forward instead (HF
checkpoints by wrapping the class's forward, which an instance-bound forward
would otherwise hide).
"""

from __future__ import annotations

import inspect
import types

import torch
from torch import nn

from .norms import FastxfNorm

LLAMA_CHILDREN = {"self_attn", "mlp", "input_layernorm", "post_attention_layernorm"}


def structure_reason(layer: nn.Module) -> str | None:
    """None when the layer has the Llama decoder-layer structure, else why not."""
    children = {name for name, _ in layer.named_children()}
    if children != LLAMA_CHILDREN:
        extra = sorted(children - LLAMA_CHILDREN)
        return f"children {sorted(children)} differ from the Llama layer" + (f" (extra: {extra})" if extra else "")
    if not isinstance(layer.post_attention_layernorm, FastxfNorm):
        return "post_attention_layernorm was not replaced by a fastxf norm"
    params = list(inspect.signature(type(layer).forward).parameters)
    if len(params) < 2 or params[1] != "hidden_states":
        return "forward does not take hidden_states first"
    return None


def _fused_forward_for(layer: nn.Module):
    sig = inspect.signature(type(layer).forward)
    names = list(sig.parameters)[1:]  # without self
    plain = [n for n in names if sig.parameters[n].kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,)]
    positional = plain[1:]  # after hidden_states

    def forward(self, hidden_states, *args, **kwargs):
        # Gradient checkpointing: transformers wraps the layer *class's* forward
        # to checkpoint it, which this instance-bound forward would bypass. When
        # that wrapper would checkpoint this call, hand the call to it (it then
        # runs the class's unfused forward, on the fastxf norms).
        if self.training and getattr(self, "gradient_checkpointing", False) and torch.is_grad_enabled():
            return type(self).forward(self, hidden_states, *args, **kwargs)
        if args:  # pass every argument on to self_attn by name, as the original forward does
            kwargs = dict(zip(positional, args), **kwargs)
        residual = hidden_states
        h = self.input_layernorm(hidden_states)
        out = self.self_attn(hidden_states=h, **kwargs)
        h = out[0] if isinstance(out, tuple) else out
        h, residual = self.post_attention_layernorm(h, residual)
        h = self.mlp(h)
        return residual + h

    forward.__doc__ = "fastxf: residual add fused into post_attention_layernorm (instance-bound)"
    return forward


def _probe_inputs(model: nn.Module, layer: nn.Module):
    """hidden_states and the extra inputs the layer needs (rotary embeddings)."""
    p = next(layer.parameters())
    hidden = layer.post_attention_layernorm.weight.shape[0]
    gen = torch.Generator(device="cpu").manual_seed(4321)
    x = torch.randn(2, 5, hidden, generator=gen).to(device=p.device, dtype=p.dtype)
    kwargs = {"attention_mask": None}
    params = inspect.signature(type(layer).forward).parameters
    if "position_embeddings" in params:
        rotary = next((m.rotary_emb for m in model.modules() if isinstance(getattr(m, "rotary_emb", None), nn.Module)), None)
        if rotary is None:
            raise RuntimeError("layer wants position_embeddings but the model has no rotary_emb")
        pos = torch.arange(5, device=p.device)[None].expand(2, -1)
        kwargs["position_embeddings"] = rotary(x, pos)
        if "position_ids" in params:
            kwargs["position_ids"] = pos
    return x, kwargs


def fuse_layer(model: nn.Module, layer: nn.Module) -> str | None:
    """Binds the fused forward on `layer` if structure and probe agree; None on success, else why not."""
    why = structure_reason(layer)
    if why is not None:
        return why
    forward = _fused_forward_for(layer)
    try:
        x, kwargs = _probe_inputs(model, layer)
        with torch.no_grad():
            want = type(layer).forward(layer, x, **kwargs)
            got = forward(layer, x, **kwargs)
    except Exception as e:
        return f"probe failed ({type(e).__name__}: {e})"
    want = want[0] if isinstance(want, tuple) else want
    if not isinstance(want, torch.Tensor) or want.shape != got.shape:
        return "layer output is not a single hidden-state tensor"
    tol = 1e-5 if x.dtype == torch.float32 else 2e-2
    err = (got.float() - want.float()).abs().max().item()
    if err > tol * (1 + want.float().abs().max().item()):
        return f"probe mismatch (max abs err {err:.3g})"
    layer.forward = types.MethodType(forward, layer)
    return None


def unfuse_layer(layer: nn.Module) -> None:
    if "forward" in layer.__dict__:
        del layer.__dict__["forward"]
