"""Falcon (FalconAttention): fused QKV in three layouts (classic multi-head,
multi-query, the new decoder architecture's grouped KV), rotary or ALiBi.

ALiBi (Falcon-RW): transformers 5.x folds the ALiBi bias (slope * real-token
position / sqrt(head_dim)) into the causal mask, which its sdpa path adds once;
its eager path adds the bias again on top of that mask, so eager applies twice
the slope. The adapter reproduces what the model instance's own configured
implementation computes (so optimize() never changes a model's outputs): the
slope / sqrt(d) for "sdpa", twice that for anything else. Like BLOOM, positions
count real tokens only, which the kernel's |p - j| matches on causal masks whose
real keys form one run.
"""

from __future__ import annotations

import sys

import torch

from . import _common

CLASSES = ("transformers.models.falcon.modeling_falcon.FalconAttention",)
FAMILY = "falcon"


def check(module) -> str | None:
    if module.config.alibi:
        return _common.alibi_kernel_check(module)
    return None


def prepare(module) -> dict:
    mod = sys.modules[type(module).__module__]
    device = module.query_key_value.weight.device
    return {"slopes": _common.slopes_from_build_alibi(mod.build_alibi_tensor, module.num_heads, device)}


def _visible_alibi(mask):
    # (B, heads, Sq, Sk): the ALiBi values sit in the visible entries (the
    # adapter applies its own), the masked ones are finfo.min; the pattern must
    # be the same for every head.
    vis = mask if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min / 2
    if vis.shape[1] > 1:
        if not torch.equal(vis, vis[:, :1].expand_as(vis)):
            return vis  # per-head patterns: analyse() reports them
        vis = vis[:, :1]
    return vis


def forward(
    module,
    original,
    hidden_states,
    alibi,
    attention_mask,
    position_ids=None,
    layer_past=None,
    use_cache=False,
    output_attentions=False,
    position_embeddings=None,
    **kwargs,
):
    def fallback(reason):
        _common.count("fallback:" + reason)
        return original(
            hidden_states, alibi, attention_mask, position_ids=position_ids, layer_past=layer_past,
            use_cache=use_cache, output_attentions=output_attentions, position_embeddings=position_embeddings, **kwargs,
        )

    use_alibi = alibi is not None
    visible = {"to_visible": _visible_alibi, "key": "falcon-alibi"} if use_alibi else {}
    why, compact = _common.precheck(
        module, hidden_states, module.attention_dropout.p, kwargs, attention_mask, output_attentions=output_attentions,
        **visible,
    )
    if why is not None:
        return fallback(why)
    batch, q_len, _ = hidden_states.shape
    if use_alibi and compact is not None:
        if not compact.causal_for(q_len) or not compact.contiguous:
            return fallback("ALiBi with a non-causal or holed mask (Falcon counts positions over real tokens)")
    elif use_alibi and q_len != 1:
        return fallback("ALiBi without an attention mask (HF's sdpa path then drops the bias)")

    mod = sys.modules[type(module).__module__]
    fused_qkv = module.query_key_value(hidden_states)
    num_kv_heads = module.num_heads if module.new_decoder_architecture else module.num_kv_heads
    query, key, value = module._split_heads(fused_qkv)  # (B, S, heads, D)
    query = query.transpose(1, 2).reshape(batch, module.num_heads, q_len, module.head_dim)
    key = key.transpose(1, 2).reshape(batch, num_kv_heads, q_len, module.head_dim)
    value = value.transpose(1, 2).reshape(batch, num_kv_heads, q_len, module.head_dim)
    if not use_alibi:
        cos, sin = position_embeddings
        query, key = mod.apply_rotary_pos_emb(query, key, cos, sin)
    if layer_past is not None:
        key, value = layer_past.update(key, value, module.layer_idx)

    slopes = None
    if use_alibi:
        times = 1.0 if module.config._attn_implementation == "sdpa" else 2.0  # see the module docstring
        slopes = module.__dict__["_fastxf_extra"]["slopes"] * (times * module.inv_norm_factor)
    context = _common.attend(
        query, key, value, compact, family="Falcon", mask=attention_mask, causal=_common.decoder_causal(compact, q_len),
        scale=module.inv_norm_factor, alibi_slopes=slopes,
    )
    return module.dense(context), None
