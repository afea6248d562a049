"""ALiBi in the CUDA attention kernels (prefill and split-KV decode), run by the
CPU emulator against the float64 reference with the accuracy bar of
tests/test_attention.py (`assert_matches`).

The bias -slope[b, h] * |pos - j| is added in the kernels' log2 domain after
scale / softcap, on every key tile (not only the masked ones), so the cases
mix it with what changes which tiles are masked or skipped: causal, window,
key padding (left, right, holes, a fully masked sequence), q_offset (negative:
rows with no key), softcap, GQA / MQA. Slopes are per head (Hq,) or per
(batch, head); the large slopes (up to 16 per key) make the bias dominate the
scores, so a sign, scale or position error cannot hide. Every (dtype, head dim)
instantiation of both kernels runs once with ALiBi; decode with one split
(direct writes) and with split-KV + merge.
"""

import pytest
import torch

import fastxf
from tests import _emulated_cases
from tests._emulated_cases import (
    DECODE_HEAD_DIMS,
    DTYPES,
    PREFILL_HEAD_DIMS,
    assert_direct_and_split_decode,
    check,
    qkv,
)
from tests.emulation import dispatch_log, emulated  # noqa: F401 (fixture)
from tests.test_attention import alibi_slopes


def steep_slopes(B, Hq):
    """(B, Hq) slopes from 1/64 to 16 per key: strong enough to dominate q.k."""
    s = torch.logspace(-6, 4, Hq, base=2.0)
    return (s[None, :] * torch.linspace(0.6, 1.4, B)[:, None]).contiguous()


def padding_mask(B, Sk):
    return _emulated_cases.padding_mask(B, Sk, right_share=4)  # a quarter right-padded, as these cases always had


# ------------------------------------------------------------------ prefill ----
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("D", PREFILL_HEAD_DIMS)
def test_prefill_alibi_instantiations(emulated, dtype, D):
    # GQA, chunked prefill (Sq < Sk, key tiles before the diagonal need no masking), odd lengths.
    q, k, v = qkv(1, 4, 2, 33, 97, D, dtype)
    check(q, k, v, causal=True, alibi_slopes=alibi_slopes(4))
    assert dispatch_log() == [f"prefill T={'Half' if dtype == torch.float16 else 'BFloat16'} D={D} d_load={D} d_out={D}"]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_prefill_alibi_combined(emulated, dtype):
    D = 64
    q, k, v = qkv(4, 4, 1, 24, 150, D, dtype)  # MQA
    slopes = steep_slopes(4, 4)
    mask = padding_mask(4, 150)
    check(q, k, v, alibi_slopes=slopes)  # not causal: keys on both sides of pos
    check(q, k, v, alibi_slopes=slopes[0], causal=True, key_padding_mask=mask)  # per-head slopes
    offsets = torch.tensor([0, 60, -10, 140], dtype=torch.int32)  # negative: rows with no key
    check(q, k, v, alibi_slopes=slopes, causal=True, q_offset=offsets, window=45, softcap=3.0, scale=0.3)
    check(q, k, v, alibi_slopes=slopes, window=40, q_offset=torch.tensor(70), key_padding_mask=mask)
    check(*qkv(1, 2, 2, 150, 65, D, dtype), causal=True, alibi_slopes=steep_slopes(1, 2))  # Sq > Sk
    check(*qkv(2, 2, 2, 40, 97, 40, dtype), causal=True, alibi_slopes=alibi_slopes(2, 2))  # padded head dim
    assert all(line.startswith("prefill ") for line in dispatch_log())


# ------------------------------------------------------------------- decode ----
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("D", DECODE_HEAD_DIMS)
def test_decode_alibi_instantiations(emulated, dtype, D):
    # k_len 200: one split, direct writes; 600: split-KV + merge. GQA rows mix heads and positions.
    check(*qkv(1, 8, 2, 3, 200, D, dtype), causal=True, alibi_slopes=alibi_slopes(8))
    check(*qkv(1, 4, 4, 1, 600, D, dtype), alibi_slopes=steep_slopes(1, 4), key_padding_mask=padding_mask(1, 600))
    assert_direct_and_split_decode(D)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_decode_alibi_combined(emulated, dtype):
    D = 64
    q, k, v = qkv(4, 8, 2, 3, 700, D, dtype)
    slopes = steep_slopes(4, 8)
    mask = padding_mask(4, 700)
    out = check(q, k, v, alibi_slopes=slopes, causal=True, key_padding_mask=mask)
    assert (out[3] == 0).all()
    check(q, k, v, alibi_slopes=slopes[1], causal=True, q_offset=torch.tensor([3, 300, -2, 699], dtype=torch.int32))
    check(q, k, v, alibi_slopes=slopes, window=70, q_offset=torch.tensor([650, 100, 5, 400]), softcap=4.0)
    check(q, k, v, alibi_slopes=slopes, q_offset=torch.tensor([350, 0, 699, 200]))  # keys on both sides
    check(*qkv(1, 16, 1, 16, 300, D, dtype), causal=True, alibi_slopes=alibi_slopes(16))  # 16 row tiles
    assert all(line.startswith("decode ") for line in dispatch_log())


@pytest.mark.parametrize("splits", [1, 5])
def test_decode_alibi_forced_splits(emulated, monkeypatch, splits):
    monkeypatch.setenv("FASTXF_DECODE_SPLITS", str(splits))
    q, k, v = qkv(3, 4, 2, 2, 500, 128, torch.bfloat16)
    check(q, k, v, causal=True, key_padding_mask=padding_mask(3, 500), alibi_slopes=steep_slopes(3, 4))
    assert all(f"splits={splits} " in line for line in dispatch_log())


def test_zero_slopes_match_plain_attention(emulated):
    # Adding a zero bias changes no score: bit-identical to no ALiBi (prefill and decode).
    q, k, v = qkv(2, 4, 2, 20, 70, 64, torch.float16)
    plain = fastxf.ops.attention(q, k, v, causal=True)
    zero = fastxf.ops.attention(q, k, v, causal=True, alibi_slopes=torch.zeros(4))
    assert torch.equal(plain, zero)
    q1 = q[:, :, :1]
    assert torch.equal(fastxf.ops.attention(q1, k, v), fastxf.ops.attention(q1, k, v, alibi_slopes=torch.zeros(2, 4)))
