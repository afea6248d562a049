"""GPT-Neo (GPTNeoSelfAttention): separate q/k/v projections, no score scaling,
learned absolute positions, and a per-layer causal buffer that is either
global or local (a sliding window of config.window_size keys).

HF combines that bottom-right aligned buffer with the dense mask from
create_causal_mask; the kernel gets causal + window + the key padding read
from the mask. Masks whose causal rule is not bottom-right aligned (static
caches) would combine differently with the buffer: those calls go back to HF.
"""

from __future__ import annotations

from . import _common

CLASSES = ("transformers.models.gpt_neo.modeling_gpt_neo.GPTNeoSelfAttention",)
FAMILY = "gpt_neo"


def check(module) -> str | None:
    if module.attention_type not in ("global", "local"):
        return f"attention_type {module.attention_type!r}"
    return None


def prepare(module) -> dict:
    return {"window": int(module.config.window_size) if module.attention_type == "local" else 0}


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

    why, compact = _common.precheck(
        module, hidden_states, module.attn_dropout.p, kwargs, attention_mask, output_attentions=output_attentions
    )
    if why is None:
        why = _common.buffer_mismatch(compact)
    if why is not None:
        return fallback(why)
    query, key, value = (
        _common.split_heads(p(hidden_states), module.head_dim) for p in (module.q_proj, module.k_proj, module.v_proj)
    )
    if layer_past is not None:
        key, value = layer_past.update(key, value, module.layer_id)
    context = _common.attend(
        query, key, value, compact, family="GPT-Neo", mask=attention_mask,
        causal=True,  # the layer's own buffer is causal whatever the mask says
        scale=1.0,  # GPT-Neo does not scale its scores
        window=module.__dict__["_fastxf_extra"]["window"],
    )
    return module.resid_dropout(module.out_proj(context)), None
