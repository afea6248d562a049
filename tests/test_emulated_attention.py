"""The CUDA attention kernels (csrc/attention/: split-KV decode + merge, and the
FlashAttention-2-style prefill) run by the CPU emulator, against the float64
reference with the accuracy bar of tests/test_attention.py (`assert_matches`:
at most 2x the error of the same math in the input dtype, rows that see no key
exactly zero).

The emulated dispatch is the CUDA one, with an H100 / H200's properties (132
SMs, 227 KB of shared memory per block): q_len <= 16 with a decode head dim
takes the decode kernel (split count from the SM count), the rest the prefill
kernel (head dims padded up to 32 / 64 / 128 / 256). Every (dtype, head dim)
instantiation of both kernels runs, padded head dims included, decode with and
without split-KV, with causal / window / softcap / key padding / GQA / q_offset
cases; test_every_variant_dispatched checks that from the dispatch's own log.
Sizes are small: the emulator runs every thread of every CTA on the CPU.
"""

import subprocess
import sys

import pytest
import torch

import fastxf
from tests._emulated_cases import (
    DECODE_HEAD_DIMS,
    DTYPES,
    PREFILL_HEAD_DIMS,
    assert_direct_and_split_decode,
    check,
    padding_mask,
    qkv,
)
from tests.emulation import AVAILABLE, dispatch_log, emulated, require_emulator  # noqa: F401 (fixture)
from tests.test_attention import assert_matches

PADDED_HEAD_DIMS = [40, 80, 96, 160, 36]  # -> 64, 128, 128, 256; 36 is zero-padded to 40 (-> 64)


# ------------------------------------------------------------------ prefill ----
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("D", PREFILL_HEAD_DIMS)
def test_prefill_instantiations(emulated, dtype, D):
    q, k, v = qkv(1, 2, 1, 33, 97, D, dtype)  # GQA, chunked prefill (Sq < Sk), odd lengths
    check(q, k, v, causal=True)
    mask = padding_mask(2, 97)
    q, k, v = qkv(2, 2, 2, 40, 97, D, dtype)
    check(q, k, v, key_padding_mask=mask, window=30, softcap=5.0, q_offset=torch.tensor([50, 10]))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("D", PADDED_HEAD_DIMS)
def test_prefill_padded_head_dims(emulated, dtype, D):
    check(*qkv(1, 2, 2, 24, 70, D, dtype), causal=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_prefill_masks_offsets_windows(emulated, dtype):
    D = 64
    q, k, v = qkv(4, 2, 1, 24, 150, D, dtype)
    mask = padding_mask(4, 150)
    check(q, k, v, key_padding_mask=mask)
    check(q, k, v, causal=True, key_padding_mask=mask)
    check(q, k, v, causal=True, q_offset=torch.tensor([0, 60, -10, 140], dtype=torch.int32))  # negative: empty rows
    check(q, k, v, causal=True, window=17)
    check(q, k, v, window=40, q_offset=torch.tensor(70))  # window without causal
    check(q, k, v, causal=True, softcap=2.0, scale=0.3)
    check(*qkv(1, 2, 2, 150, 65, D, dtype), causal=True)  # Sq > Sk: the first rows see no key


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_prefill_strided_views(emulated, dtype):
    B, Hq, Hkv, S, D = 2, 2, 1, 40, 64
    q = torch.randn(B, S, Hq, D).to(dtype).transpose(1, 2)  # Hugging Face (B, S, H, D) storage
    kv = torch.randn(B, S, 2 * Hkv, D).to(dtype)  # fused kv projection: k and v views of one buffer
    k, v = kv[:, :, :Hkv].transpose(1, 2), kv[:, :, Hkv:].transpose(1, 2)
    check(q, k, v, causal=True)
    flat = torch.randn(B * Hq * S * D + 1).to(dtype)
    check(flat[1:].view(B, Hq, S, D), k, v, causal=True)  # a base that is not 16-byte aligned: copied


# ------------------------------------------------------------------- decode ----
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("D", DECODE_HEAD_DIMS)
def test_decode_instantiations(emulated, dtype, D):
    # k_len 200: one split (< 256 keys per split), direct writes; 600: split-KV + merge.
    check(*qkv(1, 8, 2, 4, 200, D, dtype), causal=True)
    check(*qkv(1, 4, 4, 1, 600, D, dtype), key_padding_mask=padding_mask(1, 600))
    assert_direct_and_split_decode(D)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_decode_masks_offsets_windows(emulated, dtype):
    D = 64
    q, k, v = qkv(4, 8, 2, 4, 700, D, dtype)
    mask = padding_mask(4, 700)
    out = check(q, k, v, causal=True, key_padding_mask=mask)
    assert (out[3] == 0).all()
    check(q, k, v, causal=True, q_offset=torch.tensor([3, 300, -2, 699], dtype=torch.int32))
    check(q, k, v, causal=True, window=70, q_offset=torch.tensor([650, 100, 5, 400]))
    check(q, k, v, causal=True, softcap=5.0, scale=0.3)
    check(*qkv(1, 16, 1, 16, 300, D, dtype), causal=True)  # 256 rows per kv head: 16 row tiles
    # A static-cache view (batch / head strides of a longer buffer).
    kbuf, vbuf = torch.randn(2, 2, 900, D).to(dtype), torch.randn(2, 2, 900, D).to(dtype)
    check(torch.randn(2, 4, 1, D).to(dtype), kbuf[:, :, :513], vbuf[:, :, :513])


@pytest.mark.parametrize("splits", [1, 3, 13])
def test_decode_forced_splits(emulated, monkeypatch, splits):
    # More splits than 64-key chunks leaves some empty: the merge must ignore them.
    monkeypatch.setenv("FASTXF_DECODE_SPLITS", str(splits))
    q, k, v = qkv(3, 4, 2, 2, 500, 128, torch.bfloat16)
    mask = padding_mask(3, 500)
    check(q, k, v, causal=True, key_padding_mask=mask)
    assert all(f"splits={splits} " in line for line in dispatch_log())


# ------------------------------------------------ the GPU matrix, smaller ----
# tests/test_attention_prefill_cuda.py / test_attention_decode_cuda.py at sizes
# the emulator runs in seconds.
PREFILL_SHAPES = [  # (B, Hq, Hkv, Sq, Sk, causal)
    (2, 4, 4, 97, 97, False),
    (2, 4, 4, 97, 97, True),
    (1, 2, 2, 17, 1025, True),
    (1, 2, 2, 130, 65, True),
    (1, 2, 1, 300, 300, True),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("D", PREFILL_HEAD_DIMS)
def test_prefill_gpu_shapes(emulated, dtype, D):
    for B, Hq, Hkv, Sq, Sk, causal in PREFILL_SHAPES:
        check(*qkv(B, Hq, Hkv, Sq, Sk, D, dtype), causal=causal)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("q_len", [1, 16])
@pytest.mark.parametrize("heads", [(8, 8), (32, 8), (16, 1)], ids=["mha", "gqa", "mqa"])
def test_decode_gpu_shapes(emulated, dtype, q_len, heads):
    for batch, k_len in ((1, 1), (3, 97), (1, 1025)):
        q, k, v = qkv(batch, heads[0], heads[1], q_len, k_len, 128, dtype)
        check(q, k, v, causal=q_len > 1)
        if q_len > 1 and k_len >= q_len:
            check(q, k, v)
    assert all(line.startswith("decode") for line in dispatch_log())


@pytest.mark.parametrize("splits", [1, 2, 13, 128])
@pytest.mark.parametrize("k_len", [97, 1025])
def test_decode_gpu_forced_splits(emulated, monkeypatch, splits, k_len):
    monkeypatch.setenv("FASTXF_DECODE_SPLITS", str(splits))
    q, k, v = qkv(4, 16, 4, 4, k_len, 128, torch.bfloat16)
    mask = torch.ones(4, k_len, dtype=torch.bool)
    mask[0, : k_len // 2] = False
    mask[1, k_len // 3 :] = False
    mask[2, 1::2] = False
    mask[3] = False
    out = check(q, k, v, causal=True, key_padding_mask=mask)
    assert (out[3] == 0).all()
    check(q, k, v, causal=True, window=70, q_offset=torch.tensor([k_len - 1, 50, 3, k_len // 2]))


# -------------------------------------------------------------- coverage ----
def test_every_variant_dispatched(emulated):
    dispatch_log()
    for dtype in DTYPES:
        for D in PREFILL_HEAD_DIMS + PADDED_HEAD_DIMS:
            fastxf.ops.attention(*qkv(1, 1, 1, 17, 20, D, dtype))
        for D in DECODE_HEAD_DIMS:
            fastxf.ops.attention(*qkv(1, 1, 1, 1, 100, D, dtype))
            fastxf.ops.attention(*qkv(1, 1, 1, 1, 300, D, dtype))
    lines = set(dispatch_log())
    for dtype in ("Half", "BFloat16"):
        for D in PREFILL_HEAD_DIMS:
            assert any(line.startswith(f"prefill T={dtype} D={D} ") for line in lines), (dtype, D)
        for d_load, kD in ((40, 64), (80, 128), (96, 128), (160, 256)):
            assert f"prefill T={dtype} D={kD} d_load={d_load} d_out={d_load}" in lines
        assert f"prefill T={dtype} D=64 d_load=40 d_out=36" in lines
        for D in DECODE_HEAD_DIMS:
            assert f"decode T={dtype} D={D} splits=1 row_tiles=1" in lines
            assert f"decode T={dtype} D={D} splits=2 row_tiles=1" in lines


# ---------------------------------------------------------- the switch ----
def test_torch_ops_called_directly_take_the_emulated_path(emulated):
    q, k, v = qkv(1, 2, 2, 20, 30, 64, torch.float16)
    out = torch.ops.fastxf.attention(q, k, v, None, None, True, None, 0, 0.0, None)
    assert dispatch_log() == ["prefill T=Half D=64 d_load=64 d_out=64"]
    assert_matches(out, q, k, v, causal=True)
    x = torch.randn(3, 64)
    torch.ops.fastxf.rms_norm(x, None, 1e-6, None, False, None)
    assert len(dispatch_log()) == 1


def test_outside_the_context_the_cpu_kernels_run():
    require_emulator()
    dispatch_log()
    fastxf.ops.attention(*qkv(1, 2, 2, 20, 30, 64, torch.float16))
    assert dispatch_log() == []


def test_cuda_rejections_apply(emulated):
    # What the CUDA entry rejects is rejected under emulation too.
    with pytest.raises(RuntimeError, match="float16/bfloat16; got float32"):
        fastxf.ops.attention(*qkv(1, 2, 2, 20, 30, 64, torch.float32))


def test_env_switch_process_wide():
    require_emulator()
    code = (
        "import torch, fastxf, fastxf._emu\n"
        "fastxf._emu.dispatch_log()\n"
        "q = torch.randn(1, 2, 20, 64).half()\n"
        "fastxf.ops.attention(q, q, q)\n"
        "print(fastxf._emu.dispatch_log())\n"
    )
    env = {**__import__("os").environ, "FASTXF_EMULATE_CUDA": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "prefill T=Half D=64" in out.stdout


def test_missing_emulator_is_a_clear_error(monkeypatch):
    import fastxf.testing as testing

    def no_module():
        raise ImportError("No module named 'fastxf._emu'")

    monkeypatch.setattr(testing, "_import_emu", no_module)
    with pytest.raises(RuntimeError, match="FASTXF_EMULATOR=ON"):
        with testing.emulate_cuda():
            pass
    assert not testing.emulator_available()
