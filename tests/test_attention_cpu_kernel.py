"""The CPU attention kernel's own edges (csrc/attention/attention_cpu.cpp and
csrc/attention/cpu/tile_kernel.inc), against the float64 reference with the
tolerances of tests/test_attention.py.

The kernel picks, per call, things a plain shape sweep may never reach:
- the instruction set of the tile code (baseline x86-64, AVX2, AVX-512), chosen
  from the CPU: every version this CPU can run is forced through
  FASTXF_CPU_ATTENTION_ISA;
- per tile: vectorised loops (fewer than 8 rows = query heads of a group x query
  positions) or BLAS (fp32 sgemm, or the fp16 / bf16 GEMMs); FASTXF_CPU_ATTENTION_BLAS=0
  runs the loops on every tile;
- tiles of up to 128 rows, key blocks of 256 (block skipping and trimming for
  causal, window and padding), head dims that are not multiples of 16 (scalar
  loops), 64-column register blocks with a 16..48-column rest, one-row tiles (MHA
  decode: two accumulator sets, even and odd keys);
- 512-key blocks for BLAS tiles without causality or window (one 1024-key
  block up to 1024 keys with >= 2 tiles per thread), other block sizes
  through FASTXF_CPU_ATTENTION_BLOCKS=rows,keys;
- padding at the ends of a sequence taken as a key range, the mask read per key
  only for sequences with holes;
- causal / window blocks multiplied in 32-row bands over the keys each band
  sees (fp32 sgemm), when that drops at least a quarter of the block;
- split-KV when there are fewer tiles than threads and at least 1024 keys, and a
  single thread for problems under 1.5 MFLOP that read under 1 MiB of K / V;
- K / V read in place (any row stride) or staged for BLAS (row stride < D).
"""

from __future__ import annotations

import pytest
import torch

from tests.test_attention import assert_matches, make_qkv

import fastxf.ops


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


_FLAGS = _cpu_flags()
ISAS = ["base"]
if {"avx2", "fma", "f16c"} <= _FLAGS:
    ISAS.append("avx2")
if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= _FLAGS and "avx2" in ISAS:
    ISAS.append("avx512")
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.fixture(autouse=True)
def generic_half_tiles(monkeypatch):
    """This file tests the generic tile code; on AMX-BF16 CPUs bf16 tiles of 64+
    rows would otherwise take the packed brgemm path, which has its own tests
    (tests/test_attention_cpu_half.py, run both with and without it)."""
    monkeypatch.setenv("FASTXF_CPU_ATTENTION_BRGEMM", "0")


@pytest.fixture
def threads():
    """Sets torch's thread count for one test and restores it."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def run_cases(dtype, cases):
    for B, Hq, Hkv, Sq, Sk, D, kw in cases:
        q, k, v = make_qkv(B, Hq, Hkv, Sq, Sk, D, dtype, "cpu")
        kw = dict(kw)
        if kw.pop("padded", False):
            mask = torch.ones(B, Sk, dtype=torch.bool)
            mask[0, : Sk // 3] = False  # left padding that covers whole key blocks and cuts one
            mask[-1, Sk // 2 :: 7] = False  # holes
            kw["key_padding_mask"] = mask
        out = fastxf.ops.attention(q, k, v, **kw)
        assert_matches(out, q, k, v, **kw)


# (B, Hq, Hkv, Sq, Sk, D, kwargs): rows per tile are (Hq / Hkv) * Sq.
TILE_CASES = [
    (2, 4, 1, 1, 37, 64, {}),  # 4 rows: loops
    (1, 4, 2, 4, 300, 64, {"causal": True}),  # 8 rows: BLAS, decode-style causal
    (1, 2, 2, 7, 257, 128, {"padded": True}),  # 7 rows: loops, 2 key blocks (257 = 256 + 1)
    (1, 4, 1, 32, 256, 64, {"causal": True}),  # exactly one 128-row tile, one key block
    (1, 4, 1, 33, 513, 64, {"causal": True, "padded": True}),  # 132 rows: a 128-row tile + a 4-row tile
    (2, 2, 1, 70, 70, 80, {"causal": True}),  # D = 80: a 64-column block + one 16-column rest
    (1, 3, 3, 5, 45, 48, {"window": 9, "causal": True}),  # D = 48: three 16-column blocks
    (1, 2, 1, 9, 31, 40, {"padded": True}),  # D = 40: scalar loops
    (1, 1, 1, 3, 17, 8, {"softcap": 5.0}),  # tiny D, softcap
    (2, 4, 2, 3, 100, 64, {"alibi_slopes": torch.tensor([0.5, 0.25, 0.125, 0.0625])}),
    (1, 2, 2, 520, 520, 64, {"causal": True, "window": 100}),  # whole key blocks skipped on both sides
    (1, 3, 3, 1, 37, 80, {}),  # MHA decode: one-row tiles, odd key count, 64 + 16 columns
    (2, 2, 2, 1, 300, 128, {"padded": True}),  # one-row tiles over two key blocks with holes
    (1, 1, 1, 130, 130, 32, {"causal": True}),  # 128-row causal tile: banded sgemm; a 2-row rest
    (1, 1, 1, 150, 150, 32, {"causal": True, "padded": True}),  # 22-row rest tile (never banded), holes
    (1, 2, 1, 20, 1100, 64, {"padded": True}),  # non-causal BLAS tile: 512-key blocks (512, 512, 76)
    (4, 2, 2, 20, 1025, 64, {}),  # 8 tiles, just past 1024 keys: 512-key blocks (512, 512, 1)
    (4, 2, 2, 20, 1024, 64, {"padded": True}),  # 8 tiles (>= 2 per thread) up to 1024 keys: one block
    (1, 2, 1, 20, 600, 64, {"window": 450}),  # a window: 256-key blocks
]


# fp16 differs from bf16 only in its conversions: one ISA (the default) is enough.
@pytest.mark.parametrize(
    "isa,dtype", [(i, d) for i in ISAS for d in (torch.float32, torch.bfloat16)] + [(ISAS[-1], torch.float16)]
)
@pytest.mark.parametrize("blas", ["1", "0"])
def test_tiles_every_isa_and_path(monkeypatch, threads, isa, blas, dtype):
    monkeypatch.setenv("FASTXF_CPU_ATTENTION_ISA", isa)
    monkeypatch.setenv("FASTXF_CPU_ATTENTION_BLAS", blas)
    threads(2)
    run_cases(dtype, TILE_CASES)


def _mask(B, Sk, kind):
    m = torch.ones(B, Sk, dtype=torch.bool)
    if kind == "left":
        m[:, : Sk // 3] = False
    elif kind == "right":
        for b in range(B):
            m[b, Sk - b * Sk // (2 * B) - 1 :] = False
    elif kind == "both":
        m[:, :5] = False
        m[0, -40:] = False
    elif kind == "holes":
        m[0, 3] = False
        m[-1, Sk // 2 :: 5] = False
    elif kind == "empty":  # one sequence sees nothing, another one key
        m[0] = False
        m[-1, :-1] = False
    return m


# Key padding at the ends of a sequence becomes a key range: left / right /
# both ends, holes (the mask read per key), a sequence with no key at all.
@pytest.mark.parametrize("kind", ["left", "right", "both", "holes", "empty"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("nthreads", [1, 2])
def test_padding_ranges(threads, nthreads, dtype, kind):
    threads(nthreads)
    for B, Hq, Hkv, Sq, Sk, D, kw in [
        (3, 2, 2, 1, 300, 64, {}),  # one-row tiles
        (3, 4, 2, 70, 300, 64, {}),  # 140 rows: a 128-row BLAS tile and a 12-row one
        (3, 2, 2, 97, 300, 64, {"causal": True}),
        (3, 2, 2, 50, 300, 64, {"causal": True, "window": 30}),
    ]:
        q, k, v = make_qkv(B, Hq, Hkv, Sq, Sk, D, dtype, "cpu")
        kw = dict(kw, key_padding_mask=_mask(B, Sk, kind))
        out = fastxf.ops.attention(q, k, v, **kw)
        assert_matches(out, q, k, v, **kw)
        if kind == "empty":
            assert (out[0] == 0).all()


# Other block sizes: 32-row tiles with 16-key blocks (many trimmed and skipped
# blocks, one band per tile), 64 x 48, and 256-row tiles over 512-key blocks
# (8 bands per causal block).
@pytest.mark.parametrize(
    "blocks,dtype", [(b, torch.float32) for b in ("32,16", "64,48", "256,512")] + [("32,16", torch.bfloat16)]
)
def test_block_sizes(monkeypatch, threads, blocks, dtype):
    monkeypatch.setenv("FASTXF_CPU_ATTENTION_BLOCKS", blocks)
    threads(2)
    run_cases(dtype, TILE_CASES)


@pytest.mark.parametrize("bad", ["128", "48,256", "512,256", "128,100", "x,y"])
def test_bad_block_sizes_are_an_error(monkeypatch, bad):
    monkeypatch.setenv("FASTXF_CPU_ATTENTION_BLOCKS", bad)
    q, k, v = make_qkv(1, 1, 1, 1, 4, 16, torch.float32, "cpu")
    with pytest.raises(RuntimeError, match="FASTXF_CPU_ATTENTION_BLOCKS"):
        fastxf.ops.attention(q, k, v)


# The serial path: MHA decode over 255 keys of fp32 D 64 reads just under 1 MiB
# of K / V (one thread), 257 keys just over (the pool); under 1.5 MFLOP either way.
@pytest.mark.parametrize("Sk", [255, 257])
@pytest.mark.parametrize("nthreads", [1, 2])
def test_serial_threshold(threads, nthreads, Sk):
    threads(nthreads)
    run_cases(torch.float32, [(1, 8, 8, 1, Sk, 64, {}), (2, 8, 8, 1, Sk, 64, {"padded": True})])


# Split-KV: one tile (B = Hkv = 1) and 2 threads split from 1024 keys on; 3 tiles
# split in 2; 1 thread never splits; 8 tiles (>= 2 threads x 4) do not either.
SPLIT_CASES = [
    (1, 4, 1, 1, 1023, 128, {}),
    (1, 4, 1, 1, 1024, 128, {}),
    (1, 4, 1, 2, 5000, 64, {"causal": True, "padded": True}),
    (1, 1, 1, 1, 4100, 128, {"window": 700}),  # splits that see nothing of the window
    (3, 2, 1, 1, 2048, 64, {"padded": True}),
    (2, 8, 4, 1, 1500, 64, {}),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nthreads", [1, 2])
def test_split_kv_boundaries(threads, nthreads, dtype):
    threads(nthreads)
    run_cases(dtype, SPLIT_CASES)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_thread_counts_agree_and_results_are_deterministic(threads, dtype):
    # Long enough to split with 2 threads; 1 thread runs it whole.
    q, k, v = make_qkv(1, 4, 1, 1, 4099, 64, dtype, "cpu")
    outs = []
    for n in (1, 2, 2):
        threads(n)
        outs.append(fastxf.ops.attention(q, k, v))
    assert torch.equal(outs[1], outs[2]), "same inputs and thread count must give bit-identical results"
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(outs[0], outs[1], rtol=tol, atol=tol)
    assert_matches(outs[1], q, k, v)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("blas", ["1", "0"])
def test_non_contiguous_views(monkeypatch, threads, blas, dtype):
    monkeypatch.setenv("FASTXF_CPU_ATTENTION_BLAS", blas)
    threads(2)
    B, Hq, Hkv, Sq, D = 2, 8, 2, 12, 64
    # q as HF's transposed view of (B, Sq, Hq, D); K / V as the first 300 slots of
    # a 512-slot cache laid out (B, S, Hkv, D): row stride Hkv * D, not D.
    q = torch.randn(B, Sq, Hq, D).to(dtype).transpose(1, 2)
    cache_k = torch.randn(B, 512, Hkv, D).to(dtype)
    cache_v = torch.randn(B, 512, Hkv, D).to(dtype)
    k, v = cache_k[:, :300].transpose(1, 2), cache_v[:, :300].transpose(1, 2)
    assert_matches(fastxf.ops.attention(q, k, v, causal=True), q, k, v, causal=True)
    # A single key broadcast over the sequence (row stride 0): BLAS cannot read
    # that in place, the kernel stages it.
    kb = torch.randn(B, Hkv, 1, D).to(dtype).expand(B, Hkv, 300, D)
    vb = torch.randn(B, Hkv, 300, D).to(dtype)
    assert_matches(fastxf.ops.attention(q, kb, vb), q, kb, vb)


@pytest.mark.parametrize("isa", ISAS)
def test_exp_underflow_and_empty_rows(monkeypatch, isa):
    monkeypatch.setenv("FASTXF_CPU_ATTENTION_ISA", isa)
    # Scores spread over hundreds: most probabilities underflow to exact zero
    # (the exp must return 0, not garbage or NaN, below -87), the rest must
    # still be right; and rows / sequences that see no key are exact zeros.
    B, H, Sq, Sk, D = 2, 2, 9, 300, 64
    q, k, v = make_qkv(B, H, H, Sq, Sk, D, torch.float32, "cpu")
    q = q * 20
    mask = torch.ones(B, Sk, dtype=torch.bool)
    mask[1] = False
    kw = dict(key_padding_mask=mask, causal=True, q_offset=torch.tensor([-3, 5]))
    out = fastxf.ops.attention(q, k, v, **kw)
    assert_matches(out, q, k, v, **kw)
    assert (out[1] == 0).all() and (out[0, :, :3] == 0).all()


def test_forcing_an_isa_the_cpu_lacks_is_an_error(monkeypatch):
    missing = [isa for isa in ("avx2", "avx512") if isa not in ISAS]
    if not missing:
        pytest.skip("this CPU runs every version")
    monkeypatch.setenv("FASTXF_CPU_ATTENTION_ISA", missing[0])
    q, k, v = make_qkv(1, 1, 1, 1, 4, 16, torch.float32, "cpu")
    with pytest.raises(RuntimeError, match="FASTXF_CPU_ATTENTION_ISA"):
        fastxf.ops.attention(q, k, v)



def _mkl_max_threads():
    """MKL's thread count for the calling thread, from the libtorch_cpu torch
    links (None when torch's BLAS is not MKL)."""
    import ctypes
    import os

    try:
        lib = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
        get_max = lib.MKL_Get_Max_Threads
    except (OSError, AttributeError):
        return None
    get_max.restype = ctypes.c_int
    return get_max


def test_blas_thread_setting_is_restored(threads):
    # The kernel tells MKL that its BLAS calls are sequential (each is one
    # thread's share of the work) and must hand the calling thread's setting
    # back: torch sets MKL's per-thread count to its own thread count, and the
    # caller's MKL-threaded matmuls after attention keep their threads.
    get_max = _mkl_max_threads()
    if get_max is None:
        pytest.skip("torch's BLAS is not MKL")
    threads(2)
    torch.mm(torch.randn(8, 8), torch.randn(8, 8))  # torch applies its setting to this thread
    if get_max() != 2:
        pytest.skip(f"MKL reports {get_max()} threads for torch's 2 on this machine")
    q, k, v = make_qkv(2, 4, 2, 64, 64, 64, torch.float32, "cpu")  # 128-row BLAS tiles, 2 threads
    out = fastxf.ops.attention(q, k, v)
    assert get_max() == 2, "the calling thread's MKL thread count was not restored"
    assert_matches(out, q, k, v)
