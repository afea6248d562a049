"""Bark (BarkSelfAttention): fused att_proj, scores scaled by 1/sqrt(d), an
optional bottom-right causal buffer (semantic / coarse models; the fine model
is bidirectional) combined with a padding mask from create_bidirectional_mask.
Like GPT-Neo, masks whose own causal rule is not bottom-right aligned would
combine differently with the buffer: those calls go back to HF.
"""

from __future__ import annotations

from ...ops import attention as fx_attention_op
from . import _common

CLASSES = ("transformers.models.bark.modeling_bark.BarkSelfAttention",)
FAMILY = "bark"


def check(module) -> str | None:
    return None


def prepare(module) -> dict:
    return {}


def _visible(mask):
    return _common.visible_from_additive(mask)


def forward(module, original, hidden_states, attention_mask=None, cache=None, use_cache=False, output_attentions=False,
            **kwargs):
    def fallback(reason):
        _common.count("fallback:" + reason)
        return original(hidden_states, attention_mask, cache, use_cache, output_attentions, **kwargs)

    if output_attentions:
        return fallback("output_attentions")
    why = _common.unknown_kwargs(kwargs) or _common.plain_call_reason(
        module, hidden_states, hidden_states, module.attn_dropout.p
    )
    if why is not None:
        return fallback(why)
    compact = None
    if attention_mask is not None:
        compact = _common.analyse(attention_mask, _visible, "additive")
        if isinstance(compact, str):
            return fallback(compact)
        if compact.q_offset is not None:
            return fallback("causal mask not bottom-right aligned (static cache) while the layer's buffer is")
        if compact.causal and not module.is_causal:
            return fallback("causal mask on a bidirectional layer")
    batch, q_len, _ = hidden_states.shape
    query, key, value = module.att_proj(hidden_states).split(module.embed_dim, dim=2)
    query, key, value = (module._split_heads(t, module.num_heads, module.head_dim) for t in (query, key, value))
    if cache is not None:
        key, value = cache.update(key, value, module.layer_idx, kwargs=kwargs)
    _common.check_key_length(attention_mask, key, "Bark")
    _common.count("fastxf")
    out = fx_attention_op(
        query,
        key,
        value,
        causal=bool(module.is_causal),  # the buffer (bottom-right) decides, the mask only pads
        scale=module.head_dim**-0.5,
        key_padding_mask=None if compact is None else compact.key_padding,
    )
    out = out.transpose(1, 2).reshape(batch, q_len, module.embed_dim)
    return module.resid_dropout(module.out_proj(out)), None
