"""Case builders shared by the emulated attention tests (tests/test_emulated_attention.py,
tests/test_emulated_alibi.py): the kernel instantiations to cover, CPU inputs, a
key padding mask with every layout the kernels handle differently, and the check
against the float64 reference (tests/test_attention.py's `assert_matches`)."""

import re

import torch

import fastxf
from tests.emulation import dispatch_log
from tests.test_attention import assert_matches, make_qkv

DTYPES = [torch.float16, torch.bfloat16]  # what the CUDA kernels take
PREFILL_HEAD_DIMS = [32, 64, 128, 256]  # the prefill kernel's instantiations
DECODE_HEAD_DIMS = [32, 64, 80, 96, 128, 256]  # the decode kernel's instantiations


def qkv(B, Hq, Hkv, Sq, Sk, D, dtype):
    return make_qkv(B, Hq, Hkv, Sq, Sk, D, dtype, "cpu")


def check(q, k, v, **kw):
    """Runs fastxf's attention (the emulated CUDA kernels inside `emulated`) and
    compares it with the reference; returns the output."""
    out = fastxf.ops.attention(q, k, v, **kw)
    assert out.device.type == "cpu"
    assert_matches(out, q, k, v, **kw)
    return out


def padding_mask(B, Sk, right_share=2):
    """(B, Sk) key padding, True = attend, one layout per row: left padding (BLOOM
    batches), right padding (the last Sk // right_share keys), holes (one hole
    spans whole key tiles), a fully masked sequence (its output must be zeros)."""
    m = torch.ones(B, Sk, dtype=torch.bool)
    m[0, : Sk // 3] = False
    if B > 1:
        m[1, Sk - Sk // right_share :] = False
    if B > 2:
        m[2, ::3] = False
        m[2, 20:90] = False
    if B > 3:
        m[3] = False
    return m


def assert_direct_and_split_decode(D):
    """The decode launches since the last dispatch_log() call ran head dim D both
    with one split (direct writes) and with split-KV + merge."""
    lines = dispatch_log()
    assert any(f"D={D} splits=1 " in line for line in lines), lines
    assert any(re.search(rf"D={D} splits=([2-9]|\d\d)", line) for line in lines), lines
