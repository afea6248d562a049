"""Bark (BarkSelfAttention): fused att_proj, scores scaled by 1/sqrt(d), an
optional bottom-right causal buffer (semantic / coarse models; the fine model
is bidirectional) combined with a padding mask from create_bidirectional_mask.
Like GPT-Neo, masks whose own causal rule is not bottom-right aligned would
combine differently with the buffer: those calls go back to HF.
"""

from __future__ import annotations

from . import _common

CLASSES = ("transformers.models.bark.modeling_bark.BarkSelfAttention",)
FAMILY = "bark"
check, prepare = _common.no_check, _common.no_constants


def forward(module, original, hidden_states, attention_mask=None, cache=None, use_cache=False, output_attentions=False,
            **kwargs):
    def fallback(reason):
        _common.count("fallback:" + reason)
        return original(hidden_states, attention_mask, cache, use_cache, output_attentions, **kwargs)

    why, compact = _common.precheck(
        module, hidden_states, module.attn_dropout.p, kwargs, attention_mask, output_attentions=output_attentions
    )
    if why is None:
        why = _common.buffer_mismatch(compact)
    if why is None and compact is not None and compact.causal and not module.is_causal:
        why = "causal mask on a bidirectional layer"
    if why is not None:
        return fallback(why)
    query, key, value = module.att_proj(hidden_states).split(module.embed_dim, dim=2)
    query, key, value = (_common.split_heads(t, module.head_dim) for t in (query, key, value))
    if cache is not None:
        key, value = cache.update(key, value, module.layer_idx, kwargs=kwargs)
    context = _common.attend(
        query, key, value, compact, family="Bark", mask=attention_mask,
        causal=bool(module.is_causal),  # the buffer (bottom-right) decides, the mask only pads
        scale=module.head_dim**-0.5,
    )
    return module.resid_dropout(module.out_proj(context)), None
