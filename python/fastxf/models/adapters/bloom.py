"""BLOOM (BloomAttention): fused QKV, ALiBi, no rotary.

HF adds slope * (number of real tokens before key j) to the scores (after the
1/sqrt(d) scale). Within one query's row that differs from the kernel's
-slope * |p - j| by a per-row constant whenever the row's real keys are one
contiguous run and no visible key lies after the query (causal), and softmax
ignores per-row constants: the op's test
`test_alibi_left_padding_matches_bloom_convention` checks that equivalence.
Masks with holes in the padding, or without the causal rule, go back to HF.
"""

from __future__ import annotations

import sys

import torch

from . import _common

CLASSES = ("transformers.models.bloom.modeling_bloom.BloomAttention",)
FAMILY = "bloom"


def slopes_for(module) -> torch.Tensor:
    mod = sys.modules[type(module).__module__]
    device = module.query_key_value.weight.device
    helper = getattr(mod, "_get_alibi_slopes", None)
    if helper is not None:  # transformers' own helper (5.x)
        return helper(module.num_heads, device).to(torch.float32)
    return _common.slopes_from_build_alibi(mod.build_alibi_tensor, module.num_heads, device)


def check(module) -> str | None:
    why = _common.alibi_kernel_check(module)
    if why is not None:
        return why
    if getattr(module, "pretraining_tp", 1) > 1 and getattr(module, "slow_but_exact", False):
        return "pretraining_tp > 1 with slow_but_exact (HF slices the output projection)"
    return None


def prepare(module) -> dict:
    return {"slopes": slopes_for(module)}


def forward(
    module,
    original,
    hidden_states,
    residual,
    alibi,
    attention_mask,
    layer_past=None,
    use_cache=False,
    output_attentions=False,
    **kwargs,
):
    def fallback(reason):
        _common.count("fallback:" + reason)
        return original(
            hidden_states, residual, alibi, attention_mask, layer_past=layer_past, use_cache=use_cache,
            output_attentions=output_attentions, **kwargs,
        )

    why, compact = _common.precheck(
        module, hidden_states, module.attention_dropout.p, kwargs, attention_mask, output_attentions=output_attentions
    )
    if why is not None:
        return fallback(why)
    q_len = hidden_states.shape[1]
    if compact is not None:
        if not compact.causal_for(q_len) or not compact.contiguous:
            return fallback("ALiBi with a non-causal or holed mask (BLOOM counts positions over real tokens)")
    elif q_len != 1:  # HF then attends to every key, later ones included: not ALiBi's |p - j|
        return fallback("no attention mask with several queries (HF attends bidirectionally)")

    fused_qkv = module.query_key_value(hidden_states)
    query, key, value = module._reshape(fused_qkv)  # (B, H, S, D) views of fused_qkv
    if layer_past is not None:
        key, value = layer_past.update(key, value, module.layer_idx)
    context = _common.attend(
        query, key, value, compact, family="BLOOM", mask=attention_mask, causal=True, scale=module.inv_norm_factor,
        alibi_slopes=module.__dict__["_fastxf_extra"]["slopes"],
    )
    output = module.dense(context)
    mod = sys.modules[type(module).__module__]
    output = mod.dropout_add(output, residual, module.hidden_dropout, module.training)
    return output, None

