"""Plain PyTorch definitions of fastxf's ops: the specification the kernels are
tested against (run them in float64), and the recompute path of the autograd
formulas. Slow and memory-hungry on purpose: nothing here is tiled."""

from __future__ import annotations

import torch


def layer_norm(x, weight=None, bias=None, eps=1e-5, residual=None, out_dtype=None):
    """Reference fastxf.layer_norm; returns (out, new_residual or None)."""
    s = x if residual is None else (x.float() + residual.float()).to(x.dtype)
    sf = s.double() if s.dtype == torch.float64 else s.float()
    mean = sf.mean(-1, keepdim=True)
    var = (sf - mean).pow(2).mean(-1, keepdim=True)
    out = (sf - mean) * torch.rsqrt(var + eps)
    if weight is not None:
        out = out * weight.to(out.dtype)
    if bias is not None:
        out = out + bias.to(out.dtype)
    return out.to(out_dtype or x.dtype), (None if residual is None else s)


def rms_norm(x, weight=None, eps=1e-6, residual=None, unit_offset=False, out_dtype=None):
    """Reference fastxf.rms_norm; returns (out, new_residual or None)."""
    s = x if residual is None else (x.float() + residual.float()).to(x.dtype)
    sf = s.double() if s.dtype == torch.float64 else s.float()
    out = sf * torch.rsqrt(sf.pow(2).mean(-1, keepdim=True) + eps)
    if weight is not None:
        w = weight.to(out.dtype)
        out = out * (1 + w if unit_offset else w)
    return out.to(out_dtype or x.dtype), (None if residual is None else s)


def visible_keys(batch, q_len, k_len, device, key_padding_mask=None, q_offset=None, causal=False, window=0):
    """(B, 1, Sq, Sk) bool: which keys each query row may attend to."""
    pos = query_positions(batch, q_len, k_len, device, q_offset)  # (B, Sq)
    key = torch.arange(k_len, device=device)[None, None, :]  # (1, 1, Sk)
    ok = torch.ones(batch, q_len, k_len, dtype=torch.bool, device=device)
    if causal:
        ok &= key <= pos[:, :, None]
    if window > 0:
        ok &= key > pos[:, :, None] - window
    if key_padding_mask is not None:
        ok &= key_padding_mask[:, None, :].to(device)
    return ok[:, None]


def query_positions(batch, q_len, k_len, device, q_offset=None):
    """(B, Sq) long: the key position p of every query row."""
    if q_offset is None:
        offset = torch.full((batch,), k_len - q_len, device=device, dtype=torch.long)
    else:
        offset = q_offset.reshape(-1).expand(batch).to(device=device, dtype=torch.long)
    return offset[:, None] + torch.arange(q_len, device=device)[None, :]


def attention(
    q, k, v, key_padding_mask=None, q_offset=None, causal=False, scale=None, window=0, softcap=0.0, alibi_slopes=None
):
    """Reference fastxf.attention in q's dtype (pass float64 inputs for a reference)."""
    batch, q_heads, q_len, head_dim = q.shape
    group = q_heads // k.shape[1]
    k = k.repeat_interleave(group, dim=1)
    v = v.repeat_interleave(group, dim=1)
    scale = head_dim**-0.5 if scale is None else scale
    scores = (q @ k.transpose(-1, -2)) * scale
    if softcap > 0:
        scores = softcap * torch.tanh(scores / softcap)
    if alibi_slopes is not None:
        pos = query_positions(batch, q_len, k.shape[2], q.device, q_offset)  # (B, Sq)
        dist = (pos[:, :, None] - torch.arange(k.shape[2], device=q.device)).abs()  # (B, Sq, Sk)
        slopes = alibi_slopes.to(scores.dtype).expand(batch, q_heads)
        scores = scores - slopes[:, :, None, None] * dist[:, None].to(scores.dtype)
    ok = visible_keys(batch, q_len, k.shape[2], q.device, key_padding_mask, q_offset, causal, window)
    # Rows with no visible key give zeros. They get all-zero scores before the
    # softmax (not all -inf, whose softmax is NaN) and are zeroed after it, so
    # the forward is exact and the gradient (used by the op's autograd) has no NaN.
    any_ok = ok.any(dim=-1, keepdim=True)
    scores = scores.masked_fill(~ok, float("-inf")).masked_fill(~any_ok, 0.0)
    probs = torch.softmax(scores, dim=-1).masked_fill(~ok, 0.0)
    return probs @ v
