"""fastxf.ops.attention_varlen (torch.ops.fastxf.attention_varlen): attention over
packed variable-length sequences, in FlashAttention-2's flash_attn_varlen_func
convention, so code written for it ports directly."""

from __future__ import annotations

import torch

from .. import _extension
from ._checks import check_attention_varlen_args, check_cu_seqlens_values
from ._backward import grads_like, recompute_grads


def attention_varlen(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    *,
    causal: bool = False,
    scale: float | None = None,
    window: int = 0,
    softcap: float = 0.0,
) -> torch.Tensor:
    """Packed attention: q (total_q, Hq, D), k / v (total_k, Hkv, D) -> (total_q, Hq, D).

    Sequence b is rows [cu_seqlens_q[b], cu_seqlens_q[b+1]) of q and
    [cu_seqlens_k[b], cu_seqlens_k[b+1]) of k / v (int32 offsets, (batch + 1,),
    starting at 0 and ending at total_q / total_k); it attends to its own keys
    only. max_seqlen_q / max_seqlen_k bound the lengths. `causal` is bottom-right
    aligned per sequence (query i of a sequence with nq queries and nk keys sees
    keys j <= i + nk - nq); `window` / `softcap` / `scale` as in fastxf.ops.attention
    (note: one int window, not flash-attn's (left, right) pair). Empty sequences
    own no rows; queries without a visible key are zeros. On CPU tensors the
    offsets' values are checked (ValueError). On CUDA (float16 / bfloat16,
    head_dim <= 256) they are not (that would need a host sync): the kernel
    clamps each sequence's rows to [0, total], so bad offsets never access out of
    bounds, but give unspecified values for the rows they cover and leave rows no
    sequence covers (or past max_seqlen_q in a sequence) unwritten.
    """
    check_attention_varlen_args(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, window, softcap)
    _extension.require_kernels_for(q.device, "attention_varlen")
    if q.device.type == "cpu" and not torch.compiler.is_compiling():
        check_cu_seqlens_values(cu_seqlens_q, "cu_seqlens_q", q.shape[0], max_seqlen_q, "max_seqlen_q")
        check_cu_seqlens_values(cu_seqlens_k, "cu_seqlens_k", k.shape[0], max_seqlen_k, "max_seqlen_k")
    return torch.ops.fastxf.attention_varlen(
        q, k, v, cu_seqlens_q, cu_seqlens_k, int(max_seqlen_q), int(max_seqlen_k), bool(causal), scale, int(window),
        float(softcap),
    )


def reference_attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, causal=False, scale=None, window=0, softcap=0.0):
    """Plain PyTorch definition in q's dtype (pass float64 inputs for a reference); also
    the recompute path of the autograd formula. One (Hq, total_q, total_k) score matrix
    over all packed rows, masked to each sequence's own block: memory-hungry on purpose,
    but free of data-dependent shapes, so the backward traces under torch.compile."""
    total_q, q_heads, head_dim = q.shape
    total_k = k.shape[0]
    group = q_heads // k.shape[1]
    cu_q, cu_k = cu_seqlens_q.long(), cu_seqlens_k.long()
    # Sequence of every packed row; a row r belongs to sequence b iff cu[b] <= r < cu[b+1].
    seq_q = torch.searchsorted(cu_q[1:], torch.arange(total_q, device=q.device), right=True)
    seq_k = torch.searchsorted(cu_k[1:], torch.arange(total_k, device=q.device), right=True)
    len_q, len_k = cu_q[1:] - cu_q[:-1], cu_k[1:] - cu_k[:-1]
    # Key position of each query inside its own sequence (bottom-right aligned), and of each key.
    pos_q = torch.arange(total_q, device=q.device) - cu_q[seq_q] + (len_k - len_q)[seq_q]
    pos_k = torch.arange(total_k, device=q.device) - cu_k[seq_k]
    ok = seq_q[:, None] == seq_k[None, :]
    if causal:
        ok &= pos_k[None, :] <= pos_q[:, None]
    if window > 0:
        ok &= pos_k[None, :] > pos_q[:, None] - window
    k = k.repeat_interleave(group, dim=1)
    v = v.repeat_interleave(group, dim=1)
    scale = head_dim**-0.5 if scale is None else scale
    scores = torch.einsum("qhd,khd->hqk", q, k) * scale
    if softcap > 0:
        scores = softcap * torch.tanh(scores / softcap)
    # As reference.attention: rows with no visible key get zero scores before the
    # softmax and zero probabilities after it (exact zeros, no NaN in the gradient).
    scores = scores.masked_fill(~ok, float("-inf")).masked_fill(~ok.any(-1, keepdim=True), 0.0)
    probs = torch.softmax(scores, dim=-1).masked_fill(~ok, 0.0)
    return torch.einsum("hqk,khd->qhd", probs, v)


@torch.library.register_fake("fastxf::attention_varlen")
def _attention_varlen_fake(
    q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal=False, scale=None, window=0, softcap=0.0
):
    # The output has q's shape, so no data-dependent size arises (no unbacked
    # symbols, no torch.library.get_ctx().new_dynamic_size): the offsets' values
    # only matter to the real kernel, which checks them.
    check_attention_varlen_args(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, window, softcap)
    return torch.empty_like(q, memory_format=torch.contiguous_format)


# The backward op, which the C++ autograd kernel (csrc/autograd.cpp) calls.
@torch.library.impl("fastxf::attention_varlen_backward", "CompositeExplicitAutograd")
def _attention_varlen_backward(
    grad_out, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, scale, window, softcap,
    output_mask,
):
    return recompute_grads(
        lambda q, k, v: (reference_attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, causal, scale, window, softcap),),
        [q, k, v],
        [grad_out],
        output_mask,
    )


@torch.library.register_fake("fastxf::attention_varlen_backward")
def _attention_varlen_backward_fake(
    grad_out, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, scale, window, softcap,
    output_mask,
):
    return grads_like([q, k, v], output_mask)
