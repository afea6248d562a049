"""Padding-free encoders and packed sequences on fastxf.ops.attention_varlen.

Two things live here:

1. `PackedSequences`, what the "fastxf" attention function receives instead of a
   mask when the rows of its (B, S) batch are packed sequences, and
   `packed_attention`, which runs such a call on the varlen op (or, when fastxf
   cannot, on HF's eager attention with the exact block-diagonal dense mask).
   Three producers: the encoder hooks below; transformers' own packed inputs
   (`cu_seq_lens_q/k` + `max_length_q/k` keyword arguments, as
   DataCollatorWithFlattening(return_flash_attn_kwargs=True) gives them), and
   reset `position_ids`, which masking_utils turns into a packed-sequence mask
   function that `fastxf_mask` recognises (`packed_from_mask_function`).

2. `Unpadder`, the padding-free encoder path of `fastxf.optimize`. BERT-family
   encoders (and BART's encoder) run their layers as
   `layer(hidden_states, attention_mask, ...)` in a loop. A forward pre-hook on
   the first layer gathers the real tokens of the padded (B, S, H) batch once
   into (1, total, H) and replaces the (B, S) padding mask by a
   `PackedSequences`; every layer then runs its projections, FFN and norms on
   real tokens only, unchanged, and its attention on the varlen op; a forward
   hook on the last layer scatters the result back to (B, S, H), with zeros at
   padded positions (HF computes values there that nothing should read; see
   docs). Hooks on this instance's layers only: no class is touched, the state
   dict is unchanged, revert removes the hooks.

   A forward takes the padded path (today's) when: the batch has no padding or
   no real token, the model is in training mode, hidden states or attentions
   are being collected (output_hidden_states / output_attentions), the mask is
   not a plain bidirectional padding mask, torch.compile is tracing (gathering
   has a data-dependent size), or the device has no varlen kernel for the dtype
   (CUDA: float16 / bfloat16 only).

   On a batch without padding the all-True key padding mask is dropped (every
   layer gets the same FastxfMask with key_padding=None), as HF's sdpa path
   drops an all-ones mask: the kernel then takes its unmasked path. Today's CPU
   kernel gains little from it (the all-True mask cost 0-1.5% of the attention
   op at BERT-base shapes, within noise), but it keeps the unpadded batch on the
   same kernel path as HF's and costs one comparison per forward.
"""

from __future__ import annotations

import collections
import sys

import torch

from ..ops.attention_varlen import attention_varlen
from . import _dispatch

# Keyword arguments that carry transformers' packed-sequence description.
PACKED_KWARGS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")

# model_type -> the encoder layer stacks that can run padding-free: (owner class
# name suffix, attribute holding the nn.ModuleList of layers).
ENCODER_STACKS = {
    "bert": ("Encoder", "layer"),
    "roberta": ("Encoder", "layer"),
    "xlm-roberta": ("Encoder", "layer"),
    "electra": ("Encoder", "layer"),
    "distilbert": ("Transformer", "layer"),
    "bart": ("Encoder", "layers"),
    "mbart": ("Encoder", "layers"),
}

# Why some encoders keep the padded path even though they are encoders.
NOT_UNPADDED = {
    "whisper": "the Whisper encoder takes fixed-length audio features and no attention mask: nothing to unpad",
}


class PackedSequences:
    """Stand-in for an attention mask: the B * S rows of the batch are packed
    sequences. Sequence b is rows [cu_seqlens_q[b], cu_seqlens_q[b+1]) of the
    flattened queries and [cu_seqlens_k[b], cu_seqlens_k[b+1]) of the flattened
    keys (int32 offsets, flash_attn_varlen_func's convention)."""

    ndim = 4

    def __init__(self, cu_seqlens_q, cu_seqlens_k, max_seqlen_q: int, max_seqlen_k: int, causal: bool, window: int = 0,
                 valid: bool = False):
        self.cu_seqlens_q = cu_seqlens_q
        self.cu_seqlens_k = cu_seqlens_k
        self.max_seqlen_q = int(max_seqlen_q)
        self.max_seqlen_k = int(max_seqlen_k)
        self.causal = bool(causal)
        self.window = int(window)
        # True when fastxf built the offsets itself (the encoder gather): valid by
        # construction, so every layer's call skips the Python wrapper's argument
        # checks (~0.2 ms a call) and goes to the op, which repeats them in C++.
        # Offsets that come from the user (cu_seq_lens_* kwargs, position_ids)
        # keep the wrapper and its ValueErrors.
        self.valid = bool(valid)

    @property
    def shape(self):
        total = int(self.cu_seqlens_q[-1])
        return (1, 1, total, int(self.cu_seqlens_k[-1]))

    def dense_bool(self, batch: int, q_len: int, k_len: int) -> torch.Tensor:
        """(B, 1, Sq, Sk) bool mask (True = attend) equivalent to the packing, for HF's
        eager / sdpa attention. Exact when no sequence crosses a batch row (always the
        case for fastxf's own packing and for one-row packed batches)."""
        cu_q, cu_k = self.cu_seqlens_q.long(), self.cu_seqlens_k.long()
        dev = cu_q.device
        seq_q = torch.searchsorted(cu_q[1:], torch.arange(batch * q_len, device=dev), right=True)
        seq_k = torch.searchsorted(cu_k[1:], torch.arange(batch * k_len, device=dev), right=True)
        len_q, len_k = cu_q[1:] - cu_q[:-1], cu_k[1:] - cu_k[:-1]
        pos_q = torch.arange(batch * q_len, device=dev) - cu_q[seq_q] + (len_k - len_q)[seq_q]
        pos_k = torch.arange(batch * k_len, device=dev) - cu_k[seq_k]
        seq_q, seq_k, pos_q, pos_k = (t.view(batch, -1) for t in (seq_q, seq_k, pos_q, pos_k))
        ok = seq_q[:, :, None] == seq_k[:, None, :]
        if self.causal:
            ok &= pos_k[:, None, :] <= pos_q[:, :, None]
        if self.window > 0:
            ok &= pos_k[:, None, :] > pos_q[:, :, None] - self.window
        return ok[:, None]

    def __repr__(self):
        n = self.cu_seqlens_q.shape[0] - 1
        return f"PackedSequences({n} sequences, max_len={self.max_seqlen_q}, causal={self.causal}, window={self.window})"


def packed_from_kwargs(module, attention_mask, kwargs) -> PackedSequences | None:
    """transformers' packed inputs (all four cu_seq_lens_* / max_length_* given), else None."""
    vals = [kwargs.get(k) for k in PACKED_KWARGS]
    if any(v is None for v in vals):
        return None
    cu_q, cu_k, max_q, max_k = vals
    from .attention import FastxfMask

    if isinstance(attention_mask, FastxfMask) and attention_mask.key_padding is not None:
        return None  # a padding mask wins over the packed kwargs, as in HF's flash-attention path
    if isinstance(attention_mask, FastxfMask) and attention_mask.reason is None:
        causal, window = attention_mask.causal, attention_mask.window
    else:  # what HF's flash path does: the module's causality and the model's sliding window
        is_causal = kwargs.get("is_causal")
        causal = getattr(module, "is_causal", True) if is_causal is None else bool(is_causal)
        window = kwargs.get("sliding_window") or 0
    return PackedSequences(cu_q.to(torch.int32), cu_k.to(torch.int32), int(max_q), int(max_k), causal, window)


def packed_from_mask_function(mask_function, batch_size: int, q_length: int, kv_length: int):
    """A PackedSequences for masking_utils' packed-sequence mask (built from reset
    position_ids: and_masks(remap_positions_for_packed_sequence(f, ids),
    packed_sequence_mask_function(seq)) with f causal or sliding-window causal),
    else None."""
    from .attention import _and_parts, _closure_cells, describe_mask_function

    parts = _and_parts(mask_function)
    if parts is None or len(parts) != 2 or q_length != kv_length:
        return None
    seq_ids = (_closure_cells(parts[1], "packed_sequence_mask_function") or {}).get("packed_sequence_mask")
    inner = (_closure_cells(parts[0], "remap_positions_for_packed_sequence") or {}).get("mask_function")
    if not isinstance(seq_ids, torch.Tensor) or inner is None:
        return None
    described = describe_mask_function(inner)
    if described is None or seq_ids.shape != (batch_size, q_length):
        return None
    causal, window = described
    # A new sequence starts at every change of id and at every batch row.
    starts = torch.ones_like(seq_ids, dtype=torch.bool)
    starts[:, 1:] = seq_ids[:, 1:] != seq_ids[:, :-1]
    begin = starts.reshape(-1).nonzero().reshape(-1)
    total = torch.tensor([seq_ids.numel()], device=begin.device)
    cu = torch.cat([begin, total]).to(torch.int32)
    max_len = int((cu[1:] - cu[:-1]).max())
    return PackedSequences(cu, cu, max_len, max_len, causal, window)


def packed_attention(module, query, key, value, packed: PackedSequences, dropout, scaling, kwargs, fallback_reason):
    """One attention call over packed rows: query (B, Hq, Sq, D), key / value (B, Hkv, Sk, D),
    B * Sq rows split by `packed` -> (output (B, Sq, Hq, D), None)."""
    from . import attention as fx

    reason = fallback_reason
    if reason is None:
        if query.device.type not in ("cpu", "cuda"):
            reason = f"no varlen kernel for {query.device} yet"
        elif query.device.type == "cuda" and (query.dtype not in (torch.float16, torch.bfloat16) or query.shape[-1] > 256):
            reason = f"{query.dtype}, head_dim {query.shape[-1]} on cuda (the CUDA varlen kernel: float16 / bfloat16, head_dim <= 256)"
        else:
            for k, v in kwargs.items():
                if k in PACKED_KWARGS or k in ("softcap", "sliding_window", "is_causal", "output_attentions"):
                    continue
                if k in fx._HARMLESS_KWARGS or v is None or v is False:
                    continue
                reason = f"extra attention input {k!r}"
                break
    B, Hq, Sq, D = query.shape
    if reason is not None:
        fx._count("fallback:" + reason)
        eager = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
        dense = packed.dense_bool(B, Sq, key.shape[2])
        rest = {k: v for k, v in kwargs.items() if k not in PACKED_KWARGS}
        if eager is not None:
            additive = torch.zeros(dense.shape, dtype=query.dtype, device=query.device)
            additive.masked_fill_(~dense, torch.finfo(query.dtype).min)
            return eager(module, query, key, value, additive, dropout=dropout, scaling=scaling, **rest)
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, dense, dropout=dropout, scaling=scaling, **rest)
    # (B, H, S, D) views of (B, S, H, D) projections flatten to (B * S, H, D) without a copy.
    q = query.transpose(1, 2).reshape(B * Sq, Hq, D)
    k = key.transpose(1, 2).reshape(-1, key.shape[1], D)
    v = value.transpose(1, 2).reshape(-1, value.shape[1], D)
    fx._count("fastxf")  # every fastxf kernel call; the varlen ones are also counted apart
    fx._count("fastxf_varlen")
    softcap = float(kwargs.get("softcap") or 0.0)
    if packed.valid:
        out = _dispatch.op("attention_varlen")(
            q, k, v, packed.cu_seqlens_q, packed.cu_seqlens_k, packed.max_seqlen_q,
            packed.max_seqlen_k, packed.causal, scaling, packed.window, softcap,
        )
    else:
        out = attention_varlen(
            q,
            k,
            v,
            packed.cu_seqlens_q,
            packed.cu_seqlens_k,
            packed.max_seqlen_q,
            packed.max_seqlen_k,
            causal=packed.causal,
            scale=scaling,
            window=packed.window,
            softcap=softcap,
        )
    return out.view(B, Sq, Hq, D), None


# --------------------------------------------------------------------- encoders


def _collecting_outputs() -> bool:
    """True while transformers records hidden states or attentions with hooks."""
    try:
        from transformers.utils.output_capturing import _active_collector
    except ImportError:
        return False
    return bool(_active_collector.get())


class Unpadder:
    """The hooks that run one encoder layer stack padding-free (see the module doc)."""

    def __init__(self, name: str, layers: torch.nn.ModuleList):
        self.name = name
        self.layers = layers
        self.handles: list = []
        self.calls: collections.Counter = collections.Counter()
        self._active = None  # (batch, seq, indices, original mask, PackedSequences) during a forward

    def attach(self) -> None:
        for i, layer in enumerate(self.layers):
            self.handles.append(layer.register_forward_pre_hook(self._make_pre_hook(i == 0), with_kwargs=True))
        self.handles.append(self.layers[-1].register_forward_hook(self._post_hook))

    def detach(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()
        self._active = None

    @staticmethod
    def _split(args, kwargs):
        hidden = args[0] if args else kwargs.get("hidden_states")
        mask = args[1] if len(args) > 1 else kwargs.get("attention_mask")
        return hidden, mask

    @staticmethod
    def _replace(args, kwargs, hidden, mask):
        args = list(args)
        kwargs = dict(kwargs)
        if args:
            args[0] = hidden
        else:
            kwargs["hidden_states"] = hidden
        if len(args) > 1:
            args[1] = mask
        else:
            kwargs["attention_mask"] = mask
        return tuple(args), kwargs

    def _why_padded(self, layer, hidden, mask) -> str | None:
        from .attention import FastxfMask

        if layer.training:
            return "training mode"
        if torch.compiler.is_compiling():
            return "torch.compile tracing (data-dependent token count)"
        if not isinstance(mask, FastxfMask) or mask.key_padding is None:
            return "no padding mask"
        if mask.reason is not None or mask.causal or mask.window or mask.q_offset_keys is not None:
            return "not a plain bidirectional padding mask"
        if hidden.dim() != 3 or tuple(hidden.shape[:2]) != tuple(mask.key_padding.shape):
            return "hidden states do not match the padding mask"
        if hidden.device.type not in ("cpu", "cuda"):
            return f"no varlen kernel for {hidden.device} yet"
        if hidden.device.type == "cuda" and hidden.dtype not in (torch.float16, torch.bfloat16):
            return f"{hidden.dtype} on cuda (the CUDA varlen kernel takes float16 / bfloat16)"
        if _collecting_outputs():
            return "hidden states or attentions requested"
        return None

    def _make_pre_hook(self, first: bool):
        def pre_hook(layer, args, kwargs):
            hidden, mask = self._split(args, kwargs)
            if first:
                self._active = None
                why = self._why_padded(layer, hidden, mask)
                if why is None:
                    keep = mask.key_padding
                    lengths = keep.sum(1, dtype=torch.int32)
                    total = int(lengths.sum())
                    if total == keep.numel():
                        why = "no padding in the batch"
                    elif total == 0:
                        why = "no real token in the batch"
                if why is not None:
                    self.calls["padded: " + why] += 1
                    if why == "no padding in the batch":
                        # Nothing to gather; the same mask without its all-True key padding is exact.
                        from .attention import FastxfMask

                        bare = FastxfMask(mask.hf_args, None, mask.q_offset_keys, False, 0, None)
                        self._active = (None, None, None, mask, bare)
                        return self._replace(args, kwargs, hidden, bare)
                    return None
                B, S, H = hidden.shape
                idx = keep.reshape(-1).nonzero().reshape(-1)
                cu = torch.zeros(B + 1, dtype=torch.int32, device=hidden.device)
                torch.cumsum(lengths, 0, out=cu[1:])
                max_len = int(lengths.max())
                packed = PackedSequences(cu, cu, max_len, max_len, causal=False, valid=True)
                self._active = (B, S, idx, mask, packed)
                self.calls["unpadded"] += 1
                self.calls["tokens computed"] += total
                self.calls["tokens skipped"] += keep.numel() - total
                return self._replace(args, kwargs, hidden.reshape(B * S, H).index_select(0, idx)[None], packed)
            if self._active is None:
                return None
            if mask is not self._active[3]:
                self._active = None
                raise RuntimeError(
                    f"fastxf unpad ({self.name}): a layer got a different attention mask than the first layer; "
                    "optimize(model, unpad=False) runs this model padded"
                )
            return self._replace(args, kwargs, hidden, self._active[4])

        return pre_hook

    def _post_hook(self, layer, args, output):
        if self._active is None:
            return None
        B, S, idx, _, _ = self._active
        self._active = None
        if idx is None:  # a batch without padding: ran padded, nothing to scatter
            return None
        packed = output[0] if isinstance(output, tuple) else output
        H = packed.shape[-1]
        full = packed.new_zeros(B * S, H).index_copy_(0, idx, packed.reshape(-1, H)).view(B, S, H)
        return (full, *output[1:]) if isinstance(output, tuple) else full


def find_encoder_stacks(model: torch.nn.Module) -> tuple[list, str | None]:
    """[(name, layers ModuleList)] that can run padding-free, or ([], why not)."""
    found, model_types = [], set()
    configs = {"": getattr(model, "config", None)}  # module name -> nearest config (own or an ancestor's)
    for name, m in model.named_modules():
        parent = name.rpartition(".")[0]
        cfg = getattr(m, "config", None) or configs.get(parent)
        configs[name] = cfg
        mtype = getattr(cfg, "model_type", None)
        if mtype is None:
            continue
        model_types.add(mtype)
        spec = ENCODER_STACKS.get(mtype)
        if spec is None or not type(m).__name__.endswith(spec[0]):
            continue
        if getattr(cfg, "is_decoder", False) or getattr(cfg, "add_cross_attention", False):
            continue
        layers = getattr(m, spec[1], None)
        if isinstance(layers, torch.nn.ModuleList) and len(layers) > 0:
            found.append((f"{name}.{spec[1]}" if name else spec[1], layers))
    if found:
        return found, None
    for t in sorted(model_types):
        if t in NOT_UNPADDED:
            return [], NOT_UNPADDED[t]
    return [], (
        "no encoder layer stack fastxf knows how to unpad "
        "(BERT, RoBERTa, XLM-RoBERTa, ELECTRA, DistilBERT, BART/mBART encoders)"
    )
