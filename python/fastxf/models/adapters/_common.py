"""Shared pieces of the attention adapters: reading HF's dense masks back into
the kernel's compact form, and the instance-scoped forward swap.

Models whose attention module does not call transformers' AttentionInterface
still build their masks with masking_utils (eager: additive 0 / finfo.min;
sdpa: bool, True = attend). The adapters leave that untouched (so the original
forward, used for every fallback, sees exactly what it always saw) and
recover the kernel's description from the dense mask instead: a (B, Sk) key
padding mask plus a causal rule with the query offset. The description is
rebuilt densely and compared with the mask, so a mask it cannot express
(a custom 4-D mask, holes the kernel cannot place) is detected and that call
runs the original forward. All layers of one forward share one mask tensor:
the analysis (a few host syncs) is cached on its identity and version, so it
runs once per forward, not once per layer. Under torch.compile it runs eagerly
(one graph break per layer, where precheck calls it).
"""

from __future__ import annotations

import types
import weakref
from dataclasses import dataclass

import torch

from ...ops import attention as fx_attention_op
from .. import attention as fx_attention

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class Compact:
    """What the kernel needs to reproduce a mask exactly."""

    causal: bool
    key_padding: torch.Tensor | None  # (B, Sk) bool, True = attend; None = no padding
    q_offset: torch.Tensor | None  # key index of query 0 (long, ()); None = bottom-right (Sk - Sq)
    contiguous: bool  # every row's attended keys form one contiguous run (no holes)
    rows: int = 0  # the mask's query rows: 1 for a broadcast (B, 1, 1, Sk) mask

    def causal_for(self, q_len: int) -> bool:
        """Causal rule for a call with q_len queries. A one-row mask carries no causal
        rule; with one query (decode) bottom-right causal sees the same keys."""
        return self.causal or (self.rows == 1 and q_len == 1)


def count(key: str) -> None:
    """Same counters as the AttentionInterface path: tests and explain() read them."""
    fx_attention._count(key)


def visible_from_additive(mask: torch.Tensor) -> torch.Tensor | None:
    """Bool visibility of an eager additive mask (0 = attend, finfo.min = masked), or
    None when it holds other values (a bias the kernel would drop)."""
    if mask.dtype == torch.bool:
        return mask
    masked = mask <= torch.finfo(mask.dtype).min / 2
    if not bool(((mask == 0) | masked).all()):
        return None
    return ~masked


_LAST: list = [None]  # (weakref to mask, version, key, result): one entry is enough (see module doc)


# Eager even under torch.compile: the analysis reads the mask on the host (its
# verdict picks the kernel or HF's path), which dynamo cannot trace. Traced, it
# broke the graph at every sync inside it; disabled, the graph breaks once, at
# the call (torch._dynamo.explain on a 2-layer BLOOM: 16 breaks -> 7, the rest
# being the enclosing frames' resumptions). Results are unchanged.
@torch.compiler.disable
def analyse(mask: torch.Tensor, to_visible, key: str) -> Compact | str:
    """Compact form of a (B, 1, Sq, Sk) mask, or why there is none. `to_visible`
    maps the mask to bool visibility (or None if it is not a pure mask); `key`
    names that mapping for the cache."""
    last = _LAST[0]
    if last is not None and last[0]() is mask and last[1] == mask._version and last[2] == key:
        return last[3]
    result = _analyse(mask, to_visible)
    try:
        _LAST[0] = (weakref.ref(mask), mask._version, key, result)
    except TypeError:  # not weak-referenceable (a tensor subclass): just do not cache
        _LAST[0] = None
    return result


def _analyse(mask, to_visible) -> Compact | str:
    vis = to_visible(mask)
    if vis is None:
        return "additive mask with values other than 0 / finfo.min (a bias)"
    if vis.dim() != 4:
        return f"{vis.dim()}-D mask"
    if vis.shape[1] != 1:
        return f"mask of shape {tuple(mask.shape)} (per-head masks)"
    vis = vis[:, 0]
    b, sq, sk = vis.shape
    key_padding = vis.any(dim=1)  # a key no query sees is padding (or an unfilled static-cache slot)
    if sq == 1:  # (B, 1, 1, Sk), BERT's extended mask: key padding only, whatever the query count
        all_keys = bool(key_padding.all())
        return Compact(False, None if all_keys else key_padding.contiguous(), None, _one_run(key_padding), 1)
    i = torch.arange(sq, device=vis.device)[:, None]
    j = torch.arange(sk, device=vis.device)[None, :]
    # Candidates: bottom-right causal (no cache / dynamic cache), causal with the
    # offset the last query shows (static cache), not causal (no causal rule).
    last_seen = torch.where(vis[:, -1], j.expand(b, sk), -1).amax().item()
    candidates = [(True, sk - sq)]
    if last_seen >= 0 and last_seen - (sq - 1) != sk - sq:
        candidates.append((True, last_seen - (sq - 1)))
    candidates.append((False, 0))
    for causal, off in candidates:
        rule = (j <= i + off) if causal else torch.ones(sq, sk, dtype=torch.bool, device=vis.device)
        if torch.equal(key_padding[:, None, :] & rule, vis):
            contiguous = _one_run(key_padding)
            all_keys = bool(key_padding.all())
            q_offset = None
            if causal and off != sk - sq:
                q_offset = torch.tensor(off, dtype=torch.long, device=vis.device)
            return Compact(causal, None if all_keys else key_padding.contiguous(), q_offset, contiguous, sq)
    return "mask pattern is not causal / bidirectional + key padding (custom 4-D mask)"


def _one_run(key_padding: torch.Tensor) -> bool:
    """Whether each sequence's attended keys form one contiguous run. Models whose
    ALiBi positions count only real tokens (BLOOM, Falcon) need that."""
    kp = key_padding.long()
    runs = (kp[:, 1:] > kp[:, :-1]).sum(1) + kp[:, 0]
    return bool((runs <= 1).all())


def _adapted_forward(self, *args, **kwargs):
    # A module-level function bound with MethodType (not a closure): deepcopy and
    # pickle then rebind it to the copied module instead of the original one.
    return self.__dict__["_fastxf_adapter"](self, type(self).forward.__get__(self), *args, **kwargs)


def install_forward(module: torch.nn.Module, forward) -> None:
    """Binds `forward(module, original_forward, *args, **kwargs)` on this instance only."""
    module.__dict__["_fastxf_adapter"] = forward
    module.forward = types.MethodType(_adapted_forward, module)  # instance attribute: shadows the class forward


def remove_forward(module: torch.nn.Module) -> None:
    module.__dict__.pop("forward", None)
    module.__dict__.pop("_fastxf_adapter", None)


def has_instance_forward(module: torch.nn.Module) -> bool:
    return "forward" in module.__dict__ or hasattr(module, "_hf_hook")


def kernels_for(device: torch.device) -> bool:
    return fx_attention._kernels_for(device)


def plain_call_reason(module, query, key, training_dropout: float) -> str | None:
    """Reasons shared by all adapters for handing a call back to HF."""
    if training_dropout and module.training:
        return "dropout in training"
    if query.dtype not in DTYPES or key.dtype != query.dtype:
        return f"dtype {query.dtype}"
    if not kernels_for(query.device):
        return f"no fastxf kernels for {query.device}"
    return None


def unknown_kwargs(kwargs: dict, allowed=frozenset()) -> str | None:
    for k, v in kwargs.items():
        if k in allowed or v is None or v is False:
            continue
        return f"extra attention input {k!r}"
    return None


def precheck(
    module,
    hidden_states,
    dropout_p: float,
    kwargs: dict,
    mask,
    *,
    output_attentions=False,
    refuse: str | None = None,
    allowed=frozenset(),
    to_visible=visible_from_additive,
    key: str = "additive",
) -> tuple[str | None, Compact | None]:
    """The checks every adapter runs before computing anything, in this order:
    attention weights asked for, the family's own reason `refuse` (cross-attention,
    a cache the kernel cannot use), unknown inputs, plain_call_reason, the mask.

    Returns (why, compact): `why` is the reason to hand the call back to HF, else
    None; `compact` is the mask's compact form (None without a mask). `to_visible`
    and `key` as for analyse(): the default reads an additive (or bool, True =
    attend) mask."""
    if output_attentions:
        return "output_attentions", None
    if refuse is not None:
        return refuse, None
    why = unknown_kwargs(kwargs, allowed) or plain_call_reason(module, hidden_states, hidden_states, dropout_p)
    if why is not None or mask is None:
        return why, None
    compact = analyse(mask, to_visible, key)
    if isinstance(compact, str):
        return compact, None
    return None, compact


def buffer_mismatch(compact: Compact | None) -> str | None:
    """Layers with their own bottom-right causal buffer (GPT-Neo, Bark) combine it
    with the mask; a mask whose causal rule is offset (static cache) would combine
    differently, so such calls go back to HF."""
    if compact is not None and compact.q_offset is not None:
        return "causal mask not bottom-right aligned (static cache) while the layer's buffer is"
    return None


def split_heads(t: torch.Tensor, head_dim: int) -> torch.Tensor:
    """(B, S, H * D) projection output -> (B, H, S, D) view, the layout the kernel takes."""
    return t.unflatten(-1, (-1, head_dim)).transpose(1, 2)


def decoder_causal(compact: Compact | None, q_len: int) -> bool:
    """Causal rule for a decoder that attends causally when given no mask (HF's
    causal buffer or its ALiBi convention): True without a mask, else the
    mask's rule for q_len queries."""
    return True if compact is None else compact.causal_for(q_len)


def attend(query, key, value, compact: Compact | None, *, family: str, mask, causal: bool, scale: float, **extra):
    """Counts the call and runs fastxf's attention on (B, H, S, D) q/k/v with the
    key padding and query offset of `compact` (None: no mask); `extra` are
    further kernel arguments (window, alibi_slopes). Returns the context as
    (B, Sq, H * D), ready for the output projection. `mask` (the dense mask the
    call received, or None) is only checked against the cached key length."""
    check_key_length(mask, key, family)
    count("fastxf")
    out = fx_attention_op(
        contiguous_last(query),
        contiguous_last(key),
        contiguous_last(value),
        causal=causal,
        scale=scale,
        key_padding_mask=None if compact is None else compact.key_padding,
        q_offset=None if compact is None else compact.q_offset,
        **extra,
    )
    batch, heads, q_len, head_dim = out.shape
    return out.transpose(1, 2).reshape(batch, q_len, heads * head_dim)


def no_check(module) -> str | None:
    """check() of families that take every module of their classes."""
    return None


def no_constants(module) -> dict:
    """prepare() of families that need no per-module constants."""
    return {}


def slopes_from_build_alibi(build_alibi_tensor, num_heads: int, device) -> torch.Tensor:
    """ALiBi slopes read back from a model's own build_alibi_tensor(mask, heads, dtype):
    on a one-sequence mask of two real tokens it returns slope * [0, 1] per head."""
    ones = torch.ones(1, 2, dtype=torch.long, device=device)
    alibi = build_alibi_tensor(ones, num_heads, torch.float32)
    return alibi.reshape(num_heads, 2)[:, 1].to(torch.float32).contiguous()


def check_key_length(mask, key, family: str) -> None:
    """HF's own attention fails too when the mask and the cached keys disagree in
    length; the cache has already been updated, so rerunning HF is not safe."""
    if mask is not None and mask.shape[-1] != key.shape[2]:
        raise RuntimeError(
            f"fastxf {family} adapter: the attention mask covers {mask.shape[-1]} keys but the cache returned "
            f"{key.shape[2]}"
        )


def contiguous_last(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


_ALIBI_OK: dict = {}  # (device, dtype) -> None or why not


def alibi_kernel_check(module: torch.nn.Module) -> str | None:
    """None when fastxf's attention takes alibi_slopes on this module's device and
    dtype (a tiny probe against the float64 reference, once per device/dtype),
    else why not; e.g. the CUDA kernels do not take ALiBi yet. Used at optimize
    time so such modules stay on HF instead of failing at run time."""
    from ...ops import reference

    p = next(module.parameters(), None)
    if p is None:
        return "module has no parameters"
    key = (str(p.device), p.dtype)
    if key not in _ALIBI_OK:
        gen = torch.Generator(device="cpu").manual_seed(11)
        q, k, v = (torch.randn(1, 2, 3, 8, generator=gen, dtype=torch.float64) for _ in range(3))
        slopes = torch.tensor([0.5, 0.25])
        try:
            got = fx_attention_op(*(t.to(p.device, p.dtype) for t in (q, k, v)), causal=True,
                                  alibi_slopes=slopes.to(p.device))
            want = reference.attention(q, k, v, causal=True, alibi_slopes=slopes.double())
            tol = 1e-4 if p.dtype == torch.float32 else 3e-2
            ok = torch.allclose(got.double().cpu(), want, atol=tol, rtol=tol)
            _ALIBI_OK[key] = None if ok else f"fastxf ALiBi attention probe mismatch on {p.device} {p.dtype}"
        except Exception as e:
            _ALIBI_OK[key] = f"fastxf attention does not take ALiBi on {p.device} {p.dtype}: {e}"
    return _ALIBI_OK[key]
