"""BERT-style encoder self-attention kept outside AttentionInterface in
transformers 5.x (RemBERT, Megatron-BERT, TAPAS, ViLT, VisualBERT): separate
query / key / value projections, scores scaled by 1/sqrt(head size), an
additive mask (BERT's extended (B, 1, 1, Sk) mask or a causal (B, 1, Sq, Sk)
one), softmax, dropout.

Only plain self-attention runs on the kernel (what BetterTransformer covered for
these models): cross-attention, caches (decoder use), output_attentions and any
other input go to the original forward for that call.
"""

from __future__ import annotations

from ...ops import attention as fx_attention_op
from . import _common

_M = "transformers.models"
CLASSES = (
    f"{_M}.rembert.modeling_rembert.RemBertSelfAttention",
    f"{_M}.megatron_bert.modeling_megatron_bert.MegatronBertSelfAttention",
    f"{_M}.tapas.modeling_tapas.TapasSelfAttention",
    f"{_M}.vilt.modeling_vilt.ViltSelfAttention",
    f"{_M}.visual_bert.modeling_visual_bert.VisualBertSelfAttention",
)
FAMILY = "bert-style encoders"


def check(module) -> str | None:
    if getattr(module, "position_embedding_type", "absolute") != "absolute":
        return f"position_embedding_type {module.position_embedding_type!r} (relative position scores)"
    return None


def prepare(module) -> dict:
    return {}


def _visible(mask):
    return _common.visible_from_additive(mask)


def forward(module, original, hidden_states, attention_mask=None, *args, **kwargs):
    def fallback(reason):
        _common.count("fallback:" + reason)
        return original(hidden_states, attention_mask, *args, **kwargs)

    # Positional extras are encoder_hidden_states / cache / output_attentions
    # depending on the class: any of them set means a call the kernel does not take.
    if any(a is not None and a is not False for a in args):
        return fallback("cross-attention, cache or output_attentions")
    if kwargs.get("output_attentions"):
        return fallback("output_attentions")
    why = _common.unknown_kwargs(kwargs) or _common.plain_call_reason(
        module, hidden_states, hidden_states, module.dropout.p
    )
    if why is not None:
        return fallback(why)
    compact = None
    if attention_mask is not None:
        compact = _common.analyse(attention_mask, _visible, "additive")
        if isinstance(compact, str):
            return fallback(compact)
    return self_attention(module, hidden_states, attention_mask, compact)


def self_attention(module, hidden_states, attention_mask, compact, rotate=None):
    """The kernel call shared with RoFormer; `rotate(q, k, v)` applies rotary embeddings."""
    batch, q_len = hidden_states.shape[:2]
    shape = (batch, q_len, -1, module.attention_head_size)
    query, key, value = (p(hidden_states).view(shape).transpose(1, 2) for p in (module.query, module.key, module.value))
    if rotate is not None:
        query, key, value = rotate(query, key, value)
        query, key, value = (_common.contiguous_last(t) for t in (query, key, value))
    _common.check_key_length(attention_mask, key, FAMILY)
    _common.count("fastxf")
    out = fx_attention_op(
        query,
        key,
        value,
        causal=False if compact is None else compact.causal,
        scale=module.attention_head_size**-0.5,
        key_padding_mask=None if compact is None else compact.key_padding,
        q_offset=None if compact is None else compact.q_offset,
    )
    return out.transpose(1, 2).reshape(batch, q_len, module.all_head_size), None
