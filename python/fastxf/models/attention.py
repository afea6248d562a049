"""The "fastxf" attention implementation for Hugging Face transformers.

Two entries, registered under the same name:

- `AttentionMaskInterface["fastxf"]` (`fastxf_mask`): instead of a dense
  (B, 1, Sq, Sk) mask it returns a `FastxfMask`, a compact description: causal
  or not, sliding window, where query 0 sits among the keys (`q_offset`, a
  tensor for static caches so nothing syncs), and a (B, Sk) bool key padding
  mask (None when the caller gave no attention mask). Packed sequences (reset
  position_ids) become a `PackedSequences` for the varlen op (models/unpad.py).
  Mask patterns it cannot describe exactly (chunked attention, custom or/and
  mask functions, bidirectional sliding windows) are marked inexact; the dense
  mask is then built lazily, only for the call that falls back.
- `AttentionInterface["fastxf"]` (`fastxf_attention`): maps one attention call
  onto `fastxf.ops.attention` (GQA handled by the kernel, no repeat_kv), or
  falls back to the model's own eager attention (or sdpa) with the exact dense
  mask HF would have built, whenever fastxf cannot give the same answer:
  `output_attentions`, position biases / attention sinks / other unknown extra
  inputs, dropout in training, a custom dense mask, dtypes or shapes the kernel
  does not take.

Registering a name in these registries adds an option; it changes no class and
no other model. A model uses it only after `set_attn_implementation("fastxf")`.
"""

from __future__ import annotations

import collections
import sys
from typing import Any

import torch
import torch.utils._pytree

from .. import _extension
from . import unpad as fx_unpad
from . import _dispatch

NAME = "fastxf"

# Per-process call counters: "fastxf" for kernel calls, "fallback:<reason>" for
# calls handed back to HF. Tests use them to prove the kernel really ran;
# explain() reports the fallbacks seen. Not updated while torch.compile traces.
CALLS: collections.Counter = collections.Counter()

# Extra keyword arguments that reach attention functions without changing what
# attention computes (bookkeeping for caches, outputs and other backends).
_HARMLESS_KWARGS = frozenset(
    {
        "position_ids",
        "cache_position",
        "use_cache",
        "output_hidden_states",
        "return_dict",
        "layer_idx",
        "cache",
        "past_key_values",
        "past_key_value",
        "position_embeddings",
        "encoder_hidden_states",
        "token_type_ids",
        "output_router_logits",
        "logits_to_keep",
        "is_first_iteration",
        "kwargs",
        # Loss bookkeeping that Trainer / the loss functions thread through the
        # model's **kwargs (it reaches every attention call in training).
        "num_items_in_batch",
        "shift_labels",
    }
)
# Handled by fastxf_attention itself.
_HANDLED_KWARGS = frozenset({"softcap", "sliding_window", "is_causal", "output_attentions"})
_IGNORED_KWARGS = _HARMLESS_KWARGS | _HANDLED_KWARGS


_is_compiling = torch.compiler.is_compiling


def _count(key: str) -> None:
    if not _is_compiling():
        CALLS[key] += 1


_MASK_UTILS = None


def _mask_utils():
    global _MASK_UTILS
    if _MASK_UTILS is None:  # imported on first use: transformers is optional for fastxf.ops
        from transformers import masking_utils

        _MASK_UTILS = masking_utils
    return _MASK_UTILS


def _closure_cells(fn, factory: str) -> dict | None:
    """The captured variables of a closure built by masking_utils.<factory>, else None."""
    code = getattr(fn, "__code__", None)
    if code is None or not getattr(fn, "__qualname__", "").startswith(factory + ".") or fn.__closure__ is None:
        return None
    return dict(zip(code.co_freevars, (c.cell_contents for c in fn.__closure__)))


def _and_parts(fn) -> tuple | None:
    """The functions combined by masking_utils.and_masks, or None if fn is not one."""
    parts = (_closure_cells(fn, "and_masks") or {}).get("mask_functions")
    return tuple(parts) if isinstance(parts, (tuple, list)) else None


def _sliding_window_of(fn) -> int | None:
    """The window of a masking_utils.sliding_window_overlay(w) function, else None."""
    w = (_closure_cells(fn, "sliding_window_overlay") or {}).get("sliding_window")
    return int(w) if isinstance(w, int) and w > 0 else None


def describe_mask_function(mask_function) -> tuple[bool, int] | None:
    """(causal, window) for the mask patterns the kernel computes exactly, else None.

    Recognised: masking_utils.causal_mask_function, bidirectional_mask_function
    and and_masks(sliding_window_overlay(w), causal_mask_function) (what
    sliding_window_causal_mask_function builds). Everything else (chunked,
    packed, block-wise, user or/and functions) is not, and falls back.
    """
    mu = _mask_utils()
    if mask_function is mu.causal_mask_function:
        return True, 0
    if mask_function is mu.bidirectional_mask_function:
        return False, 0
    parts = _and_parts(mask_function)
    if parts is not None and len(parts) == 2:
        for a, b in (parts, parts[::-1]):
            w = _sliding_window_of(a)
            if w is not None and b is mu.causal_mask_function:
                return True, w
    return None


def _captures_tensor(fn, depth: int = 0) -> bool:
    """Whether a mask function (or a function it combines) holds a tensor in its closure."""
    if depth > 8 or fn is None:
        return False
    cells = [c.cell_contents for c in (getattr(fn, "__closure__", None) or ()) if c.cell_contents is not None]
    for v in cells:
        items = v if isinstance(v, (list, tuple)) else [v]
        for x in items:
            if isinstance(x, torch.Tensor) or (callable(x) and _captures_tensor(x, depth + 1)):
                return True
    return False


class FastxfMask:
    """Compact attention mask handed from `fastxf_mask` to `fastxf_attention`.

    Key index j of the keys the attention function receives is absolute
    position j + kv_offset; query i is at absolute position i + q_offset (HF's
    convention). The kernel gets `q_offset_keys` = q_offset - kv_offset, the key
    index of query 0, which is also what its causal rule and window use.

    `ndim` / `shape` make it look like an already-prepared 4-D mask to
    masking_utils when generate() builds masks ahead of the forward (static
    caches): it is then passed through unchanged.
    """

    ndim = 4

    def __init__(self, hf_args: dict, key_padding, q_offset_keys, causal: bool, window: int, reason: str | None):
        self.hf_args = hf_args
        self.key_padding = key_padding
        self.q_offset_keys = q_offset_keys
        self.causal = causal
        self.window = window
        self.reason = reason  # None when the description is exact

    @property
    def shape(self):
        a = self.hf_args
        return (a["batch_size"], 1, a["q_length"], a["kv_length"])

    def dense_bool(self, like: torch.Tensor | None = None) -> torch.Tensor:
        """The (B, 1, Sq, Sk) bool mask HF's sdpa path would use (True = attend).

        `like`: the query of the call that needs it. Without key padding nothing in
        the mask records which micro-batch or device it is used on, so the batch
        size and device are taken from the query (with key padding they match it)."""
        args = dict(self.hf_args)
        if like is not None:
            if like.shape[0] != args["batch_size"] and _captures_tensor(args["mask_function"]):
                # A micro-batch (fastxf.placement) of a mask whose pattern comes from
                # per-sequence tensors (e.g. packed sequences): its rows are not ours.
                raise ValueError(
                    f"fastxf attention: the mask function of this {args['batch_size']}-row batch reads per-sequence "
                    f"tensors and cannot be applied to a {like.shape[0]}-row micro-batch; use micro_batches=1"
                )
            args.update(batch_size=like.shape[0], device=like.device)
        args.update(allow_is_causal_skip=False, allow_is_bidirectional_skip=False)
        mask = _mask_utils().sdpa_mask(**args)
        if mask is None:  # cannot happen with both skips off; keep the contract anyway
            a = args
            mask = torch.ones(a["batch_size"], 1, a["q_length"], a["kv_length"], dtype=torch.bool, device=a["device"])
        return mask

    def dense_additive(self, dtype: torch.dtype, like: torch.Tensor | None = None) -> torch.Tensor:
        """The additive float mask HF's eager path would use (0 or finfo.min)."""
        mask = self.dense_bool(like)
        return torch.where(mask, torch.zeros((), device=mask.device, dtype=dtype), torch.finfo(dtype).min)

    def __repr__(self):
        return (
            f"FastxfMask(causal={self.causal}, window={self.window}, padding={self.key_padding is not None}, "
            f"exact={self.reason is None})"
        )


# FastxfMask is a pytree node: its tensors (key padding, query offset, the 2-D
# attention mask kept for the dense fallback) are its children, everything else
# the node's context. Whatever maps tensors over a layer's inputs with pytree
# (fastxf.placement moving them to a stage's device, or slicing them into
# micro-batches) therefore rebuilds the mask around the mapped tensors, and the
# rebuilt mask's batch size and device follow its tensors.
_MASK_HF_CHILDREN = ("attention_mask", "q_offset")


def _mask_flatten(mask: FastxfMask):
    children = [mask.key_padding, mask.q_offset_keys] + [mask.hf_args.get(k) for k in _MASK_HF_CHILDREN]
    rest = {k: v for k, v in mask.hf_args.items() if k not in _MASK_HF_CHILDREN}
    return children, (rest, mask.causal, mask.window, mask.reason)


def _mask_unflatten(children, context) -> FastxfMask:
    key_padding, q_offset_keys, attention_mask, q_offset = children
    rest, causal, window, reason = context
    hf_args = dict(rest, attention_mask=attention_mask, q_offset=q_offset)
    batch_major = [t for t in (key_padding, attention_mask) if isinstance(t, torch.Tensor) and t.dim() == 2]
    if batch_major:
        hf_args["batch_size"] = batch_major[0].shape[0]
    tensors = [t for t in children if isinstance(t, torch.Tensor)]
    if tensors:
        hf_args["device"] = tensors[0].device
    return FastxfMask(hf_args, key_padding, q_offset_keys, causal, window, reason)


torch.utils._pytree.register_pytree_node(
    FastxfMask, _mask_flatten, _mask_unflatten, serialized_type_name="fastxf.models.attention.FastxfMask"
)


def fastxf_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset=0,
    kv_offset: int = 0,
    mask_function=None,
    attention_mask: torch.Tensor | None = None,
    **kwargs,
) -> FastxfMask:
    """AttentionMaskInterface entry: a FastxfMask instead of a dense 4-D mask."""
    if isinstance(attention_mask, FastxfMask):  # prepared ahead of the forward by generate()
        return attention_mask
    mu = _mask_utils()
    if mask_function is None:
        mask_function = mu.causal_mask_function
    device = kwargs.get("device", attention_mask.device if attention_mask is not None else "cpu")
    hf_args = dict(
        batch_size=batch_size,
        q_length=q_length,
        kv_length=kv_length,
        q_offset=q_offset,
        kv_offset=kv_offset,
        mask_function=mask_function,
        attention_mask=attention_mask,
        use_vmap=kwargs.get("use_vmap", False),
        device=device,
    )
    if attention_mask is None:  # packed sequences from reset position_ids: the varlen op's job
        packed = fx_unpad.packed_from_mask_function(mask_function, batch_size, q_length, kv_length)
        if packed is not None:
            return packed
    described = describe_mask_function(mask_function)
    reason = None
    causal, window = (False, 0) if described is None else described
    if described is None:
        reason = "mask pattern not expressible by the kernel (chunked/packed/custom mask function)"
    elif kwargs.get("local_size") not in (None, 0) and window == 0:
        reason = "local attention size without a recognised sliding window"

    key_padding = None
    if attention_mask is not None and reason is None:
        if attention_mask.dim() != 2:
            reason = f"{attention_mask.dim()}-D attention_mask given to the mask interface"
        else:
            padding = mu.prepare_padding_mask(attention_mask, kv_length, kv_offset)
            key_padding = padding[:, kv_offset : kv_offset + kv_length].to(device=device, dtype=torch.bool)
            if key_padding.shape[0] != batch_size:
                key_padding = key_padding.expand(batch_size, -1)
            key_padding = key_padding.contiguous()

    # Key index of query 0. None = the kernel's default, bottom-right alignment
    # (kv_length - q_length), which covers dynamic caches and no cache without
    # building a tensor; static caches give a device tensor (no host sync).
    # int32, the kernels' type: an int64 offset would be range-checked by the op
    # (a host sync on CUDA), and cache positions always fit.
    q_offset_keys = None
    if isinstance(q_offset, torch.Tensor):
        q_offset_keys = (q_offset - kv_offset).reshape(()).to(device=device, dtype=torch.int32)
    elif int(q_offset) - int(kv_offset) != kv_length - q_length:
        q_offset_keys = torch.tensor(int(q_offset) - int(kv_offset), dtype=torch.int32, device=device)
    return FastxfMask(hf_args, key_padding, q_offset_keys, causal, window, reason)


def _hf_fallback(module, query, key, value, mask, *, prefer_eager: bool, **kwargs):
    """Run HF's own attention for this call: the model's eager function (exactly what
    attn_implementation="eager" computes, and the only one returning weights), else sdpa."""
    eager = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    if isinstance(mask, FastxfMask):
        if eager is not None and prefer_eager:
            dense = mask.dense_additive(query.dtype, like=query)
        else:
            dense = mask.dense_bool(like=query)
    else:
        dense = mask
    if eager is not None and (prefer_eager or kwargs.get("softcap") is not None):
        return eager(module, query, key, value, dense, **kwargs)
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(module, query, key, value, dense, **kwargs)


_COLLECTOR = None  # transformers' output-capture context var, looked up once


def _wants_attention_weights(kwargs) -> bool:
    if kwargs.get("output_attentions"):
        return True
    global _COLLECTOR
    if _COLLECTOR is None:
        try:  # transformers 5.x records attention weights with hooks when asked to
            from transformers.utils.output_capturing import _active_collector as collector
        except ImportError:
            collector = False
        _COLLECTOR = collector
    if _COLLECTOR:
        collected = _COLLECTOR.get()
        if collected and ("attentions" in collected or "cross_attentions" in collected):
            return True
    return False


def _kernels_for(device: torch.device) -> bool:
    return device.type == "cpu" or (device.type == "cuda" and _extension.cuda_kernels_built())


def _basic_reason(module, query, key, value, dropout, kwargs) -> str | None:
    """Why fastxf cannot run this call whatever the mask, else None."""
    if _wants_attention_weights(kwargs):
        return "output_attentions"
    if dropout and module.training:
        return "dropout in training"
    if query.dtype not in (torch.float32, torch.float16, torch.bfloat16) or key.dtype != query.dtype:
        return f"dtype {query.dtype}"
    if value.shape != key.shape or query.shape[-1] != key.shape[-1] or query.shape[1] % key.shape[1] != 0:
        return "q/k/v shapes (different value head dim or head counts)"
    if not _kernels_for(query.device):
        return f"no fastxf kernels for {query.device}"
    return None


def fastxf_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
):
    """AttentionInterface entry. query (B, Hq, Sq, D), key / value (B, Hkv, Sk, D)
    -> (output (B, Sq, Hq, D), None), or HF's own result when falling back.
    Packed sequences (fastxf's padding-free encoders, transformers' cu_seq_lens_*
    kwargs or reset position_ids) go to the varlen op (models/unpad.py)."""
    packed = attention_mask if isinstance(attention_mask, fx_unpad.PackedSequences) else None
    if packed is None:
        packed = fx_unpad.packed_from_kwargs(module, attention_mask, kwargs)
    reason = _basic_reason(module, query, key, value, dropout, kwargs)
    if packed is not None:
        return fx_unpad.packed_attention(module, query, key, value, packed, dropout, scaling, kwargs, reason)
    if reason is None and attention_mask is not None and not isinstance(attention_mask, FastxfMask):
        reason = "custom dense attention mask"
    if reason is None and isinstance(attention_mask, FastxfMask):
        reason = attention_mask.reason
    if reason is None:
        for k, v in kwargs.items():
            if v is None or v is False or k in _IGNORED_KWARGS:
                continue
            reason = f"extra attention input {k!r}"
            break
    if reason is not None:
        _count("fallback:" + reason)
        return _hf_fallback(
            module, query, key, value, attention_mask, prefer_eager=True, dropout=dropout, scaling=scaling, **kwargs
        )

    softcap = kwargs.get("softcap") or 0.0
    if isinstance(attention_mask, FastxfMask):
        causal, window = attention_mask.causal, attention_mask.window
        key_padding, q_offset = attention_mask.key_padding, attention_mask.q_offset_keys
        if key_padding is not None and key_padding.shape[1] != key.shape[2]:
            if key_padding.shape[1] < key.shape[2]:
                _count("fallback:mask shorter than keys")
                return _hf_fallback(
                    module, query, key, value, attention_mask, prefer_eager=True, dropout=dropout, scaling=scaling, **kwargs
                )
            key_padding = key_padding[:, : key.shape[2]]  # like eager's mask[..., :Sk]
    else:
        # No mask: mirror HF's sdpa path, which then relies on is_causal
        # (top-left aligned: the only such case is prefill into an empty static cache).
        is_causal = kwargs.get("is_causal")
        is_causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
        causal = bool(is_causal) and query.shape[2] > 1
        window, key_padding = 0, None
        q_offset = None
        if causal and key.shape[2] > query.shape[2]:
            key, value = key[:, :, : query.shape[2]], value[:, :, : query.shape[2]]
    if query.stride(-1) != 1:
        query = query.contiguous()
    if key.stride(-1) != 1:
        key = key.contiguous()
    if value.stride(-1) != 1:
        value = value.contiguous()
    if not _is_compiling():  # _count("fastxf"), inlined: this runs once per layer per step
        CALLS["fastxf"] += 1
    # The op directly (see _dispatch): everything the Python wrapper would
    # check is either checked above or repeated by the C++ op.
    out = _dispatch.op("attention")(
        query, key, value, key_padding, q_offset, causal, scaling, int(window), float(softcap), None
    )
    # The op returns a (B, H, Sq, D) view of a contiguous (B, Sq, H, D) buffer:
    # HF's layout is that buffer, so this transpose is free.
    return out.transpose(1, 2), None


def register() -> None:
    """Registers "fastxf" in transformers' attention and mask registries (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, fastxf_attention)
    AttentionMaskInterface.register(NAME, fastxf_mask)
