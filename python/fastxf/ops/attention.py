"""fastxf.ops.attention (torch.ops.fastxf.attention)."""

from __future__ import annotations

import torch

from .. import _extension
from . import reference
from ._backward import grads_like, recompute_grads
from ._checks import check_attention_args


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    scale: float | None = None,
    key_padding_mask: torch.Tensor | None = None,
    q_offset: torch.Tensor | None = None,
    window: int = 0,
    softcap: float = 0.0,
    alibi_slopes: torch.Tensor | None = None,
) -> torch.Tensor:
    """Exact attention: q (B, Hq, Sq, D), k / v (B, Hkv, Sk, D) -> (B, Hq, Sq, D).

    `causal` is bottom-right aligned (query i sees keys j <= i + Sk - Sq) unless
    `q_offset` (int tensor, () or (B,)) gives the key position of query 0.
    `key_padding_mask` (B, Sk) bool, True = attend. `window` > 0 limits each query
    at position p to keys j > p - window; `softcap` > 0 applies
    softcap * tanh(scores / softcap). `alibi_slopes` (float32, (Hq,) or (B, Hq))
    adds the ALiBi bias -slope * |p - j| (query at key position p, key j) after
    scale and softcap. Rows with no visible key are zeros. The
    result is a (B, Hq, Sq, D) view of a contiguous (B, Sq, Hq, D) buffer.
    """
    check_attention_args(q, k, v, key_padding_mask, q_offset, window, softcap, alibi_slopes)
    _extension.require_kernels_for(q.device, "attention")
    return torch.ops.fastxf.attention(
        q, k, v, key_padding_mask, q_offset, bool(causal), scale, int(window), float(softcap), alibi_slopes
    )


@torch.library.register_fake("fastxf::attention")
def _attention_fake(
    q, k, v, key_padding_mask=None, q_offset=None, causal=False, scale=None, window=0, softcap=0.0, alibi_slopes=None
):
    check_attention_args(q, k, v, key_padding_mask, q_offset, window, softcap, alibi_slopes)
    batch, q_heads, q_len, head_dim = q.shape
    return q.new_empty((batch, q_len, q_heads, head_dim)).transpose(1, 2)


# The backward op, which the C++ autograd kernel (csrc/autograd.cpp) calls.
@torch.library.impl("fastxf::attention_backward", "CompositeExplicitAutograd")
def _attention_backward(
    grad_out, q, k, v, key_padding_mask, q_offset, causal, scale, window, softcap, alibi_slopes, output_mask
):
    return recompute_grads(
        lambda q, k, v: (
            reference.attention(q, k, v, key_padding_mask, q_offset, causal, scale, window, softcap, alibi_slopes),
        ),
        [q, k, v],
        [grad_out],
        output_mask,
    )


@torch.library.register_fake("fastxf::attention_backward")
def _attention_backward_fake(
    grad_out, q, k, v, key_padding_mask, q_offset, causal, scale, window, softcap, alibi_slopes, output_mask
):
    return grads_like([q, k, v], output_mask)
