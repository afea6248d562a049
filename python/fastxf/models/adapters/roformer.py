"""RoFormer (RoFormerSelfAttention): BERT-style self-attention with rotary
embeddings on q and k (and v when config.rotary_value), applied by the
module's own apply_rotary_position_embeddings. Cross-attention and caches
(decoder use) go to the original forward, as for the other BERT-style encoders.
"""

from __future__ import annotations

from . import _common, bert_style

CLASSES = ("transformers.models.roformer.modeling_roformer.RoFormerSelfAttention",)
FAMILY = "roformer"
check, prepare = _common.no_check, _common.no_constants


def forward(
    module, original, hidden_states, attention_mask=None, sinusoidal_pos=None, encoder_hidden_states=None, cache=None,
    output_attentions=False, **kwargs,
):
    def fallback(reason):
        _common.count("fallback:" + reason)
        return original(
            hidden_states, attention_mask, sinusoidal_pos, encoder_hidden_states, cache, output_attentions, **kwargs
        )

    cross_or_cache = encoder_hidden_states is not None or cache is not None
    why, compact = _common.precheck(
        module, hidden_states, module.dropout.p, kwargs, attention_mask, output_attentions=output_attentions,
        refuse="cross-attention or cache" if cross_or_cache else None,
    )
    if why is not None:
        return fallback(why)

    def rotate(q, k, v):
        if sinusoidal_pos is None:
            return q, k, v
        if module.rotary_value:
            return module.apply_rotary_position_embeddings(sinusoidal_pos, q, k, v)
        q, k = module.apply_rotary_position_embeddings(sinusoidal_pos, q, k)
        return q, k, v

    return bert_style.self_attention(module, hidden_states, attention_mask, compact, rotate)
