"""FSMT (fairseq WMT translation models; FSMT's `Attention`): time-first
(T, B, C) layout, query scaled before the product, self-attention (encoder and
decoder) and encoder-decoder attention, masks given the fairseq way: a
(B, Sk) bool `key_padding_mask` (True = padding) and an optional (Sq, Sk)
additive `attn_mask` (the decoder's future mask).

Like HF, no `attn_mask` means no causal rule: FSMT builds the future mask only
when the decoder runs without a cache, and the adapter computes exactly that.
"""

from __future__ import annotations

import torch

from ...ops import attention as fx_attention_op
from . import _common

CLASSES = ("transformers.models.fsmt.modeling_fsmt.Attention",)
FAMILY = "fsmt"
check, prepare = _common.no_check, _common.no_constants


def _visible_2d(mask):
    vis = _common.visible_from_additive(mask)
    return None if vis is None or vis.dim() != 2 else vis[None, None]


def forward(module, original, query, key, key_padding_mask=None, layer_state=None, attn_mask=None,
            output_attentions=False, **kwargs):
    def fallback(reason):
        _common.count("fallback:" + reason)
        return original(query, key, key_padding_mask, layer_state, attn_mask, output_attentions, **kwargs)

    # attn_mask is analysed below, after key_padding_mask's checks (None here: no mask yet).
    why, _ = _common.precheck(module, query, module.dropout, kwargs, None, output_attentions=output_attentions)
    if why is not None:
        return fallback(why)
    if key_padding_mask is not None and key_padding_mask.dim() == 0:  # as HF: a 0-d mask means none
        key_padding_mask = None
    if key_padding_mask is not None and (key_padding_mask.dtype != torch.bool or key_padding_mask.dim() != 2):
        return fallback("key_padding_mask that is not (B, Sk) bool")
    causal, q_offset = False, None
    if attn_mask is not None:
        compact = _common.analyse(attn_mask, _visible_2d, "fsmt-2d")
        if isinstance(compact, str):
            return fallback(compact)
        if compact.key_padding is not None:
            return fallback("attn_mask masks whole keys")
        causal, q_offset = compact.causal, compact.q_offset

    tgt_len, bsz, _ = query.shape
    # Keys and values exactly as HF computes and caches them (cross-attention reuses them after step 1).
    curr_cache, is_updated = layer_state, False
    if layer_state is not None and hasattr(layer_state, "is_updated"):  # EncoderDecoderCache
        is_updated = layer_state.is_updated.get(module.layer_idx)
        curr_cache = layer_state.cross_attention_cache if module.encoder_decoder_attention else layer_state.self_attention_cache
    current = key if module.encoder_decoder_attention else query
    if module.encoder_decoder_attention and layer_state is not None and is_updated:
        k = curr_cache.layers[module.layer_idx].keys
        v = curr_cache.layers[module.layer_idx].values
    else:
        k = module.k_proj(current).view(-1, bsz, module.num_heads, module.head_dim).permute(1, 2, 0, 3)
        v = module.v_proj(current).view(-1, bsz, module.num_heads, module.head_dim).permute(1, 2, 0, 3)
        if layer_state is not None:
            k, v = curr_cache.update(k, v, module.layer_idx, kwargs=kwargs)
            if module.encoder_decoder_attention:
                layer_state.is_updated[module.layer_idx] = True
    q = (module.q_proj(query) * module.scaling).view(tgt_len, bsz, module.num_heads, module.head_dim).permute(1, 2, 0, 3)
    if key_padding_mask is not None and key_padding_mask.shape != (bsz, k.shape[2]):
        raise RuntimeError(f"fastxf FSMT adapter: key_padding_mask {tuple(key_padding_mask.shape)} for {k.shape[2]} keys")
    _common.count("fastxf")
    out = fx_attention_op(
        q,
        _common.contiguous_last(k),
        _common.contiguous_last(v),
        causal=causal,
        scale=1.0,  # the query is already scaled, as HF does
        key_padding_mask=None if key_padding_mask is None else ~key_padding_mask,
        q_offset=q_offset,
    )
    out = out.permute(2, 0, 1, 3).reshape(tgt_len, bsz, module.embed_dim)  # (B, H, T, D) -> (T, B, C)
    return module.out_proj(out), None

