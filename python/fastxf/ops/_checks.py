"""Argument checks shared by the op wrappers and their fake kernels. They raise
ValueError naming the argument, the value and what is allowed; the C++ ops
repeat them as TORCH_CHECKs for callers of torch.ops.fastxf.* directly."""

from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_float(t: torch.Tensor, name: str, op: str) -> None:
    if t.dtype not in FLOAT_DTYPES:
        raise ValueError(f"fastxf.{op}: {name} must be float32, float16 or bfloat16, got {t.dtype}")


def check_same_device(t: torch.Tensor, ref: torch.Tensor, name: str, ref_name: str, op: str) -> None:
    if t.device != ref.device:
        raise ValueError(f"fastxf.{op}: {name} is on {t.device} but {ref_name} is on {ref.device}")


def check_norm_args(op, x, weight, bias, eps, residual, out_dtype) -> None:
    if x.dim() < 1:
        raise ValueError(f"fastxf.{op}: x must have at least 1 dimension, got a 0-dim tensor")
    check_float(x, "x", op)
    if x.shape[-1] == 0:
        raise ValueError(f"fastxf.{op}: the last dim of x (the normalised one) must be > 0")
    if eps < 0:
        raise ValueError(f"fastxf.{op}: eps must be >= 0, got {eps}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is None:
            continue
        if t.dim() != 1 or t.shape[0] != x.shape[-1]:
            raise ValueError(
                f"fastxf.{op}: {name} must have shape ({x.shape[-1]},) to match x's last dim, got {tuple(t.shape)}"
            )
        check_float(t, name, op)
        check_same_device(t, x, name, "x", op)
    if residual is not None:
        if residual.shape != x.shape:
            raise ValueError(f"fastxf.{op}: residual must have x's shape {tuple(x.shape)}, got {tuple(residual.shape)}")
        if residual.dtype != x.dtype:
            raise ValueError(f"fastxf.{op}: residual must have x's dtype {x.dtype}, got {residual.dtype}")
        check_same_device(residual, x, "residual", "x", op)
    if out_dtype is not None and out_dtype not in FLOAT_DTYPES:
        raise ValueError(f"fastxf.{op}: out_dtype must be float32, float16 or bfloat16, got {out_dtype}")


def check_attention_args(q, k, v, key_padding_mask, q_offset, window, softcap, alibi_slopes=None) -> None:
    op = "attention"
    for name, t, dims in (
        ("q", q, "(batch, q_heads, q_len, head_dim)"),
        ("k", k, "(batch, kv_heads, k_len, head_dim)"),
        ("v", v, "(batch, kv_heads, k_len, head_dim)"),
    ):
        if t.dim() != 4:
            raise ValueError(f"fastxf.attention: {name} must be 4-D {dims}, got shape {tuple(t.shape)}")
        if t.shape[-1] > 1 and t.stride(-1) != 1:
            raise ValueError(
                f"fastxf.attention: {name}'s last dim must be contiguous (stride 1), got stride {t.stride(-1)}"
            )
    check_float(q, "q", op)
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"fastxf.attention: q, k and v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    check_same_device(k, q, "k", "q", op)
    check_same_device(v, q, "v", "q", op)
    if k.shape != v.shape:
        raise ValueError(f"fastxf.attention: k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    if k.shape[0] != q.shape[0]:
        raise ValueError(f"fastxf.attention: k has batch {k.shape[0]} but q has batch {q.shape[0]}")
    if k.shape[3] != q.shape[3]:
        raise ValueError(f"fastxf.attention: k has head_dim {k.shape[3]} but q has head_dim {q.shape[3]}")
    if q.shape[3] == 0:
        raise ValueError("fastxf.attention: head_dim must be > 0")
    if k.shape[1] == 0 or q.shape[1] % k.shape[1] != 0:
        raise ValueError(f"fastxf.attention: q_heads ({q.shape[1]}) must be a multiple of kv_heads ({k.shape[1]})")
    if key_padding_mask is not None:
        if key_padding_mask.dtype != torch.bool:
            raise ValueError(f"fastxf.attention: key_padding_mask must be bool (True = attend), got {key_padding_mask.dtype}")
        if tuple(key_padding_mask.shape) != (q.shape[0], k.shape[2]):
            raise ValueError(
                f"fastxf.attention: key_padding_mask must have shape (batch, k_len) = ({q.shape[0]}, {k.shape[2]}), "
                f"got {tuple(key_padding_mask.shape)}"
            )
        check_same_device(key_padding_mask, q, "key_padding_mask", "q", op)
    if q_offset is not None:
        if q_offset.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"fastxf.attention: q_offset must be an int32 or int64 tensor, got {q_offset.dtype}")
        if not (q_offset.dim() == 0 or (q_offset.dim() == 1 and q_offset.shape[0] in (1, q.shape[0]))):
            raise ValueError(
                f"fastxf.attention: q_offset must have shape (), (1,) or (batch,) = ({q.shape[0]},), "
                f"got {tuple(q_offset.shape)}"
            )
        check_same_device(q_offset, q, "q_offset", "q", op)
    if window < 0:
        raise ValueError(f"fastxf.attention: window must be >= 0 (0 = no sliding window), got {window}")
    if softcap < 0:
        raise ValueError(f"fastxf.attention: softcap must be >= 0 (0 = no softcap), got {softcap}")
    if alibi_slopes is not None:
        if alibi_slopes.dtype != torch.float32:
            raise ValueError(f"fastxf.attention: alibi_slopes must be float32, got {alibi_slopes.dtype}")
        batch, q_heads = q.shape[0], q.shape[1]
        if tuple(alibi_slopes.shape) not in ((q_heads,), (batch, q_heads)):
            raise ValueError(
                f"fastxf.attention: alibi_slopes must have shape (q_heads,) = ({q_heads},) or "
                f"(batch, q_heads) = ({batch}, {q_heads}), got {tuple(alibi_slopes.shape)}"
            )
        check_same_device(alibi_slopes, q, "alibi_slopes", "q", op)


def check_attention_varlen_args(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, window, softcap) -> None:
    """Metadata checks only (shapes, dtypes, devices): the offsets' values are data, checked by
    check_cu_seqlens_values on CPU and by the C++ op, never while tracing."""
    op = "attention_varlen"
    for name, t, dims in (
        ("q", q, "(total_q, q_heads, head_dim)"),
        ("k", k, "(total_k, kv_heads, head_dim)"),
        ("v", v, "(total_k, kv_heads, head_dim)"),
    ):
        if t.dim() != 3:
            raise ValueError(f"fastxf.{op}: {name} must be 3-D {dims}, got shape {tuple(t.shape)}")
        if t.shape[-1] > 1 and t.stride(-1) != 1:
            raise ValueError(f"fastxf.{op}: {name}'s last dim must be contiguous (stride 1), got stride {t.stride(-1)}")
    check_float(q, "q", op)
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"fastxf.{op}: q, k and v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    check_same_device(k, q, "k", "q", op)
    check_same_device(v, q, "v", "q", op)
    if k.shape != v.shape:
        raise ValueError(f"fastxf.{op}: k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    if k.shape[2] != q.shape[2] or q.shape[2] == 0:
        raise ValueError(f"fastxf.{op}: k has head_dim {k.shape[2]} but q has head_dim {q.shape[2]} (must match, > 0)")
    if k.shape[1] == 0 or q.shape[1] % k.shape[1] != 0:
        raise ValueError(f"fastxf.{op}: q_heads ({q.shape[1]}) must be a multiple of kv_heads ({k.shape[1]})")
    for name, cu in (("cu_seqlens_q", cu_seqlens_q), ("cu_seqlens_k", cu_seqlens_k)):
        if cu.dtype != torch.int32:
            raise ValueError(f"fastxf.{op}: {name} must be int32 (flash_attn_varlen_func's convention), got {cu.dtype}")
        if cu.dim() != 1 or cu.shape[0] < 1:
            raise ValueError(f"fastxf.{op}: {name} must be 1-D (batch + 1,), got shape {tuple(cu.shape)}")
        check_same_device(cu, q, name, "q", op)
    if cu_seqlens_q.shape != cu_seqlens_k.shape:
        raise ValueError(
            f"fastxf.{op}: cu_seqlens_q and cu_seqlens_k must have the same length (batch + 1), got "
            f"{cu_seqlens_q.shape[0]} and {cu_seqlens_k.shape[0]}"
        )
    for name, m in (("max_seqlen_q", max_seqlen_q), ("max_seqlen_k", max_seqlen_k)):
        if m < 0:
            raise ValueError(f"fastxf.{op}: {name} must be >= 0, got {m}")
    if window < 0:
        raise ValueError(f"fastxf.{op}: window must be >= 0 (0 = no sliding window), got {window}")
    if softcap < 0:
        raise ValueError(f"fastxf.{op}: softcap must be >= 0 (0 = no softcap), got {softcap}")


def check_cu_seqlens_values(cu: torch.Tensor, name: str, total: int, max_seqlen: int, max_name: str) -> None:
    """Value checks of one offsets tensor (reads it: call on CPU tensors, outside tracing)."""
    op = "attention_varlen"
    vals = cu.tolist()
    if vals[0] != 0:
        raise ValueError(f"fastxf.{op}: {name}[0] must be 0, got {vals[0]}")
    for i in range(1, len(vals)):
        n = vals[i] - vals[i - 1]
        if n < 0:
            raise ValueError(f"fastxf.{op}: {name} must be non-decreasing, got {name}[{i}] = {vals[i]} < {vals[i - 1]}")
        if n > max_seqlen:
            raise ValueError(f"fastxf.{op}: {max_name} = {max_seqlen} is smaller than sequence {i - 1}'s length {n}")
    if vals[-1] != total:
        raise ValueError(f"fastxf.{op}: the last entry of {name} must equal the number of packed rows ({total}), got {vals[-1]}")
