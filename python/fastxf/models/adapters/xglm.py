"""XGLM (XGLMAttention): BART-style attention (query scaled before the product,
separate projections, an additive (B, 1, Sq, Sk) mask clamped at finfo.min,
sinusoidal absolute positions outside the module). Attention weights are
recorded by transformers' output capturing, so the adapter falls back when a
caller asks for them. Cross-attention (only with add_cross_attention) goes to
the original forward.
"""

from __future__ import annotations

from .. import attention as fx_attention
from . import _common

CLASSES = ("transformers.models.xglm.modeling_xglm.XGLMAttention",)
FAMILY = "xglm"

# TransformersKwargs that reach the module without changing what it computes.
_ALLOWED = fx_attention._HARMLESS_KWARGS | {"output_attentions"}

check, prepare = _common.no_check, _common.no_constants


def forward(module, original, hidden_states, key_value_states=None, cache=None, attention_mask=None, **kwargs):
    def fallback(reason):
        _common.count("fallback:" + reason)
        return original(hidden_states, key_value_states, cache, attention_mask, **kwargs)

    why, compact = _common.precheck(
        module, hidden_states, module.dropout, kwargs, attention_mask,
        output_attentions=fx_attention._wants_attention_weights(kwargs),
        refuse="cross-attention" if key_value_states is not None else None, allowed=_ALLOWED,
    )
    if why is not None:
        return fallback(why)
    query = _common.split_heads(module.q_proj(hidden_states) * module.scaling, module.head_dim)
    key = _common.split_heads(module.k_proj(hidden_states), module.head_dim)
    value = _common.split_heads(module.v_proj(hidden_states), module.head_dim)
    if cache is not None:
        curr = getattr(cache, "self_attention_cache", cache)  # EncoderDecoderCache or a plain cache
        key, value = curr.update(key, value, module.layer_idx, kwargs=kwargs)
    context = _common.attend(
        query, key, value, compact, family="XGLM", mask=attention_mask,
        causal=False if compact is None else compact.causal,
        scale=1.0,  # the query is already scaled, as HF does
    )
    return module.out_proj(context), None
