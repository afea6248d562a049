"""Finds the parts of a Hugging Face decoder model that placement needs: the
decoder-layer stack, the module that owns it, its final norm and the output head.

Discovery is structural rather than a table per `model_type`: the decoder layers
are the nn.ModuleList of identical blocks holding the most parameters (Llama's
`model.layers`, GPT-2's `transformer.h`, ...), so families that nobody listed
still work as long as they run their layers in one Python loop."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

# Names HF uses for the norm applied after the last decoder layer.
_FINAL_NORM_NAMES = ("norm", "ln_f", "final_layernorm", "final_layer_norm", "final_norm")


@dataclass
class ModelParts:
    layers_name: str  # qualified name of the ModuleList, e.g. "model.layers"
    layers: nn.ModuleList
    owner: nn.Module  # the module whose forward loops over `layers` (e.g. LlamaModel)
    final_norm: nn.Module | None
    head: nn.Module | None  # output embeddings (lm_head), None for a base model
    tied: bool  # head.weight is the input embedding's weight


def find_decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The nn.ModuleList of same-class blocks with the most parameters."""
    best = None
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.ModuleList) or len(mod) == 0:
            continue
        if len({type(m) for m in mod}) != 1:
            continue
        n = sum(p.numel() for p in mod.parameters())
        if n == 0:
            continue
        key = (n, len(mod))
        if best is None or key > best[0]:
            best = (key, name, mod)
    if best is None:
        raise ValueError(
            f"placement: found no nn.ModuleList of identical decoder blocks with parameters in "
            f"{type(model).__name__}; only models whose layers are such a list can be placed"
        )
    return best[1], best[2]


def discover(model: nn.Module) -> ModelParts:
    name, layers = find_decoder_layers(model)
    owner_name = name.rpartition(".")[0]
    owner = model.get_submodule(owner_name) if owner_name else model
    final_norm = None
    children = dict(owner.named_children())
    for n in _FINAL_NORM_NAMES:
        if n in children and children[n] is not layers:
            final_norm = children[n]
            break
    if final_norm is None:
        # Fall back to the last child of the owner whose class looks like a norm, but not
        # one named for the embeddings (BART's layernorm_embedding runs before the layers).
        norms = [m for n, m in children.items()
                 if "norm" in type(m).__name__.lower() and m is not layers and "embed" not in n]
        final_norm = norms[-1] if norms else None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    tied = False
    if head is not None and hasattr(model, "get_input_embeddings"):
        emb = model.get_input_embeddings()
        hw = getattr(head, "weight", None)
        tied = emb is not None and hw is not None and hw is getattr(emb, "weight", None)
    return ModelParts(name, layers, owner, final_norm, head, tied)


def text_config(model: nn.Module):
    cfg = getattr(model, "config", None)
    if cfg is None:
        return None
    sub = getattr(cfg, "get_text_config", None)
    return sub() if callable(sub) else cfg


def module_bytes(module: nn.Module, dtype: torch.dtype | None = None, seen: set | None = None) -> int:
    """Bytes of the parameters and buffers of `module` (each tensor counted once,
    floating tensors counted at `dtype` when given)."""
    seen = set() if seen is None else seen
    total = 0
    for t in list(module.parameters()) + list(module.buffers()):
        key = id(t)
        if key in seen:
            continue
        seen.add(key)
        size = t.element_size()
        if dtype is not None and t.is_floating_point():
            size = torch.empty((), dtype=dtype).element_size()
        total += t.numel() * size
    return total
