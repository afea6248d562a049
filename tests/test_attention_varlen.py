"""fastxf.ops.attention_varlen against a float64 block-diagonal reference.

The reference here is written independently of the op's per-sequence loop: one
(total_q, total_k) score matrix over all packed rows, masked to each sequence's
own block (plus the per-sequence causal / window rule), softmax in float64.

Tolerances (as tests/test_attention.py, for the same reasons): fp32 within 2e-5
of the largest output (fp32 throughout; observed ~1e-6); fp16 / bf16 within 2x
the error the same reference computed in that dtype makes, plus one epsilon of
the dtype times the largest output (the final rounding).
"""

from __future__ import annotations

import pytest
import torch

import fastxf.ops
from fastxf.ops.attention_varlen import reference_attention_varlen

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def cu(lengths):
    return torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)


def packed(lens_q, lens_k, Hq, Hkv, D, dtype):
    q = torch.randn(sum(lens_q), Hq, D).to(dtype)
    k = torch.randn(sum(lens_k), Hkv, D).to(dtype)
    v = torch.randn(sum(lens_k), Hkv, D).to(dtype)
    return q, k, v, cu(lens_q), cu(lens_k)


def block_reference(q, k, v, cu_q, cu_k, causal=False, scale=None, window=0, softcap=0.0):
    """float64 attention over the packed rows with a block-diagonal visibility mask."""
    q, k, v = q.double(), k.double(), v.double()
    Tq, Hq, D = q.shape
    group = Hq // k.shape[1]
    k = k.repeat_interleave(group, dim=1)
    v = v.repeat_interleave(group, dim=1)
    seg_q = torch.repeat_interleave(torch.arange(len(cu_q) - 1), (cu_q[1:] - cu_q[:-1]).long())
    seg_k = torch.repeat_interleave(torch.arange(len(cu_k) - 1), (cu_k[1:] - cu_k[:-1]).long())
    # Key position p of every query inside its own sequence (bottom-right aligned) and key index j.
    nq, nk = (cu_q[1:] - cu_q[:-1]).long(), (cu_k[1:] - cu_k[:-1]).long()
    pos_q = torch.arange(Tq) - cu_q[:-1].long()[seg_q] + (nk - nq)[seg_q]
    pos_k = torch.arange(k.shape[0]) - cu_k[:-1].long()[seg_k]
    ok = seg_q[:, None] == seg_k[None, :]
    if causal:
        ok &= pos_k[None, :] <= pos_q[:, None]
    if window > 0:
        ok &= pos_k[None, :] > pos_q[:, None] - window
    scale = D**-0.5 if scale is None else scale
    s = torch.einsum("qhd,khd->hqk", q, k) * scale
    if softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    # Rows with no visible key: zero scores before the softmax (no NaN, also in its
    # gradient), zero probabilities after it.
    s = s.masked_fill(~ok, float("-inf")).masked_fill(~ok.any(-1, keepdim=True), 0.0)
    p = torch.softmax(s, -1).masked_fill(~ok, 0.0)
    return torch.einsum("hqk,khd->qhd", p, v)


def assert_close_to_reference(out, q, k, v, cu_q, cu_k, **kw):
    assert out.shape == q.shape and out.dtype == q.dtype and out.is_contiguous()
    assert not out.isnan().any()
    want = block_reference(q, k, v, cu_q, cu_k, **kw)
    err = (out.double() - want).abs().max().item() if out.numel() else 0.0
    peak = want.abs().max().item() if want.numel() else 0.0
    if q.dtype == torch.float32:
        bound = 2e-5 * max(peak, 1.0)
    else:
        naive = reference_attention_varlen(q, k, v, cu_q, cu_k, **kw)
        naive_err = (naive.double() - want).abs().max().item() if naive.numel() else 0.0
        bound = 2 * naive_err + torch.finfo(q.dtype).eps * max(peak, 1.0)
    assert err <= bound, f"max error {err:.3g} > {bound:.3g}"


CASES = {
    # name: (lengths of q, lengths of k); self-attention unless they differ
    "odd": ([5, 1, 97, 33], [5, 1, 97, 33]),
    "empty_seqs": ([0, 7, 0, 0, 12, 0], [0, 7, 0, 0, 12, 0]),
    "cross_longer_k": ([3, 1, 17, 8], [9, 1, 40, 8]),
    "queries_without_keys": ([4, 6, 2], [5, 0, 3]),
    "many_short": ([1 + (i * 7) % 13 for i in range(40)], [1 + (i * 7) % 13 for i in range(40)]),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("heads", [(4, 4), (6, 2), (3, 1)], ids=["mha", "gqa", "mqa"])
@pytest.mark.parametrize("case", list(CASES))
def test_matches_reference(case, heads, causal, dtype):
    lens_q, lens_k = CASES[case]
    q, k, v, cu_q, cu_k = packed(lens_q, lens_k, *heads, 32, dtype)
    out = fastxf.ops.attention_varlen(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k), causal=causal)
    assert_close_to_reference(out, q, k, v, cu_q, cu_k, causal=causal)
    if case == "queries_without_keys":
        assert (out[4:10] == 0).all()  # sequence 1 has queries but no keys: exact zeros


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_window_softcap_scale(dtype):
    lens = [19, 3, 40]
    q, k, v, cu_q, cu_k = packed(lens, lens, 4, 2, 64, dtype)
    kw = dict(causal=True, window=5, softcap=8.0, scale=0.3)
    out = fastxf.ops.attention_varlen(q, k, v, cu_q, cu_k, 40, 40, **kw)
    assert_close_to_reference(out, q, k, v, cu_q, cu_k, **kw)


def test_equals_dense_op_on_each_sequence():
    # The CPU op is defined as the dense op on each sequence: bit-identical results.
    lens = [11, 29, 2]
    q, k, v, cu_q, cu_k = packed(lens, lens, 4, 2, 16, torch.float32)
    out = fastxf.ops.attention_varlen(q, k, v, cu_q, cu_k, 29, 29, causal=True)
    for b in range(3):
        s, e = cu_q[b].item(), cu_q[b + 1].item()
        dense = fastxf.ops.attention(*(t[s:e].transpose(0, 1)[None] for t in (q, k, v)), causal=True)
        torch.testing.assert_close(out[s:e], dense[0].transpose(0, 1), rtol=0, atol=0)


def test_strided_views():
    # Packed q / k / v as HF hands them: head-split views of one fused projection.
    T, H, D = 30, 4, 16
    qkv = torch.randn(T, 3 * H * D)
    q, k, v = (t.view(T, H, D) for t in qkv.split(H * D, dim=1))
    assert not q.is_contiguous()
    c = cu([10, 20])
    out = fastxf.ops.attention_varlen(q, k, v, c, c, 20, 20)
    assert_close_to_reference(out, q, k, v, c, c)


def test_empty_batch_and_zero_rows():
    q, k, v, cu_q, cu_k = packed([], [], 4, 2, 16, torch.float32)
    assert cu_q.tolist() == [0]
    out = fastxf.ops.attention_varlen(q, k, v, cu_q, cu_k, 0, 0)
    assert out.shape == (0, 4, 16)
    q, k, v, cu_q, cu_k = packed([0, 0], [0, 0], 4, 2, 16, torch.float32)
    assert fastxf.ops.attention_varlen(q, k, v, cu_q, cu_k, 0, 0).shape == (0, 4, 16)


def bad_cases():
    lens = [3, 5]
    q, k, v, cu_q, cu_k = packed(lens, lens, 4, 2, 16, torch.float32)
    good = dict(q=q, k=k, v=v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=5, max_seqlen_k=5)
    i32 = lambda *x: torch.tensor(x, dtype=torch.int32)  # noqa: E731
    return [
        ("non_monotonic", dict(cu_seqlens_q=i32(0, 5, 3)), "non-decreasing"),
        ("wrong_length", dict(cu_seqlens_q=i32(0, 8)), "same length"),
        ("last_not_total", dict(cu_seqlens_k=i32(0, 3, 7)), "last entry of cu_seqlens_k"),
        ("first_not_zero", dict(cu_seqlens_q=i32(1, 3, 8)), r"cu_seqlens_q\[0\] must be 0"),
        ("int64", dict(cu_seqlens_q=cu_q.long()), "int32"),
        ("2d", dict(cu_seqlens_q=cu_q[None]), "1-D"),
        ("max_too_small", dict(max_seqlen_k=4), "max_seqlen_k = 4 is smaller"),
        ("negative_max", dict(max_seqlen_q=-1), "max_seqlen_q"),
        ("q_4d", dict(q=q[None]), "3-D"),
        ("heads", dict(q=torch.randn(8, 3, 16)), "multiple of kv_heads"),
        ("head_dim", dict(q=torch.randn(8, 4, 8)), "head_dim"),
        ("dtype_mix", dict(k=k.half(), v=v.half()), "one dtype"),
        ("int_q", dict(q=q.int()), "float32, float16 or bfloat16"),
        ("cu_device", dict(cu_seqlens_q=cu_q.to("meta")), "is on meta"),
    ], good


@pytest.mark.parametrize("name", [c[0] for c in bad_cases()[0]])
def test_bad_inputs(name):
    cases, good = bad_cases()
    change, what = next((c, w) for n, c, w in cases if n == name)
    args = dict(good, **change)
    with pytest.raises(ValueError, match=what):
        fastxf.ops.attention_varlen(**args)
    # The C++ op checks the same things for callers of torch.ops.fastxf.* directly.
    if name not in ("cu_device",):
        with pytest.raises(RuntimeError, match=what):
            torch.ops.fastxf.attention_varlen(*args.values())


def test_window_and_softcap_must_be_non_negative():
    q, k, v, cu_q, cu_k = packed([3], [3], 2, 2, 8, torch.float32)
    with pytest.raises(ValueError, match="window"):
        fastxf.ops.attention_varlen(q, k, v, cu_q, cu_k, 3, 3, window=-1)
    with pytest.raises(ValueError, match="softcap"):
        fastxf.ops.attention_varlen(q, k, v, cu_q, cu_k, 3, 3, softcap=-1.0)


def test_cuda_kernel_registered_in_cuda_builds():
    # The CUDA kernel (the prefill kernel's varlen variant) is registered exactly
    # when the CUDA kernels were built (checked without a GPU; its tests are in
    # tests/test_attention_prefill_cuda.py and, emulated, tests/test_emulated_varlen.py).
    from fastxf import _extension

    has = torch._C._dispatch_has_kernel_for_dispatch_key("fastxf::attention_varlen", "CUDA")
    assert has == _extension.cuda_kernels_built()


# --------------------------------------------------------------------- torch integration


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("causal", [False, True])
def test_opcheck(dtype, causal):
    lens_q, lens_k = [3, 0, 9, 1], [5, 0, 9, 2]
    q, k, v, cu_q, cu_k = packed(lens_q, lens_k, 4, 2, 16, dtype)
    q.requires_grad_(dtype == torch.float32)
    args = (q, k, v, cu_q, cu_k, 9, 9, causal, None, 0, 0.0)
    torch.library.opcheck(torch.ops.fastxf.attention_varlen.default, args)


def test_meta_tensors():
    q = torch.empty(50, 8, 64, device="meta", dtype=torch.bfloat16)
    k = torch.empty(70, 2, 64, device="meta", dtype=torch.bfloat16)
    c = torch.empty(4, dtype=torch.int32, device="meta")
    out = fastxf.ops.attention_varlen(q, k, k, c, c, 30, 30, causal=True)
    assert out.shape == q.shape and out.dtype == q.dtype and out.device.type == "meta" and out.is_contiguous()


@pytest.mark.parametrize("dynamic", [False, True])
def test_torch_compile_fullgraph(dynamic):
    # The output has q's shape, so the fake kernel needs no data-dependent size and
    # the whole block traces as one graph (offsets stay runtime data).
    def block(q, k, v, cu_q, cu_k):
        o = fastxf.ops.attention_varlen(q, k, v, cu_q, cu_k, 23, 23, causal=True)
        return o.flatten(1) * 2

    compiled = torch.compile(block, fullgraph=True, backend="aot_eager", dynamic=dynamic)
    for lens in ([7, 23, 1], [4, 4, 9, 11]):
        q, k, v, cu_q, cu_k = packed(lens, lens, 4, 2, 16, torch.float32)
        torch.testing.assert_close(compiled(q, k, v, cu_q, cu_k), block(q, k, v, cu_q, cu_k), rtol=0, atol=0)


def test_autograd_matches_reference():
    lens_q, lens_k = [4, 7, 2], [6, 0, 5]
    q, k, v, cu_q, cu_k = packed(lens_q, lens_k, 4, 2, 16, torch.float32)
    grad = torch.randn_like(q)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    fastxf.ops.attention_varlen(*leaves, cu_q, cu_k, 7, 6, causal=True).backward(grad)
    ref = [t.double().requires_grad_() for t in (q, k, v)]
    block_reference(*ref, cu_q, cu_k, causal=True).backward(grad.double())
    for name, a, b in zip("qkv", leaves, ref):
        torch.testing.assert_close(a.grad.double(), b.grad, rtol=1e-4, atol=1e-5, msg=f"d{name}")
