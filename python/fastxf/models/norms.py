"""Forward-only replacements for LayerNorm and RMSNorm modules.

A `FastxfNorm` borrows the original module's parameters (the same Parameter
objects under the same names) and plain attributes (eps, variance_epsilon,
normalized_shape, ...), so the state dict and code that reads those attributes
see no change. Which formula a module computes is decided by structure and
checked by a probe, never by class name:

- candidates come from the parameters: weight + bias -> LayerNorm; weight only
  -> Llama-style RMSNorm (weight * normed.to(x.dtype), output dtype promoted),
  Gemma-style RMSNorm ((1 + weight) in fp32, output in x's dtype) or LayerNorm
  without bias; no parameters -> RMSNorm or LayerNorm without affine;
- each candidate runs on a random probe input next to the original forward (on
  a copy of the module with random parameters, so zero/one initialisations
  cannot hide a difference); the first that matches within the dtype's rounding
  is used, otherwise the module stays as it is and the report says why.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..ops import layer_norm as fx_layer_norm
from ..ops import rms_norm as fx_rms_norm
from .adapters import norm_eps as fx_norm_eps

EPS_NAMES = ("variance_epsilon", "eps", "epsilon", "layer_norm_eps", "norm_eps")

# Probe tolerance |replacement - original| <= atol + rtol * |original|, by dtype.
# fp32: reduction-order differences only (~1e-7 relative). Half precision: HF's
# Llama-style norm rounds the normalised value before the weight multiply while
# fastxf rounds once at the end, so allow ~2 ulps.
PROBE_TOL = {
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}


class FastxfNorm(nn.Module):
    """LayerNorm / RMSNorm on torch.ops.fastxf; parameters borrowed from `original`."""

    def __init__(self, original: nn.Module, kind: str, eps: float):
        super().__init__()
        # Plain attributes first (eps, normalized_shape, hidden_size...), then the
        # very same Parameter objects, so names and storage are unchanged.
        for k, v in vars(original).items():
            if not k.startswith("_") and k != "training" and not isinstance(v, (torch.Tensor, nn.Module)):
                object.__setattr__(self, k, v)
        for name, p in original._parameters.items():  # None entries too (LayerNorm(bias=False))
            self.register_parameter(name, p)
        self.training = original.training
        self.fastxf_kind = kind  # "layer_norm", "rms_norm", "rms_norm_unit_offset"
        self.fastxf_eps = float(eps)
        # Held outside the module tree (a tuple is not registered): revert()
        # puts it back; it must not show up in state_dict() or modules().
        self._fastxf_original = (original,)

    def _w(self):
        return self._parameters.get("weight")

    def _b(self):
        return self._parameters.get("bias")

    def _out_dtype(self, x):
        w = self._w()
        if self.fastxf_kind == "rms_norm" and w is not None and w.dtype != x.dtype:
            return torch.promote_types(w.dtype, x.dtype)  # HF: weight * normed.to(x.dtype)
        return None

    def forward(self, x, residual=None):
        """Norm of x, or with `residual`: (norm(x + residual), x + residual)."""
        if self.fastxf_kind == "layer_norm":
            return fx_layer_norm(x, self._w(), self._b(), self.fastxf_eps, residual)
        return fx_rms_norm(
            x,
            self._w(),
            self.fastxf_eps,
            residual,
            unit_offset=self.fastxf_kind == "rms_norm_unit_offset",
            out_dtype=self._out_dtype(x),
        )

    def extra_repr(self):
        w = self._w()
        shape = tuple(w.shape) if w is not None else "no weight"
        return f"fastxf {self.fastxf_kind}, {shape}, eps={self.fastxf_eps}"


def _eps_of(module: nn.Module):
    for name in EPS_NAMES:
        v = getattr(module, name, None)
        if isinstance(v, float) or (isinstance(v, int) and not isinstance(v, bool)):
            return float(v)
    return None


def norm_candidates(module: nn.Module) -> tuple[list[str], str | None]:
    """(kinds to try, reason when the module cannot be a supported norm). Structure only."""
    if any(True for _ in module.children()):
        return [], "has submodules"
    if hasattr(module, "_hf_hook"):  # accelerate dispatch/offload hooks live on the module object
        return [], "has an accelerate hook (device_map dispatch or offload)"
    if any(True for _ in module.buffers(recurse=False)):
        return [], "has buffers"
    params = dict(module.named_parameters(recurse=False))
    if not set(params) <= {"weight", "bias"}:
        return [], f"parameters {sorted(params)}"
    for p in params.values():
        if p.dim() != 1:
            return [], "parameters are not 1-D"
        if p.device.type == "meta":
            return [], "parameters on the meta device"
    if "bias" in params and "weight" in params and params["bias"].shape != params["weight"].shape:
        return [], "weight and bias shapes differ"
    if isinstance(module, nn.LayerNorm):
        if len(module.normalized_shape) != 1:
            return [], f"normalized_shape {tuple(module.normalized_shape)} spans more than the last dim"
        return ["layer_norm"], None
    if isinstance(module, getattr(nn, "RMSNorm", ())) and getattr(module, "eps", None) is None:
        return [], "torch RMSNorm with eps=None (dtype-dependent eps)"
    if _eps_of(module) is None and not fx_norm_eps.may_probe(module):
        return [], "no eps attribute"
    if "bias" in params:
        return (["layer_norm"] if "weight" in params else []), (None if "weight" in params else "bias without weight")
    return ["rms_norm", "rms_norm_unit_offset", "layer_norm"], None


def _probe_dtype(module):
    for p in module.parameters(recurse=False):
        return p.dtype, p.device
    return torch.float32, torch.device("cpu")


def probe(module: nn.Module, kind: str, eps: float) -> str | None:
    """None when FastxfNorm(kind) reproduces module.forward on a random probe, else why not."""
    dtype, device = _probe_dtype(module)
    if dtype not in PROBE_TOL:
        return f"parameter dtype {dtype}"
    if device.type == "cuda":
        from .. import _extension

        if not _extension.cuda_kernels_built():
            return "no fastxf CUDA kernels in this build"
    size = None
    for p in module.parameters(recurse=False):
        size = p.shape[0]
    if size is None:
        size = int(getattr(module, "normalized_shape", (0,))[0] if hasattr(module, "normalized_shape") else 0) or 64
    gen = torch.Generator(device="cpu").manual_seed(1234)
    twin = copy.deepcopy(module)
    with torch.no_grad():
        for p in twin.parameters(recurse=False):
            p.copy_((torch.randn(p.shape, generator=gen) * 0.5 + 0.3).to(p.dtype))
        x = (torch.randn(2, 3, size, generator=gen) * 2 + 0.5).to(device=device, dtype=dtype)
        try:
            want = twin(x)
        except Exception as e:  # forward needs other inputs: not a plain norm
            return f"original forward failed on a probe ({type(e).__name__})"
        if not isinstance(want, torch.Tensor) or want.shape != x.shape:
            return "original forward does not return a tensor of the input's shape"
        try:
            got = FastxfNorm(twin, kind, eps)(x)
        except Exception as e:
            return f"fastxf {kind} failed on the probe ({type(e).__name__}: {e})"
        if got.dtype != want.dtype:
            return f"output dtype {got.dtype} != {want.dtype}"
        atol, rtol = PROBE_TOL[dtype]
        err = (got.float() - want.float()).abs()
        if not bool((err <= atol + rtol * want.float().abs()).all()):
            return f"probe mismatch (max abs err {err.max().item():.3g})"
    return None


def replacement_for(module: nn.Module) -> tuple[FastxfNorm | None, str]:
    """(FastxfNorm, description) if the module is a norm fastxf computes exactly, else (None, why not)."""
    kinds, why = norm_candidates(module)
    if not kinds:
        return None, why or "no candidate"
    eps = float(module.eps) if isinstance(module, nn.LayerNorm) else _eps_of(module)
    reasons = []
    for kind in kinds:
        if eps is None:  # eps not stored on the module (OLMo v1): found by probing, or the module stays
            found, why = fx_norm_eps.find_eps(module, kind, FastxfNorm)
            if found is None:
                reasons.append(f"{kind}: {why}")
                continue
            r = probe(module, kind, found)
            if r is None:
                rep = FastxfNorm(module, kind, found)
                rep.fastxf_eps_probed = True  # explain() says so
                return rep, f"{kind} (eps {found:g} found by probing)"
            reasons.append(f"{kind}: {r}")
            continue
        r = probe(module, kind, eps)
        if r is None:
            return FastxfNorm(module, kind, eps), kind
        reasons.append(f"{kind}: {r}")
    return None, "; ".join(reasons)


def looks_like_norm(module: nn.Module) -> bool:
    """Worth reporting when left alone: a norm-shaped leaf (eps attribute or a LayerNorm)."""
    if isinstance(module, (nn.LayerNorm, FastxfNorm)) or isinstance(module, getattr(nn, "RMSNorm", ())):
        return True
    if any(True for _ in module.children()):
        return False
    return _eps_of(module) is not None or fx_norm_eps.may_probe(module)
