"""Norms whose eps is not stored on the module (OLMo v1's parameter-free
LayerNorm keeps `eps=1e-5` as a literal in its forward).

The eps is found by probing, never assumed: each candidate value runs next to
the original forward on an input whose rows span variances from 1 down to
1e-14, where (x - mean) / sqrt(var + eps) depends strongly on eps (a wrong
candidate by a factor 10 moves rows with var ~ eps by tens of percent), so at
most one candidate can match. If none reproduces the forward, the module stays
on HF and the report says which values were tried.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

# Values seen in the wild (LayerNorm defaults, Llama / T5 / BERT / OLMo configs).
CANDIDATES = (1e-5, 1e-6, 1e-12, 1e-8, 1e-7, 1e-10, 1e-9, 1e-4, 1e-3, 1e-2)


def may_probe(module: nn.Module) -> bool:
    """A leaf norm-like module without an eps attribute: its class calls itself a
    norm (LayerNorm, RMSNorm, ...) and its size is known (normalized_shape or a
    1-D weight). Only a candidate: the probe decides."""
    if any(True for _ in module.children()) or "norm" not in type(module).__name__.lower():
        return False
    return size_of(module) is not None


def size_of(module: nn.Module) -> int | None:
    w = module._parameters.get("weight")
    if w is not None and w.dim() == 1:
        return w.shape[0]
    shape = getattr(module, "normalized_shape", None)
    if isinstance(shape, (tuple, list, torch.Size)) and len(shape) == 1 and int(shape[0]) > 0:
        return int(shape[0])
    return None


def _probe_input(size: int, device) -> torch.Tensor:
    gen = torch.Generator(device="cpu").manual_seed(4321)
    base = torch.randn(15, size, generator=gen, dtype=torch.float64)
    scales = torch.logspace(0, -7, 15, dtype=torch.float64)[:, None]  # std 1 .. 1e-7: var 1 .. 1e-14
    return (base * scales + 0.25 * scales).to(device=device, dtype=torch.float32)[None]


def find_eps(module: nn.Module, kind: str, make_norm) -> tuple[float | None, str]:
    """(eps, "") when exactly the FastxfNorm(kind, eps) built by `make_norm(module,
    kind, eps)` reproduces module.forward on the multi-scale probe, else (None, why)."""
    p = next(module.parameters(recurse=False), None)
    if p is not None and (p.dtype != torch.float32 or p.device.type != "cpu"):
        # The eps is a property of the formula: find it on a float32 CPU twin (a
        # norm is small); the caller's probe() then checks the model's dtype/device.
        if p.device.type == "meta":
            return None, "parameters on the meta device"
        module = copy.deepcopy(module).to("cpu", torch.float32)
    size = size_of(module)
    x = _probe_input(size, torch.device("cpu"))
    with torch.no_grad():
        try:
            want = module(x)
        except Exception as e:
            return None, f"original forward failed on the eps probe ({type(e).__name__})"
        if not isinstance(want, torch.Tensor) or want.shape != x.shape:
            return None, "original forward does not return a tensor of the input's shape"
        matches = []
        for eps in CANDIDATES:
            try:
                got = make_norm(module, kind, eps)(x)
            except Exception as e:
                return None, f"fastxf {kind} failed on the eps probe ({type(e).__name__}: {e})"
            err = (got.double() - want.double()).abs()
            if bool((err <= 1e-5 + 1e-4 * want.double().abs()).all()):
                matches.append(eps)
    if len(matches) == 1:
        return matches[0], ""
    if not matches:
        return None, f"no eps attribute, and no candidate eps reproduces its forward (tried {list(CANDIDATES)})"
    return None, f"no eps attribute, and several candidate eps reproduce its forward ({matches})"
