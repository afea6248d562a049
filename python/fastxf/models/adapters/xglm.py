"""XGLM (XGLMAttention): BART-style attention (query scaled before the product,
separate projections, an additive (B, 1, Sq, Sk) mask clamped at finfo.min,
sinusoidal absolute positions outside the module). Attention weights are
recorded by transformers' output capturing, so the adapter falls back when a
caller asks for them. Cross-attention (only with add_cross_attention) goes to
the original forward.
"""

from __future__ import annotations

from ...ops import attention as fx_attention_op
from .. import attention as fx_attention
from . import _common

CLASSES = ("transformers.models.xglm.modeling_xglm.XGLMAttention",)
FAMILY = "xglm"

# TransformersKwargs that reach the module without changing what it computes.
_ALLOWED = fx_attention._HARMLESS_KWARGS | {"output_attentions"}


def check(module) -> str | None:
    return None


def prepare(module) -> dict:
    return {}


def _visible(mask):
    return _common.visible_from_additive(mask)


def forward(module, original, hidden_states, key_value_states=None, cache=None, attention_mask=None, **kwargs):
    def fallback(reason):
        _common.count("fallback:" + reason)
        return original(hidden_states, key_value_states, cache, attention_mask, **kwargs)

    if fx_attention._wants_attention_weights(kwargs):
        return fallback("output_attentions")
    if key_value_states is not None:
        return fallback("cross-attention")
    why = _common.unknown_kwargs(kwargs, _ALLOWED) or _common.plain_call_reason(
        module, hidden_states, hidden_states, module.dropout
    )
    if why is not None:
        return fallback(why)
    compact = None
    if attention_mask is not None:
        compact = _common.analyse(attention_mask, _visible, "additive")
        if isinstance(compact, str):
            return fallback(compact)
    batch, q_len, _ = hidden_states.shape
    shape = (batch, q_len, -1, module.head_dim)
    query = (module.q_proj(hidden_states) * module.scaling).view(shape).transpose(1, 2)
    key = module.k_proj(hidden_states).view(shape).transpose(1, 2)
    value = module.v_proj(hidden_states).view(shape).transpose(1, 2)
    if cache is not None:
        curr = getattr(cache, "self_attention_cache", cache)  # EncoderDecoderCache or a plain cache
        key, value = curr.update(key, value, module.layer_idx, kwargs=kwargs)
    _common.check_key_length(attention_mask, key, "XGLM")
    _common.count("fastxf")
    out = fx_attention_op(
        query,
        _common.contiguous_last(key),
        _common.contiguous_last(value),
        causal=False if compact is None else compact.causal,
        scale=1.0,  # the query is already scaled, as HF does
        key_padding_mask=None if compact is None else compact.key_padding,
        q_offset=None if compact is None else compact.q_offset,
    )
    return module.out_proj(out.transpose(1, 2).reshape(batch, q_len, module.embed_dim)), None
