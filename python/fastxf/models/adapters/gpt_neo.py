"""GPT-Neo (GPTNeoSelfAttention): separate q/k/v projections, no score scaling,
learned absolute positions, and a per-layer causal buffer that is either
global or local (a sliding window of config.window_size keys).

HF combines that bottom-right aligned buffer with the dense mask from
create_causal_mask; the kernel gets causal + window + the key padding read
from the mask. Masks whose causal rule is not bottom-right aligned (static
caches) would combine differently with the buffer: those calls go back to HF.
"""

from __future__ import annotations

from ...ops import attention as fx_attention_op
from . import _common

CLASSES = ("transformers.models.gpt_neo.modeling_gpt_neo.GPTNeoSelfAttention",)
FAMILY = "gpt_neo"


def check(module) -> str | None:
    if module.attention_type not in ("global", "local"):
        return f"attention_type {module.attention_type!r}"
    return None


def prepare(module) -> dict:
    return {"window": int(module.config.window_size) if module.attention_type == "local" else 0}


def _visible(mask):
    return _common.visible_from_additive(mask)


def forward(
    module, original, hidden_states, attention_mask=None, layer_past=None, use_cache=False, output_attentions=False,
    **kwargs,
):
    def fallback(reason):
        _common.count("fallback:" + reason)
        return original(
            hidden_states, attention_mask=attention_mask, layer_past=layer_past, use_cache=use_cache,
            output_attentions=output_attentions, **kwargs,
        )

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
    batch, q_len = hidden_states.shape[:2]
    query = module._split_heads(module.q_proj(hidden_states), module.num_heads, module.head_dim)
    key = module._split_heads(module.k_proj(hidden_states), module.num_heads, module.head_dim)
    value = module._split_heads(module.v_proj(hidden_states), module.num_heads, module.head_dim)
    if layer_past is not None:
        key, value = layer_past.update(key, value, module.layer_id)
    _common.check_key_length(attention_mask, key, "GPT-Neo")
    _common.count("fastxf")
    out = fx_attention_op(
        _common.contiguous_last(query),
        _common.contiguous_last(key),
        _common.contiguous_last(value),
        causal=True,  # the layer's own buffer is causal whatever the mask says
        scale=1.0,  # GPT-Neo does not scale its scores
        key_padding_mask=None if compact is None else compact.key_padding,
        window=module.__dict__["_fastxf_extra"]["window"],
    )
    context = out.transpose(1, 2).reshape(batch, q_len, module.num_heads * module.head_dim)
    return module.resid_dropout(module.out_proj(context)), None
