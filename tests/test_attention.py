"""fastxf.ops.attention against the float64 reference (python/fastxf/ops/reference.py).

Tolerances (see `assert_matches`):
- float32: the kernel computes in fp32 throughout, so it must agree with the
  float64 reference to ~1e-5 relative to the output's magnitude (observed errors
  are ~1e-6: fp32 rounding of D-long dot products, exp and the P V sums).
- float16 / bfloat16: the inputs are rounded to the half dtype once (the
  float64 reference sees exactly those rounded values), the kernel accumulates in
  fp32 and rounds the output once. So it must be at least about as accurate as
  the naive reference computed in that half dtype: we allow 2x the error that
  reference.attention run in the half dtype makes against float64, plus a floor
  of one epsilon of the dtype times the largest output (the final rounding is
  half of that; it covers cases where the half reference happens to be exact,
  e.g. Sk == 1). A 1% error in the softmax scale exceeds this bound.
Rows that see no key must be exact zeros (never NaN, never tiny values).
"""

from __future__ import annotations

import pytest
import torch

import fastxf.ops
from fastxf.ops import reference
from tests.conftest import DEVICES

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def rand(*shape, dtype, device):
    return torch.randn(*shape, dtype=torch.float32, device=device).to(dtype)


def make_qkv(B, Hq, Hkv, Sq, Sk, D, dtype, device):
    return (
        rand(B, Hq, Sq, D, dtype=dtype, device=device),
        rand(B, Hkv, Sk, D, dtype=dtype, device=device),
        rand(B, Hkv, Sk, D, dtype=dtype, device=device),
    )


def call(q, k, v, **kw):
    """fastxf.ops.attention; on CUDA, fp32 is skipped when the CUDA kernels reject it."""
    try:
        return fastxf.ops.attention(q, k, v, **kw)
    except (RuntimeError, ValueError) as e:
        if q.device.type == "cuda" and q.dtype == torch.float32 and "float32" in str(e):
            pytest.skip(f"CUDA attention does not support float32: {e}")
        raise


def ref_kwargs(kw):
    return dict(
        key_padding_mask=kw.get("key_padding_mask"),
        q_offset=kw.get("q_offset"),
        causal=kw.get("causal", False),
        scale=kw.get("scale"),
        window=kw.get("window", 0),
        softcap=kw.get("softcap", 0.0),
        alibi_slopes=kw.get("alibi_slopes"),
    )


def no_key_rows(q, k, kw):
    """(B, 1, Sq, 1) bool: rows that see no key at all (their output must be exact zeros)."""
    B, _, Sq, _ = q.shape
    rk = ref_kwargs(kw)
    ok = reference.visible_keys(
        B, Sq, k.shape[2], q.device, rk["key_padding_mask"], rk["q_offset"], rk["causal"], rk["window"]
    )
    return ~ok.any(-1, keepdim=True)


def assert_matches(out, q, k, v, **kw):
    B, Hq, Sq, D = q.shape
    assert out.shape == (B, Hq, Sq, D)
    assert out.dtype == q.dtype and out.device == q.device
    # Output layout: a (B, Hq, Sq, D) view of a contiguous (B, Sq, Hq, D) buffer.
    assert out.transpose(1, 2).is_contiguous()
    assert not out.isnan().any()
    rk = ref_kwargs(kw)
    ref = reference.attention(q.double(), k.double(), v.double(), **rk)
    empty = no_key_rows(q, k, kw)
    if empty.any():
        assert (out.masked_select(empty.expand_as(out)) == 0).all(), "rows with no visible key must be exact zeros"
    if out.numel() == 0:
        return
    err = (out.double() - ref).abs().max().item()
    mag = ref.abs().max().item()
    if q.dtype == torch.float32:
        bound = 1e-5 * max(1.0, mag)
    else:
        # Not max(1, mag) here: outputs over long sequences are small (~1/sqrt(Sk)),
        # and a floor of a whole bf16 epsilon would hide e.g. a 1% scale error.
        ref_half_err = (reference.attention(q, k, v, **rk).double() - ref).abs().max().item()
        bound = 2 * ref_half_err + torch.finfo(q.dtype).eps * mag
    assert err <= bound, f"max error {err:.3g} > bound {bound:.3g} ({q.dtype})"


def check(q, k, v, **kw):
    out = call(q, k, v, **kw)
    assert_matches(out, q, k, v, **kw)
    return out


# --------------------------------------------------------------------- shapes


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("Sq", [1, 17, 97, 1025])
@pytest.mark.parametrize("Sk", [1, 17, 97, 1025])
def test_odd_lengths(device, dtype, causal, Sq, Sk):
    # Covers causal with Sq == Sk, Sq < Sk (chunked prefill / decode) and
    # Sq > Sk (the first Sq - Sk rows see nothing -> zeros).
    q, k, v = make_qkv(1, 2, 2, Sq, Sk, 80, dtype, device)
    check(q, k, v, causal=causal)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("D", [8, 64, 80, 128, 256])
def test_head_dims(device, dtype, D):
    q, k, v = make_qkv(2, 2, 2, 17, 97, D, dtype, device)
    check(q, k, v)
    check(q, k, v, causal=True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("Hkv", [2, 1], ids=["gqa", "mqa"])
@pytest.mark.parametrize("Sq,Sk", [(97, 97), (1, 300), (33, 300), (300, 97)])
def test_gqa_mqa(device, dtype, Hkv, Sq, Sk):
    q, k, v = make_qkv(2, 8, Hkv, Sq, Sk, 64, dtype, device)
    check(q, k, v)
    check(q, k, v, causal=True)


@pytest.mark.parametrize("device", DEVICES)
def test_causal_sq_greater_than_sk_gives_zero_rows(device):
    q, k, v = make_qkv(1, 2, 2, 40, 10, 64, torch.float32 if device == "cpu" else torch.bfloat16, device)
    out = check(q, k, v, causal=True)
    assert (out[:, :, :30] == 0).all()  # query i sees keys j <= i + Sk - Sq = i - 30
    assert (out[:, :, 30:] != 0).any()


# --------------------------------------------------------------------- masks


def padding_masks(B, Sk, device):
    j = torch.arange(Sk, device=device)
    lengths = torch.tensor([Sk, Sk - 5, 1, Sk // 2][:B], device=device)
    right = j[None, :] < lengths[:, None]  # real tokens first, padding after
    left = j[None, :] >= (Sk - lengths)[:, None]  # padding first (HF generation)
    holes = torch.rand(B, Sk, device=device) > 0.4
    return {"right": right, "left": left, "holes": holes}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["left", "right", "holes"])
@pytest.mark.parametrize("Sq,Sk", [(97, 97), (1, 1025), (17, 300)])
def test_key_padding_mask(device, dtype, kind, Sq, Sk):
    B = 4
    q, k, v = make_qkv(B, 4, 2, Sq, Sk, 64, dtype, device)
    mask = padding_masks(B, Sk, device)[kind]
    check(q, k, v, key_padding_mask=mask)
    check(q, k, v, key_padding_mask=mask, causal=True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_fully_masked_sequences_and_rows_are_zero(device, dtype):
    B, Sq, Sk = 3, 20, 50
    q, k, v = make_qkv(B, 4, 2, Sq, Sk, 64, dtype, device)
    mask = torch.ones(B, Sk, dtype=torch.bool, device=device)
    mask[1] = False  # sequence 1 sees nothing at all
    mask[2, :40] = False  # sequence 2: causal rows i < 10 (positions < 40) see nothing
    out = check(q, k, v, key_padding_mask=mask, causal=True)
    assert (out[1] == 0).all()
    assert (out[2, :, :10] == 0).all()
    assert (out[2, :, 10:] != 0).any()
    assert (out[0] != 0).any()


# --------------------------------------------------------------------- positions


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("offset_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("Sq", [1, 7, 40])
def test_q_offset_static_cache(device, dtype, offset_dtype, Sq):
    # Static-cache decoding: a cache of Sk slots of which the first p + Sq are
    # filled; queries sit at positions p .. p + Sq - 1; later slots are masked.
    B, Sk = 3, 150
    q, k, v = make_qkv(B, 4, 2, Sq, Sk, 64, dtype, device)
    p = torch.tensor([0, 37, Sk - Sq], device=device, dtype=offset_dtype)
    filled = torch.arange(Sk, device=device)[None, :] < (p + Sq)[:, None]
    check(q, k, v, causal=True, q_offset=p, key_padding_mask=filled)
    check(q, k, v, causal=True, q_offset=p)
    check(q, k, v, causal=True, q_offset=p, window=16)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("offset_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("shape", ["scalar", "one", "batch"])
def test_q_offset_shapes(device, offset_dtype, shape):
    B, Sq, Sk = 2, 5, 64
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    q, k, v = make_qkv(B, 2, 2, Sq, Sk, 64, dtype, device)
    value = {"scalar": torch.tensor(20), "one": torch.tensor([20]), "batch": torch.tensor([20, 3])}[shape]
    check(q, k, v, causal=True, q_offset=value.to(device=device, dtype=offset_dtype))


@pytest.mark.parametrize("device", DEVICES)
def test_q_offset_default_is_bottom_right(device):
    B, Sq, Sk = 2, 9, 60
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    q, k, v = make_qkv(B, 2, 2, Sq, Sk, 64, dtype, device)
    a = call(q, k, v, causal=True)
    b = call(q, k, v, causal=True, q_offset=torch.tensor(Sk - Sq, device=device))
    assert torch.equal(a, b)


# --------------------------------------------------------------------- options


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("window", [1, 16, 300])
@pytest.mark.parametrize("Sq,Sk", [(97, 97), (1, 1025), (40, 300)])
def test_sliding_window(device, dtype, window, Sq, Sk):
    q, k, v = make_qkv(2, 4, 2, Sq, Sk, 64, dtype, device)
    check(q, k, v, causal=True, window=window)
    check(q, k, v, causal=True, window=window, key_padding_mask=padding_masks(2, Sk, device)["left"])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_softcap_and_scale(device, dtype):
    q, k, v = make_qkv(2, 4, 2, 33, 130, 64, dtype, device)
    q = q * 4  # large scores, so that the cap matters
    check(q, k, v, softcap=5.0)
    check(q, k, v, causal=True, softcap=30.0, scale=0.3)
    check(q, k, v, scale=1.0)
    check(q, k, v, scale=0.01, causal=True)
    out = call(q, k, v, softcap=5.0)
    assert not torch.allclose(out.float(), call(q, k, v).float(), atol=1e-2), "softcap had no effect"


# --------------------------------------------------------------------- layouts


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_hf_transposed_views(device, dtype):
    # Hugging Face hands over (B, S, H, D) projections transposed to (B, H, S, D).
    B, Sq, Sk, D = 2, 33, 70, 64
    q = rand(B, Sq, 8, D, dtype=dtype, device=device).transpose(1, 2)
    k = rand(B, Sk, 2, D, dtype=dtype, device=device).transpose(1, 2)
    v = rand(B, Sk, 2, D, dtype=dtype, device=device).transpose(1, 2)
    assert not q.is_contiguous()
    check(q, k, v)
    check(q, k, v, causal=True, key_padding_mask=padding_masks(B, Sk, device)["left"])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cache_slices_and_packed_qkv(device, dtype):
    B, Sq, Smax, Sk, D = 2, 5, 300, 123, 64
    k_cache = rand(B, 2, Smax, D, dtype=dtype, device=device)
    v_cache = rand(B, 2, Smax, D, dtype=dtype, device=device)
    k, v = k_cache[:, :, :Sk], v_cache[:, :, :Sk]  # the filled part of a preallocated cache
    packed = rand(B, Sq, 3, 8, D, dtype=dtype, device=device)  # fused qkv projection
    q = packed[:, :, 0].transpose(1, 2)
    check(q, k, v, causal=True)
    # A slice of the head dim (row stride larger than D, last dim still contiguous).
    wide = rand(B, 2, Sk, 2 * D, dtype=dtype, device=device)
    check(q, wide[..., :D], wide[..., D:], causal=True)
    # Batch and head strides that are not the natural ones.
    check(q[::1], k_cache[:, :, 7 : 7 + Sk], v_cache[:, :, 100 : 100 + Sk])


@pytest.mark.parametrize("device", DEVICES)
def test_empty(device):
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    for B, Sq, Sk in [(0, 5, 7), (2, 0, 7), (2, 5, 0)]:
        q, k, v = make_qkv(B, 4, 2, Sq, Sk, 64, dtype, device)
        out = call(q, k, v, causal=True)
        assert out.shape == (B, 4, Sq, 64)
        assert out.transpose(1, 2).is_contiguous()
        assert (out == 0).all()
    q, k, v = make_qkv(2, 4, 2, 5, 0, 64, dtype, device)
    out = call(q, k, v, key_padding_mask=torch.zeros(2, 0, dtype=torch.bool, device=device))
    assert (out == 0).all() and out.shape == (2, 4, 5, 64)


# --------------------------------------------------------------------- split-KV


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("Sq", [1, 16])
@pytest.mark.parametrize("causal", [False, True])
def test_split_kv_long_cache(device, dtype, Sq, causal):
    # q_len <= 16 over a long cache: the CPU kernel splits the keys (512 per
    # split, up to 16 splits) and merges the partial softmaxes.
    B, Sk = 2, 4099
    q, k, v = make_qkv(B, 8, 2, Sq, Sk, 64, dtype, device)
    check(q, k, v, causal=causal)
    mask = torch.ones(B, Sk, dtype=torch.bool, device=device)
    mask[0, 300:2900] = False  # whole splits of sequence 0 see only masked keys
    mask[1, :4000] = False  # sequence 1: only the last split sees anything
    check(q, k, v, causal=causal, key_padding_mask=mask)
    # Split boundaries that cut through the visible range of a sliding window.
    check(q, k, v, causal=True, window=700)


@pytest.mark.parametrize("device", DEVICES)
def test_split_kv_large_score_spread(device):
    # Splits whose maxima differ by a lot: the merge must rescale exactly.
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    B, Sk = 1, 3000
    q, k, v = make_qkv(B, 4, 1, 1, Sk, 64, dtype, device)
    k[:, :, 2500:] *= 6  # one split has far larger scores than the others
    check(q, k, v)
    check(q, k, v, softcap=20.0)


# --------------------------------------------------------------------- bad inputs


def bad_cases():
    def base(**over):
        d = dict(
            q=torch.randn(2, 4, 5, 64),
            k=torch.randn(2, 2, 7, 64),
            v=torch.randn(2, 2, 7, 64),
            key_padding_mask=None,
            q_offset=None,
            window=0,
            softcap=0.0,
            alibi_slopes=None,
        )
        d.update(over)
        return d

    return [
        ("q_rank", base(q=torch.randn(4, 5, 64)), "q"),
        ("k_rank", base(k=torch.randn(2, 2, 7, 64, 1)), "k"),
        ("v_rank", base(v=torch.randn(2, 7, 64)), "v"),
        ("dtype_mismatch", base(k=torch.randn(2, 2, 7, 64).half()), "dtype"),
        ("int_dtype", base(q=torch.ones(2, 4, 5, 64, dtype=torch.int32)), "q"),
        ("float64", base(q=torch.randn(2, 4, 5, 64).double()), "q"),
        ("batch", base(k=torch.randn(3, 2, 7, 64), v=torch.randn(3, 2, 7, 64)), "batch"),
        ("head_dim", base(k=torch.randn(2, 2, 7, 32), v=torch.randn(2, 2, 7, 32)), "head_dim"),
        ("kv_shape", base(v=torch.randn(2, 2, 8, 64)), "k and v"),
        ("heads", base(k=torch.randn(2, 3, 7, 64), v=torch.randn(2, 3, 7, 64)), "kv_heads"),
        ("q_last_dim", base(q=torch.randn(2, 4, 64, 5).transpose(2, 3)), "q's last dim"),
        ("k_last_dim", base(k=torch.randn(2, 2, 64, 7).transpose(2, 3)), "k's last dim"),
        ("mask_dtype", base(key_padding_mask=torch.ones(2, 7, dtype=torch.uint8)), "key_padding_mask"),
        ("mask_shape", base(key_padding_mask=torch.ones(2, 8, dtype=torch.bool)), "key_padding_mask"),
        ("mask_rank", base(key_padding_mask=torch.ones(2, 1, 7, dtype=torch.bool)), "key_padding_mask"),
        ("offset_dtype", base(q_offset=torch.tensor([1.0, 2.0])), "q_offset"),
        ("offset_shape", base(q_offset=torch.tensor([1, 2, 3])), "q_offset"),
        ("offset_rank", base(q_offset=torch.tensor([[1, 2]])), "q_offset"),
        ("window", base(window=-1), "window"),
        ("softcap", base(softcap=-1.0), "softcap"),
        ("alibi_dtype", base(alibi_slopes=torch.ones(4).double()), "alibi_slopes"),
        ("alibi_shape", base(alibi_slopes=torch.ones(2)), "alibi_slopes"),
        ("alibi_batch", base(alibi_slopes=torch.ones(3, 4)), "alibi_slopes"),
    ]


@pytest.mark.parametrize("name,args,what", bad_cases(), ids=[c[0] for c in bad_cases()])
def test_bad_inputs(name, args, what):
    a = dict(args)
    q, k, v = a.pop("q"), a.pop("k"), a.pop("v")
    with pytest.raises(ValueError, match="fastxf.attention") as e:
        fastxf.ops.attention(q, k, v, **a)
    assert what in str(e.value)
    # Direct callers of the op get the C++ TORCH_CHECK, naming the same thing.
    with pytest.raises(RuntimeError, match="fastxf.attention") as e:
        torch.ops.fastxf.attention(
            q, k, v, a["key_padding_mask"], a["q_offset"], False, None, a["window"], a["softcap"], a["alibi_slopes"]
        )
    assert what in str(e.value)


@pytest.mark.skipif("cuda" not in DEVICES, reason="needs a second device")
def test_mismatched_devices():
    q, k, v = make_qkv(1, 2, 2, 3, 5, 64, torch.bfloat16, "cuda")
    with pytest.raises(ValueError, match="k is on cpu"):
        fastxf.ops.attention(q, k.cpu(), v)
    with pytest.raises(ValueError, match="key_padding_mask"):
        fastxf.ops.attention(q, k, v, key_padding_mask=torch.ones(1, 5, dtype=torch.bool))
    with pytest.raises(RuntimeError, match="device"):
        torch.ops.fastxf.attention(q, k, v.cpu())


# --------------------------------------------------------------------- ALiBi


def alibi_slopes(heads, batch=None):
    """BLOOM's slopes (2^(-8i/n)) for `heads` heads, optionally varied per sequence."""
    s = torch.tensor([2.0 ** (-8.0 * (i + 1) / heads) for i in range(heads)])
    return s if batch is None else s[None, :] * torch.linspace(0.5, 1.5, batch)[:, None]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("Hkv", [4, 2, 1], ids=["mha", "gqa", "mqa"])
@pytest.mark.parametrize("Sq,Sk", [(97, 97), (1, 1025), (17, 300), (300, 97)])
def test_alibi(device, dtype, causal, Hkv, Sq, Sk):
    q, k, v = make_qkv(2, 4, Hkv, Sq, Sk, 64, dtype, device)
    check(q, k, v, causal=causal, alibi_slopes=alibi_slopes(4).to(device))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_alibi_with_everything(device, dtype):
    # Per-sequence slopes, left padding (BLOOM's batches), q_offset, window, softcap, GQA.
    B, Sq, Sk = 3, 7, 53
    q, k, v = make_qkv(B, 6, 2, Sq, Sk, 32, dtype, device)
    mask = torch.ones(B, Sk, dtype=torch.bool, device=device)
    mask[0, :9] = False
    mask[2, :40] = False
    offset = torch.tensor([40, 46, 20], device=device)
    kw = dict(causal=True, key_padding_mask=mask, q_offset=offset, window=21, softcap=7.0)
    check(q, k, v, alibi_slopes=alibi_slopes(6, B).to(device), **kw)


def test_alibi_left_padding_matches_bloom_convention():
    # BLOOM adds slope * (position of the key among the real tokens). Under a
    # causal mask that is -slope * |p - j| plus a per-row constant, which the
    # softmax removes: the op with left padding must match BLOOM's formula.
    B, H, S, D = 2, 4, 11, 16
    q, k, v = make_qkv(B, H, H, S, S, D, torch.float64, "cpu")
    mask = torch.ones(B, S, dtype=torch.bool)
    mask[1, :4] = False
    slopes = alibi_slopes(H)
    key_pos = ((mask.cumsum(-1) - 1) * mask)[:, None, None, :].double()  # (B, 1, 1, S)
    scores = q @ k.transpose(-1, -2) * D**-0.5 + slopes.double()[None, :, None, None] * key_pos
    ok = reference.visible_keys(B, S, S, "cpu", mask, None, True)
    probs = torch.softmax(scores.masked_fill(~ok, float("-inf")), -1).nan_to_num(0.0)
    bloom = probs @ v
    out = fastxf.ops.attention(q.float(), k.float(), v.float(), causal=True, key_padding_mask=mask,
                               alibi_slopes=slopes)
    real = mask[:, None, :, None].expand_as(bloom)  # padded query rows differ by convention
    torch.testing.assert_close(out.double()[real], bloom[real], rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------- torch integration


def opcheck_cases():
    m = torch.ones(2, 23, dtype=torch.bool)
    m[0, :5] = False
    m[1, 20:] = False
    return [
        ("plain", dict(), torch.float32),
        ("causal_gqa", dict(causal=True), torch.bfloat16),
        ("mask_offset", dict(causal=True, key_padding_mask=m, q_offset=torch.tensor([10, 14])), torch.float32),
        ("window_softcap", dict(causal=True, window=4, softcap=10.0, scale=0.2), torch.float16),
        ("alibi", dict(causal=True, alibi_slopes=alibi_slopes(4)), torch.float32),
    ]


@pytest.mark.parametrize("name,kw,dtype", opcheck_cases(), ids=[c[0] for c in opcheck_cases()])
def test_opcheck(name, kw, dtype):
    q, k, v = make_qkv(2, 4, 2, 9, 23, 16, dtype, "cpu")
    args = (
        q.requires_grad_(dtype == torch.float32),
        k,
        v,
        kw.get("key_padding_mask"),
        kw.get("q_offset"),
        kw.get("causal", False),
        kw.get("scale"),
        kw.get("window", 0),
        kw.get("softcap", 0.0),
        kw.get("alibi_slopes"),
    )
    torch.library.opcheck(torch.ops.fastxf.attention.default, args)


def test_meta_tensors():
    q = torch.empty(3, 8, 17, 80, device="meta", dtype=torch.bfloat16)
    k = torch.empty(3, 2, 40, 80, device="meta", dtype=torch.bfloat16)
    mask = torch.empty(3, 40, dtype=torch.bool, device="meta")
    out = fastxf.ops.attention(q, k, k, causal=True, key_padding_mask=mask)
    assert out.device.type == "meta" and out.dtype == torch.bfloat16
    assert out.shape == (3, 8, 17, 80)
    assert out.stride() == (17 * 8 * 80, 80, 8 * 80, 1)  # (B, Sq, Hq, D) buffer, transposed
    with pytest.raises(ValueError, match="kv_heads"):
        k3 = torch.empty(3, 3, 40, 80, device="meta", dtype=torch.bfloat16)
        fastxf.ops.attention(q, k3, k3)


def test_fake_matches_real_layout():
    q, k, v = make_qkv(2, 4, 2, 9, 23, 16, torch.float32, "cpu")
    real = fastxf.ops.attention(q, k, v)
    fake = fastxf.ops.attention(q.to("meta"), k.to("meta"), v.to("meta"))
    assert real.shape == fake.shape and real.stride() == fake.stride()


def test_torch_compile_fullgraph():
    def block(q, k, v, mask):
        return fastxf.ops.attention(q, k, v, causal=True, key_padding_mask=mask).transpose(1, 2).flatten(2) * 2

    q, k, v = make_qkv(2, 4, 2, 9, 23, 16, torch.float32, "cpu")
    mask = torch.ones(2, 23, dtype=torch.bool)
    mask[1, :3] = False
    compiled = torch.compile(block, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(q, k, v, mask), block(q, k, v, mask), rtol=0, atol=0)


@pytest.mark.parametrize("with_mask", [False, True])
def test_autograd_matches_reference(with_mask):
    # fp32 small case; the op's backward recomputes the reference, so its
    # gradients must match the float64 reference's to fp32 accuracy, including
    # rows that see no key (zero gradient, no NaN).
    B, Sq, Sk = 2, 7, 11
    q, k, v = make_qkv(B, 4, 2, Sq, Sk, 16, torch.float32, "cpu")
    mask = None
    kw = dict(causal=True, q_offset=torch.tensor([2, 4]))
    if with_mask:
        mask = torch.ones(B, Sk, dtype=torch.bool)
        mask[0, :5] = False  # rows at positions < 5 of sequence 0 see nothing
        mask[1, 6] = False
        kw["key_padding_mask"] = mask
    grad_out = torch.randn(B, 4, Sq, 16)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    fastxf.ops.attention(*leaves, **kw).backward(grad_out)
    ref_leaves = [t.double().requires_grad_() for t in (q, k, v)]
    reference.attention(*ref_leaves, **ref_kwargs(kw)).backward(grad_out.double())
    for name, a, b in zip("qkv", leaves, ref_leaves):
        assert a.grad is not None and not a.grad.isnan().any(), name
        torch.testing.assert_close(a.grad.double(), b.grad, rtol=1e-4, atol=1e-5, msg=f"grad of {name}")
    if with_mask:
        assert (leaves[0].grad[0, :, :3] == 0).all()  # rows with no visible key get no gradient


# --------------------------------------------------------------------- argument edges


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("window", [2**31, 2**40, 2**62, 2**63 - 1])
def test_huge_window_is_no_window(device, causal, window):
    # Positions are 32-bit, so any window past them sees every key; the kernels
    # compute pos - window + 1, which overflowed for windows near INT64_MAX at
    # negative positions before the shared argument code clamped it.
    q, k, v = make_qkv(2, 4, 2, 17, 40, 64, torch.float16, device)
    offset = torch.tensor([23, -5], device=device)
    out = call(q, k, v, causal=causal, window=window, q_offset=offset)
    torch.testing.assert_close(out, call(q, k, v, causal=causal, q_offset=offset), rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_q_offset_int64_out_of_int32_range_is_rejected(device):
    q, k, v = make_qkv(2, 4, 2, 3, 9, 16, torch.float16, device)
    for bad in ([2**31, 0], [0, -(2**31) - 1], [2**40, 3]):
        with pytest.raises(RuntimeError, match="q_offset values must fit in int32"):
            call(q, k, v, causal=True, q_offset=torch.tensor(bad, device=device))
    # The int32 limits themselves are fine: a row at position 2^31 - 1 sees every
    # key under the causal rule, one at -2^31 sees none.
    edge = torch.tensor([2**31 - 1 - 2, -(2**31)], dtype=torch.int64, device=device)
    out = call(q, k, v, causal=True, q_offset=edge)
    assert_matches(out, q, k, v, causal=True, q_offset=edge)
    assert (out[1] == 0).all()
