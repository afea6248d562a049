"""MPT (MptAttention): fused Wqkv (optionally clipped), ALiBi, bool mask.

HF adds position_bias[h, 0, j] = slope_h * (j - (Sk - 1)) (the model's own
table, sliced to the last Sk keys) to the scaled scores, using the raw key
index j: on causal rows that is the kernel's -slope * |p - j| plus a per-row
constant, padding or not. The slopes are read back from that table on each
call (two subtractions, no host sync), so whatever table the model built is
what the kernel uses. The mask is bool with True = masked.

MptBlock does not pass `output_attentions` to its attention module, so a
forward pre-hook on the block records it for the adapter (removed on revert).
"""

from __future__ import annotations

import torch

from . import _common

CLASSES = ("transformers.models.mpt.modeling_mpt.MptAttention",)
FAMILY = "mpt"
PARENT_PASSES_OUTPUT_ATTENTIONS = False  # see the module docstring


def check(module) -> str | None:
    return _common.alibi_kernel_check(module)  # MPT always uses ALiBi


prepare = _common.no_constants


def _visible(mask):
    if mask.dtype == torch.bool:
        return ~mask
    return _common.visible_from_additive(mask)


def forward(module, original, hidden_states, position_bias, cache=None, attention_mask=None, **kwargs):
    def fallback(reason):
        _common.count("fallback:" + reason)
        return original(hidden_states, position_bias, cache=cache, attention_mask=attention_mask, **kwargs)

    why, compact = _common.precheck(
        module, hidden_states, module.attn_dropout_p, kwargs, attention_mask,
        output_attentions=module.__dict__.get("_fastxf_output_attentions"), to_visible=_visible, key="mpt-bool",
    )
    if why is not None:
        return fallback(why)
    q_len = hidden_states.shape[1]
    if compact is not None:
        if position_bias is not None and not compact.causal_for(q_len):
            return fallback("ALiBi with a non-causal mask")
    elif q_len != 1:
        return fallback("no attention mask with several queries (HF attends bidirectionally)")
    if position_bias is not None and (position_bias.dim() != 3 or position_bias.shape[1] != 1 or position_bias.shape[2] < 2):
        return fallback(f"position_bias of shape {tuple(position_bias.shape)}")

    mixed = module.Wqkv(hidden_states)
    if module.clip_qkv:
        mixed = mixed.clamp(min=-module.clip_qkv, max=module.clip_qkv)
    query, key, value = (_common.split_heads(t, module.head_dim) for t in mixed.chunk(3, dim=2))
    if cache is not None:
        key, value = cache.update(key, value, module.layer_idx, kwargs=kwargs)
    _common.check_key_length(attention_mask, key, "MPT")  # a mask / cache mismatch first: the root cause
    slopes = None
    if position_bias is not None:
        if position_bias.shape[2] < key.shape[2]:
            raise RuntimeError(f"fastxf MPT adapter: {key.shape[2]} keys exceed the ALiBi table ({position_bias.shape[2]})")
        row = position_bias[:, 0, :]
        slopes = (row[:, -1] - row[:, -2]).to(torch.float32).contiguous()
    context = _common.attend(
        query, key, value, compact, family="MPT", mask=attention_mask, causal=_common.decoder_causal(compact, q_len),
        scale=module.softmax_scale, alibi_slopes=slopes,
    )
    return module.out_proj(context), None
