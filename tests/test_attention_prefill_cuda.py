"""CUDA prefill attention (csrc/attention/prefill_*) against the float64 reference.

Accuracy bar: the kernel's max error against reference.attention in float64 must
be at most 2x the error of the same math done by torch in the kernel's dtype
(reference.attention on fp16 / bf16 CUDA inputs: matmuls with fp32 accumulation
and a rounded score matrix), plus a small absolute floor for cases where that
baseline is exact (e.g. outputs that are all zeros). Rows with no visible key
must be exact zeros.

Note: the op sends q_len <= 16 to the decode kernel first when it takes the
problem; the short-query cases here then test that path, the rest the prefill
kernel.
"""

import pytest
import torch

import fastxf
from fastxf.ops import reference
from fastxf.ops.attention_varlen import reference_attention_varlen

pytestmark = pytest.mark.cuda

DTYPES = [torch.float16, torch.bfloat16]
# Instantiated head dims, then ones padded up inside the kernel (40 -> 64, 80 / 96 -> 128, 160 -> 256),
# then one that is not a multiple of 8 (zero-padded copy to 40, runs on 64).
HEAD_DIMS = [32, 64, 128, 256]
PADDED_HEAD_DIMS = [40, 80, 96, 160, 36]
DEV = "cuda"  # a module constant so the harness can be dry-run against the CPU kernel
FLOOR = {torch.float16: 1e-3, torch.bfloat16: 8e-3}  # ~ one rounding of an O(1) output


def _rand(*shape, dtype):
    return torch.randn(*shape, device=DEV, dtype=torch.float32).to(dtype)


def _check(q, k, v, **kw):
    out = fastxf.ops.attention(q, k, v, **kw)
    assert out.shape == q.shape and out.dtype == q.dtype and out.device == q.device
    assert torch.isfinite(out).all(), "non-finite output"
    ref = reference.attention(q.double(), k.double(), v.double(), **kw)
    same_dtype = reference.attention(q, k, v, **kw)
    err = (out.double() - ref).abs().max().item()
    base = (same_dtype.double() - ref).abs().max().item()
    assert err <= 2 * base + FLOOR[q.dtype], f"max error {err:.3g} vs torch-in-{q.dtype} {base:.3g}"
    # Rows that see no key are exact zeros.
    ok = reference.visible_keys(
        q.shape[0], q.shape[2], k.shape[2], q.device, kw.get("key_padding_mask"), kw.get("q_offset"),
        kw.get("causal", False), kw.get("window", 0),
    )[:, 0].any(-1)  # (B, Sq)
    empty = ~ok
    if empty.any():
        assert (out.transpose(1, 2)[empty] == 0).all(), "rows with no visible key must be zeros"
    return out


def _qkv(B, Hq, Hkv, Sq, Sk, D, dtype):
    return _rand(B, Hq, Sq, D, dtype=dtype), _rand(B, Hkv, Sk, D, dtype=dtype), _rand(B, Hkv, Sk, D, dtype=dtype)


# (B, Hq, Hkv, Sq, Sk, causal): equal lengths, chunked prefill (Sq < Sk), Sq > Sk with causal
# (the first rows see no key), odd lengths, one query.
SHAPES = [
    (2, 4, 4, 97, 97, False),
    (2, 4, 4, 97, 97, True),
    (1, 2, 2, 17, 1025, True),
    (1, 2, 2, 130, 65, True),
    (1, 2, 2, 1, 97, False),
    (1, 2, 1, 1025, 1025, True),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_shapes(dtype, head_dim, shape):
    B, Hq, Hkv, Sq, Sk, causal = shape
    _check(*_qkv(B, Hq, Hkv, Sq, Sk, head_dim, dtype), causal=causal)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("head_dim", PADDED_HEAD_DIMS)
@pytest.mark.parametrize("causal", [False, True])
def test_padded_head_dims(dtype, head_dim, causal):
    _check(*_qkv(2, 3, 3, 70, 133, head_dim, dtype), causal=causal)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("kv_heads", [2, 1], ids=["gqa", "mqa"])
def test_gqa_mqa(dtype, head_dim, kv_heads):
    _check(*_qkv(2, 8, kv_heads, 200, 200, head_dim, dtype), causal=True)
    _check(*_qkv(1, 8, kv_heads, 33, 300, head_dim, dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("causal", [False, True])
def test_key_padding_mask(dtype, head_dim, causal):
    B, Sk = 5, 600
    mask = torch.ones(B, Sk, dtype=torch.bool, device=DEV)
    mask[0, :250] = False  # left padding
    mask[1, 401:] = False  # right padding
    mask[2] = False  # fully masked sequence -> zeros
    mask[3, 130:400] = False  # hole spanning whole key tiles (skipped) and partial ones
    mask[4, ::3] = False  # scattered
    for Sq in (Sk, 70):  # prefill and chunked prefill
        _check(*_qkv(B, 4, 2, Sq, Sk, head_dim, dtype), causal=causal, key_padding_mask=mask)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("head_dim", [64, 128])
def test_q_offset_window_softcap(dtype, head_dim):
    q, k, v = _qkv(3, 4, 2, 90, 400, head_dim, dtype)
    off = torch.tensor([0, 150, 310], dtype=torch.int32, device=DEV)
    _check(q, k, v, causal=True, q_offset=off)
    _check(q, k, v, causal=True, q_offset=torch.tensor(-20, device=DEV))  # first rows see nothing
    _check(q, k, v, causal=True, window=64)
    _check(q, k, v, causal=True, window=17, q_offset=off)
    _check(q, k, v, window=100, q_offset=off)  # window without causal: keys in (p - 100, Sk)
    _check(q, k, v, causal=True, softcap=2.0)
    _check(q, k, v, softcap=30.0, scale=0.3)
    mask = torch.rand(3, 400, device=DEV) > 0.2
    _check(q, k, v, causal=True, window=50, softcap=5.0, q_offset=off, key_padding_mask=mask)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("head_dim", [64, 128])
def test_strided_views(dtype, head_dim):
    # Hugging Face layout: (B, S, H, D) tensors handed over as transposed views.
    B, Hq, Hkv, Sq, Sk = 2, 4, 2, 77, 77
    q = _rand(B, Sq, Hq, head_dim, dtype=dtype).transpose(1, 2)
    kv = _rand(B, Sk, 2 * Hkv, head_dim, dtype=dtype)  # fused kv projection: split on the head dim
    k, v = kv[:, :, :Hkv].transpose(1, 2), kv[:, :, Hkv:].transpose(1, 2)
    _check(q, k, v, causal=True)
    # A KV cache longer than the keys in use (batch / head strides differ between q, k, v).
    cache_k = _rand(B, Hkv, 300, head_dim, dtype=dtype)
    cache_v = _rand(2 * B, Hkv, 256, head_dim, dtype=dtype)[::2]
    _check(q, cache_k[:, :, :200], cache_v[:, :, :200], causal=True)
    # A view whose base is not 16-byte aligned (the dispatcher copies it).
    flat = _rand(B * Hq * Sq * head_dim + 1, dtype=dtype)
    q_odd = flat[1:].view(B, Hq, Sq, head_dim)
    _check(q_odd, k, v, causal=True)


def _alibi_slopes(batch, heads):
    """(batch, heads) ALiBi slopes from 2^-8 to 2 per key (BLOOM's range and steeper), varied per sequence."""
    s = torch.logspace(-8, 1, heads, base=2.0)
    return (s[None, :] * torch.linspace(0.5, 1.5, batch)[:, None]).to(DEV)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("head_dim", HEAD_DIMS + [80])
@pytest.mark.parametrize("causal", [False, True])
def test_alibi(dtype, head_dim, causal):
    # GQA, per-(batch, head) and per-head slopes, chunked prefill and Sq > Sk.
    slopes = _alibi_slopes(2, 8)
    _check(*_qkv(2, 8, 2, 200, 200, head_dim, dtype), causal=causal, alibi_slopes=slopes)
    _check(*_qkv(2, 8, 2, 33, 300, head_dim, dtype), causal=causal, alibi_slopes=slopes[1])
    _check(*_qkv(2, 8, 8, 130, 65, head_dim, dtype), causal=causal, alibi_slopes=slopes)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("head_dim", [64, 128])
def test_alibi_with_masks_offsets_window_softcap(dtype, head_dim):
    q, k, v = _qkv(3, 4, 2, 90, 400, head_dim, dtype)
    slopes = _alibi_slopes(3, 4)
    off = torch.tensor([0, 150, 310], dtype=torch.int32, device=DEV)
    mask = torch.ones(3, 400, dtype=torch.bool, device=DEV)
    mask[0, :120] = False  # left padding (BLOOM batches)
    mask[1, 350:] = False
    mask[2, ::3] = False
    _check(q, k, v, causal=True, q_offset=off, key_padding_mask=mask, alibi_slopes=slopes)
    _check(q, k, v, causal=True, q_offset=torch.tensor(-20, device=DEV), alibi_slopes=slopes)  # empty rows
    _check(q, k, v, causal=True, window=50, softcap=5.0, q_offset=off, key_padding_mask=mask, alibi_slopes=slopes)
    _check(q, k, v, window=100, q_offset=off, alibi_slopes=slopes[0])


def test_long_sequence():
    _check(*_qkv(1, 2, 1, 2500, 2500, 128, torch.bfloat16), causal=True)
    _check(*_qkv(1, 2, 1, 2500, 2500, 64, torch.float16))


def test_cuda_graph_capture_and_replay():
    q, k, v = _qkv(2, 4, 2, 150, 150, 128, torch.bfloat16)
    mask = torch.ones(2, 150, dtype=torch.bool, device=DEV)
    mask[1, :40] = False
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up outside the capture
        fastxf.ops.attention(q, k, v, causal=True, key_padding_mask=mask)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fastxf.ops.attention(q, k, v, causal=True, key_padding_mask=mask)
    for _ in range(2):
        q.copy_(torch.randn_like(q))
        k.copy_(torch.randn_like(k))
        graph.replay()
        torch.cuda.synchronize()
        ref = reference.attention(q.double(), k.double(), v.double(), causal=True, key_padding_mask=mask)
        assert (out.double() - ref).abs().max().item() < 3e-2


def test_side_stream():
    q, k, v = _qkv(2, 4, 4, 300, 300, 64, torch.float16)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        out = fastxf.ops.attention(q, k, v, causal=True)
    torch.cuda.current_stream().wait_stream(side)
    ref = reference.attention(q.double(), k.double(), v.double(), causal=True)
    assert (out.double() - ref).abs().max().item() < 5e-3


def test_float32_is_a_clear_error():
    q, k, v = _qkv(1, 2, 2, 64, 64, 64, torch.float32)
    with pytest.raises(RuntimeError, match="float16/bfloat16; got float32"):
        fastxf.ops.attention(q, k, v)


# ------------------------------------------------------------------ varlen ----
# fastxf.attention_varlen on the prefill kernel's varlen variant, against the
# float64 block-diagonal reference (same bar as _check: 2x the error of torch in
# the kernel's dtype, plus the floor). Mirrors tests/test_emulated_varlen.py at
# GPU sizes.

def _cu(lengths):
    return torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32, device=DEV)


def _packed(lens_q, lens_k, Hq, Hkv, D, dtype):
    q = _rand(sum(lens_q), Hq, D, dtype=dtype)
    k, v = _rand(sum(lens_k), Hkv, D, dtype=dtype), _rand(sum(lens_k), Hkv, D, dtype=dtype)
    return q, k, v, _cu(lens_q), _cu(lens_k)


def _check_varlen(q, k, v, cu_q, cu_k, **kw):
    lq, lk = cu_q.diff(), cu_k.diff()
    out = fastxf.ops.attention_varlen(q, k, v, cu_q, cu_k, int(lq.max()), int(lk.max()), **kw)
    assert out.shape == q.shape and out.dtype == q.dtype and out.device == q.device and out.is_contiguous()
    assert torch.isfinite(out).all(), "non-finite output"
    ref = reference_attention_varlen(q.double(), k.double(), v.double(), cu_q, cu_k, **kw)
    same_dtype = reference_attention_varlen(q, k, v, cu_q, cu_k, **kw)
    err = (out.double() - ref).abs().max().item()
    base = (same_dtype.double() - ref).abs().max().item()
    assert err <= 2 * base + FLOOR[q.dtype], f"max error {err:.3g} vs torch-in-{q.dtype} {base:.3g}"
    # Queries of sequences without keys are exact zeros.
    for b in range(lq.numel()):
        if lk[b] == 0 and lq[b] > 0:
            assert (out[cu_q[b] : cu_q[b + 1]] == 0).all()
    return out


VARLEN_CASES = {
    "mixed": ([5, 0, 300, 1, 129, 64], [9, 3, 300, 1, 0, 200]),
    "many_short": ([1 + (i * 7) % 61 for i in range(100)], [1 + (i * 11) % 61 for i in range(100)]),
    "long": ([1500, 700], [1500, 900]),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("head_dim", HEAD_DIMS + [80, 36])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("case", list(VARLEN_CASES))
def test_varlen(dtype, head_dim, causal, case):
    _check_varlen(*_packed(*VARLEN_CASES[case], 8, 2, head_dim, dtype), causal=causal)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("heads", [(8, 8), (8, 1)], ids=["mha", "mqa"])
def test_varlen_window_softcap_strided(dtype, heads):
    lens = [77, 300, 5, 150]
    q, k, v, cu_q, cu_k = _packed(lens, lens, *heads, 128, dtype)
    _check_varlen(q, k, v, cu_q, cu_k, causal=True, window=40, softcap=5.0, scale=0.2)
    qkv = _rand(sum(lens), 3, heads[0], 64, dtype=dtype)  # packed qkv projection (total, 3, H, D)
    _check_varlen(*qkv.unbind(1), cu_q, cu_q, causal=True)


def test_varlen_bad_offsets_stay_in_bounds():
    # No host check of the offsets on CUDA: the kernel clamps them (run under
    # compute-sanitizer by scripts/sanitizer_smoke.py for the memory side).
    q, k, v, cu_q, cu_k = _packed([100, 60], [100, 60], 4, 2, 64, torch.float16)
    bad = torch.tensor([0, 100, 10**6], dtype=torch.int32, device=DEV)
    out = torch.ops.fastxf.attention_varlen(q, k, v, bad, bad, 10**6, 10**6, True, None, 0, 0.0)
    ref = reference_attention_varlen(q.double(), k.double(), v.double(), cu_q, cu_k, causal=True)
    assert (out.double() - ref).abs().max().item() < 1e-2


def test_varlen_float32_is_a_clear_error():
    q, k, v, cu_q, cu_k = _packed([3, 4], [3, 4], 2, 2, 64, torch.float32)
    with pytest.raises(RuntimeError, match="float16/bfloat16; got float32"):
        fastxf.ops.attention_varlen(q, k, v, cu_q, cu_k, 4, 4)
