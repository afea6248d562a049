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
prepare = _common.no_constants


def check(module) -> str | None:
    if getattr(module, "position_embedding_type", "absolute") != "absolute":
        return f"position_embedding_type {module.position_embedding_type!r} (relative position scores)"
    return None


def forward(module, original, hidden_states, attention_mask=None, *args, **kwargs):
    def fallback(reason):
        _common.count("fallback:" + reason)
        return original(hidden_states, attention_mask, *args, **kwargs)

    # Positional extras are encoder_hidden_states / cache / output_attentions
    # depending on the class: any of them set means a call the kernel does not take.
    if any(a is not None and a is not False for a in args):
        return fallback("cross-attention, cache or output_attentions")
    why, compact = _common.precheck(
        module, hidden_states, module.dropout.p, kwargs, attention_mask,
        output_attentions=kwargs.get("output_attentions"),
    )
    if why is not None:
        return fallback(why)
    return self_attention(module, hidden_states, attention_mask, compact)


def self_attention(module, hidden_states, attention_mask, compact, rotate=None):
    """The kernel call shared with RoFormer; `rotate(q, k, v)` applies rotary embeddings."""
    projections = (module.query, module.key, module.value)
    query, key, value = (_common.split_heads(p(hidden_states), module.attention_head_size) for p in projections)
    if rotate is not None:
        query, key, value = rotate(query, key, value)
    context = _common.attend(
        query, key, value, compact, family=FAMILY, mask=attention_mask,
        causal=False if compact is None else compact.causal,
        scale=module.attention_head_size**-0.5,
    )
    return context, None
