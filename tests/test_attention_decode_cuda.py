"""CUDA decode path of fastxf.attention (csrc/attention/decode_*): short queries
(q_len 1..16) over a KV cache, split-KV with an exact merge.

Accuracy rule (design.md): against the float64 reference, fastxf's max error is
at most twice that of the same reference math run in the input dtype (which
rounds scores and probabilities to fp16 / bf16), plus a small absolute floor for
cases where the low-precision reference happens to be almost exact.
"""

import pytest
import torch

import fastxf
from fastxf.ops import reference

pytestmark = pytest.mark.cuda

DTYPES = [torch.float16, torch.bfloat16]
# Floor: a few output ulps (outputs are averages of randn values, |o| < ~3).
FLOOR = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def rand(*shape, dtype=torch.bfloat16):
    return torch.randn(*shape, device="cuda", dtype=dtype)


def check(q, k, v, *, causal=False, scale=None, key_padding_mask=None, q_offset=None, window=0, softcap=0.0,
          alibi_slopes=None, out=None):
    if out is None:
        out = fastxf.ops.attention(
            q, k, v, causal=causal, scale=scale, key_padding_mask=key_padding_mask, q_offset=q_offset,
            window=window, softcap=softcap, alibi_slopes=alibi_slopes,
        )
    kw = dict(key_padding_mask=key_padding_mask, q_offset=q_offset, causal=causal, scale=scale, window=window,
              softcap=softcap, alibi_slopes=alibi_slopes)
    ref = reference.attention(q.double(), k.double(), v.double(), **kw)
    low = reference.attention(q, k, v, **kw).double()
    assert out.shape == q.shape and out.dtype == q.dtype
    assert torch.isfinite(out).all(), "NaN / inf in the output"
    err = (out.double() - ref).abs().max().item()
    err_low = (low - ref).abs().max().item()
    assert err <= 2 * err_low + FLOOR[q.dtype], f"max error {err:.3e} vs {err_low:.3e} of the {q.dtype} reference"
    return out


def qkv(batch, hq, hkv, q_len, k_len, d=128, dtype=torch.bfloat16):
    return rand(batch, hq, q_len, d, dtype=dtype), rand(batch, hkv, k_len, d, dtype=dtype), rand(
        batch, hkv, k_len, d, dtype=dtype
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("q_len", [1, 4, 16])
@pytest.mark.parametrize("k_len", [1, 97, 1025, 4099])
@pytest.mark.parametrize("heads", [(8, 8), (32, 8), (16, 1)], ids=["mha", "gqa", "mqa"])
@pytest.mark.parametrize("batch", [1, 3])
def test_shapes(dtype, q_len, k_len, heads, batch):
    hq, hkv = heads
    q, k, v = qkv(batch, hq, hkv, q_len, k_len, dtype=dtype)
    check(q, k, v, causal=q_len > 1)
    if q_len > 1 and k_len >= q_len:
        check(q, k, v, causal=False)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [32, 64, 80, 96, 128, 256])
@pytest.mark.parametrize("q_len,k_len", [(1, 97), (4, 1025), (3, 5000)])
def test_head_dims(dtype, d, q_len, k_len):
    q, k, v = qkv(2, 8, 2, q_len, k_len, d=d, dtype=dtype)
    check(q, k, v, causal=True)


def padding_masks(batch, k_len):
    m = torch.ones(batch, k_len, dtype=torch.bool, device="cuda")
    m[0, : k_len // 3] = False  # left padding
    m[1, k_len - k_len // 2 :] = False  # right padding: only a prefix valid (static cache)
    m[2, ::3] = False  # holes
    m[2, 100:700] = False
    m[3] = False  # fully masked sequence -> zeros
    return m


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("q_len", [1, 4])
@pytest.mark.parametrize("k_len", [1025, 4099])
@pytest.mark.parametrize("heads", [(8, 8), (32, 8)], ids=["mha", "gqa"])
def test_key_padding_mask(dtype, q_len, k_len, heads):
    q, k, v = qkv(5, heads[0], heads[1], q_len, k_len, dtype=dtype)
    mask = padding_masks(5, k_len)
    out = check(q, k, v, causal=q_len > 1, key_padding_mask=mask)
    assert (out[3] == 0).all(), "a fully masked sequence must give exact zeros"


@pytest.mark.parametrize("dtype", DTYPES)
def test_mask_single_valid_key_and_batch1_split(dtype):
    # Batch 1 over a long cache splits the keys; only one key is valid, so all
    # but one split are empty and the merge must ignore them.
    q, k, v = qkv(1, 8, 8, 1, 32768, dtype=dtype)
    mask = torch.zeros(1, 32768, dtype=torch.bool, device="cuda")
    mask[0, 20000] = True
    out = check(q, k, v, key_padding_mask=mask)
    torch.testing.assert_close(out[0, :, 0], v[0, :, 20000], rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("q_len", [1, 4])
def test_static_cache_q_offset(dtype, q_len):
    # StaticCache: a (B, H, S_max, D) buffer, sequence b holds tokens [0, len_b)
    # and its queries sit at positions len_b - q_len ... len_b - 1.
    batch, s_max = 4, 2048
    q, k, v = qkv(batch, 32, 8, q_len, s_max, dtype=dtype)
    lens = torch.tensor([q_len, 700, 2048, 1500], device="cuda")
    offset = (lens - q_len).to(torch.int32)
    check(q, k, v, causal=True, q_offset=offset)
    valid = torch.arange(s_max, device="cuda")[None, :] < lens[:, None]
    check(q, k, v, causal=True, q_offset=offset, key_padding_mask=valid)
    # int64 offsets and a shared () offset are accepted too
    check(q, k, v, causal=True, q_offset=offset.long())
    check(q, k, v, causal=True, q_offset=torch.tensor(37, device="cuda"))


@pytest.mark.parametrize("dtype", DTYPES)
def test_rows_before_the_cache_are_zeros(dtype):
    # q_offset -2 with causal: query rows 0 and 1 sit before key 0 and see nothing.
    q, k, v = qkv(2, 8, 8, 4, 300, dtype=dtype)
    out = check(q, k, v, causal=True, q_offset=torch.tensor([-2, 10], device="cuda", dtype=torch.int32))
    assert (out[0, :, :2] == 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("q_len", [1, 4, 16])
@pytest.mark.parametrize("window", [1, 64, 300, 5000])
def test_window(dtype, q_len, window):
    q, k, v = qkv(2, 16, 4, q_len, 4099, dtype=dtype)
    check(q, k, v, causal=True, window=window)
    check(q, k, v, causal=True, window=window, q_offset=torch.tensor([1000, 4000], device="cuda"))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("q_len", [1, 4])
def test_softcap_and_scale(dtype, q_len):
    q, k, v = qkv(2, 16, 8, q_len, 2049, dtype=dtype)
    check(q, k, v, causal=True, softcap=30.0)
    check(q, k, v, causal=True, softcap=5.0, scale=0.3)
    check(q, k, v, causal=True, scale=0.02)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("q_len", [1, 4])
def test_strided_cache_views(dtype, q_len):
    batch, hq, hkv, s_max, k_len, d = 3, 16, 4, 3000, 1537, 128
    # HF StaticCache-style buffer, attended over a prefix: a view with batch /
    # head strides of the full buffer.
    kbuf = rand(batch, hkv, s_max, d, dtype=dtype)
    vbuf = rand(batch, hkv, s_max, d, dtype=dtype)
    q = rand(batch, hq, q_len, d, dtype=dtype)
    check(q, kbuf[:, :, :k_len], vbuf[:, :, :k_len], causal=True)
    # (B, S, H, D) storage seen as (B, H, S, D), q too.
    kt = rand(batch, k_len, hkv, d, dtype=dtype).transpose(1, 2)
    vt = rand(batch, k_len, hkv, d, dtype=dtype).transpose(1, 2)
    qt = rand(batch, q_len, hq, d, dtype=dtype).transpose(1, 2)
    check(qt, kt, vt, causal=True)
    # a batch slice (batch stride of a bigger buffer) and one head of a bigger cache
    check(q[1:], kbuf[1:, :, :k_len], vbuf[1:, :, :k_len], causal=True)
    check(q[:, :4], kbuf[:, 1:2, :k_len], vbuf[:, 1:2, :k_len], causal=True)


def alibi_slopes(batch, heads):
    """(batch, heads) ALiBi slopes from 2^-8 to 2 per key (BLOOM's range and steeper), varied per sequence."""
    s = torch.logspace(-8, 1, heads, base=2.0)
    return (s[None, :] * torch.linspace(0.5, 1.5, batch)[:, None]).to("cuda")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [32, 64, 80, 96, 128, 256])
@pytest.mark.parametrize("q_len,k_len", [(1, 97), (4, 1025), (3, 5000)])
def test_alibi(dtype, d, q_len, k_len):
    # Per-(batch, head) and per-head slopes, GQA; short caches run unsplit, long ones split-KV.
    q, k, v = qkv(2, 8, 2, q_len, k_len, d=d, dtype=dtype)
    slopes = alibi_slopes(2, 8)
    check(q, k, v, causal=True, alibi_slopes=slopes)
    check(q, k, v, alibi_slopes=slopes[0], q_offset=torch.tensor([k_len // 2, 0], device="cuda"))  # keys on both sides


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("q_len", [1, 4])
def test_alibi_with_masks_window_softcap(dtype, q_len):
    batch, s_max = 4, 2048
    q, k, v = qkv(batch, 32, 8, q_len, s_max, dtype=dtype)
    lens = torch.tensor([q_len, 700, 2048, 1500], device="cuda")
    offset = (lens - q_len).to(torch.int32)
    valid = torch.arange(s_max, device="cuda")[None, :] < lens[:, None]
    valid[1, :300] = False  # left padding (BLOOM batches)
    slopes = alibi_slopes(batch, 32)
    check(q, k, v, causal=True, q_offset=offset, key_padding_mask=valid, alibi_slopes=slopes)
    check(q, k, v, causal=True, q_offset=offset, window=300, softcap=5.0, alibi_slopes=slopes)


@pytest.mark.parametrize("dtype", DTYPES)
def test_split_and_no_split_paths(dtype):
    # Batch 1, one kv head, long cache: base CTAs << SMs, so the keys are split
    # (up to 128 ways) and merged.
    q, k, v = qkv(1, 4, 1, 1, 65537, dtype=dtype)
    check(q, k, v)
    # Many (batch, kv head) pairs: a full wave without splitting, direct writes.
    q, k, v = qkv(64, 32, 32, 1, 700, dtype=dtype)
    check(q, k, v)
    q, k, v = qkv(64, 32, 8, 4, 1000, dtype=dtype)
    check(q, k, v, causal=True)


def test_cuda_graph_capture_and_replay():
    dtype = torch.bfloat16
    batch, hq, hkv, s_max, d = 2, 32, 8, 4096, 128
    q = rand(batch, hq, 1, d, dtype=dtype)
    k = rand(batch, hkv, s_max, d, dtype=dtype)
    v = rand(batch, hkv, s_max, d, dtype=dtype)
    offset = torch.tensor([100, 3000], device="cuda", dtype=torch.int32)
    mask = torch.arange(s_max, device="cuda")[None, :] <= offset[:, None].long()

    def step():
        return fastxf.ops.attention(q, k, v, causal=True, q_offset=offset, key_padding_mask=mask)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()  # warm up (workspace allocation, cached device queries) outside capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()
    for pos in ([100, 3000], [4095, 0], [2500, 1]):  # the decode loop moves on: new values, same shapes
        q.copy_(rand(batch, hq, 1, d, dtype=dtype))
        k[:, :, pos[0]] = rand(batch, hkv, d, dtype=dtype)[0]
        offset.copy_(torch.tensor(pos, device="cuda", dtype=torch.int32))
        mask.copy_(torch.arange(s_max, device="cuda")[None, :] <= offset[:, None].long())
        graph.replay()
        torch.cuda.synchronize()
        check(q, k, v, causal=True, q_offset=offset, key_padding_mask=mask, out=out.clone())


def test_side_stream():
    q, k, v = qkv(1, 32, 8, 1, 8191)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        out = fastxf.ops.attention(q, k, v)
        out2 = out * 1  # same stream: must see the finished result
    torch.cuda.current_stream().wait_stream(side)
    check(q, k, v, out=out2)


@pytest.mark.parametrize("splits", [1, 2, 13, 128])
@pytest.mark.parametrize("k_len", [97, 1025, 4099])
def test_forced_splits(monkeypatch, splits, k_len):
    # FASTXF_DECODE_SPLITS overrides the heuristic: one split over a long cache
    # (direct write), and more splits than 64-key chunks (empty splits that the
    # merge must ignore), with causal rows, a window and padding together.
    monkeypatch.setenv("FASTXF_DECODE_SPLITS", str(splits))
    q, k, v = qkv(4, 16, 4, 4, k_len)
    mask = torch.ones(4, k_len, dtype=torch.bool, device="cuda")
    mask[0, : k_len // 2] = False
    mask[1, k_len // 3 :] = False
    mask[2, 1::2] = False
    mask[3] = False
    out = check(q, k, v, causal=True, key_padding_mask=mask)
    assert (out[3] == 0).all()
    check(q, k, v, causal=True, window=70, q_offset=torch.tensor([k_len - 1, 50, 3, k_len // 2], device="cuda"))
