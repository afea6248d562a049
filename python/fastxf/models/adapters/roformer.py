"""RoFormer (RoFormerSelfAttention): BERT-style self-attention with rotary
embeddings on q and k (and v when config.rotary_value), applied by the
module's own apply_rotary_position_embeddings. Cross-attention and caches
(decoder use) go to the original forward, as for the other BERT-style encoders.
"""

from __future__ import annotations

from . import _common, bert_style

CLASSES = ("transformers.models.roformer.modeling_roformer.RoFormerSelfAttention",)
FAMILY = "roformer"


def check(module) -> str | None:
    return None


def prepare(module) -> dict:
    return {}


def forward(
    module, original, hidden_states, attention_mask=None, sinusoidal_pos=None, encoder_hidden_states=None, cache=None,
    output_attentions=False, **kwargs,
):
    def fallback(reason):
        _common.count("fallback:" + reason)
        return original(
            hidden_states, attention_mask, sinusoidal_pos, encoder_hidden_states, cache, output_attentions, **kwargs
        )

    if output_attentions:
        return fallback("output_attentions")
    if encoder_hidden_states is not None or cache is not None:
        return fallback("cross-attention or cache")
    why = _common.unknown_kwargs(kwargs) or _common.plain_call_reason(
        module, hidden_states, hidden_states, module.dropout.p
    )
    if why is not None:
        return fallback(why)
    compact = None
    if attention_mask is not None:
        compact = _common.analyse(attention_mask, bert_style._visible, "additive")
        if isinstance(compact, str):
            return fallback(compact)

    def rotate(q, k, v):
        if sinusoidal_pos is None:
            return q, k, v
        if module.rotary_value:
            return module.apply_rotary_position_embeddings(sinusoidal_pos, q, k, v)
        q, k = module.apply_rotary_position_embeddings(sinusoidal_pos, q, k)
        return q, k, v

    return bert_style.self_attention(module, hidden_states, attention_mask, compact, rotate)
