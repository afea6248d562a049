"""The packed fp16 / bf16 prefill path of the CPU attention kernel
(csrc/attention/cpu/half_tiles.cpp: K / V packed once per call for oneDNN's AMX
micro-kernels, torch's cpublas::brgemm), against the float64 reference with the
tolerances of tests/test_attention.py.

FASTXF_CPU_ATTENTION_BRGEMM=require makes the kernel raise when a problem does
not take the packed path, so the "packed" tests know they ran it (they skip
where the CPU / torch cannot: no AMX for the dtype, no cpublas symbols);
=0 forces the generic tiles, the fallback, which every machine runs. The cases
hit what the path does differently: tiles of 128 query rows (rows = query heads
of a group x positions) and key blocks of 256 with ragged ends (rows padded to
16 and keys to 32 for the micro-kernels), head dims 64 / 80 / 128 / 256 and 72
(not a multiple of 16), every mask and score option, strided inputs, the group
chunking of the packed buffer.
"""

from __future__ import annotations

import pytest
import torch

import fastxf.ops
from tests.test_attention import assert_matches, make_qkv

HALF = [torch.bfloat16, torch.float16]
ENV = "FASTXF_CPU_ATTENTION_BRGEMM"


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _packed_runs(dtype) -> bool:
    """Whether this machine takes the packed path for dtype (asked with =require)."""
    import os

    q, k, v = make_qkv(1, 2, 1, 32, 40, 64, dtype, "cpu")
    before = os.environ.get(ENV)
    os.environ[ENV] = "require"
    try:
        fastxf.ops.attention(q, k, v)
        return True
    except RuntimeError as e:
        assert ENV in str(e)
        return False
    finally:
        if before is None:
            del os.environ[ENV]
        else:
            os.environ[ENV] = before


PACKED = {dtype: _packed_runs(dtype) for dtype in HALF}


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@pytest.fixture(params=["packed", "fallback"])
def path(request, monkeypatch):
    """Runs a test on the packed path (skipped where unavailable) and on the fallback."""

    def use(dtype):
        if request.param == "packed":
            if not PACKED[dtype]:
                pytest.skip(f"no packed path for {dtype} here (AMX / cpublas)")
            monkeypatch.setenv(ENV, "require")
        else:
            monkeypatch.setenv(ENV, "0")

    return use


def test_packed_path_runs_where_amx_is():
    # Guards the skips above: on a CPU with AMX-BF16 and torch's oneDNN enabled
    # the bf16 path must run, not silently fall back.
    if "amx_bf16" not in _cpu_flags() or not torch.backends.mkldnn.is_available():
        pytest.skip("no AMX-BF16 here")
    assert PACKED[torch.bfloat16]
    if "amx_fp16" in _cpu_flags():
        assert PACKED[torch.float16]


def _mask(B, Sk):
    mask = torch.ones(B, Sk, dtype=torch.bool)
    mask[0, : Sk // 3] = False  # left padding: whole key blocks and part of one
    mask[-1, Sk // 2 :: 7] = False  # holes
    return mask


# (B, Hq, Hkv, Sq, Sk, D, kwargs); rows per (batch, kv head) = (Hq / Hkv) * Sq.
CASES = [
    (1, 2, 1, 32, 40, 64, {}),  # 64 rows: the smallest packed problem
    (2, 4, 2, 37, 300, 64, {}),  # 74 rows (padded to 80), keys 256 + 44 (padded to 64)
    (1, 8, 2, 70, 70, 80, {"causal": True}),  # 280 rows: 128 + 128 + 24; D = 80
    (1, 4, 1, 33, 513, 128, {"causal": True, "padded": True}),  # keys 256 + 256 + 1
    (1, 2, 2, 70, 77, 256, {}),  # D = 256
    (1, 4, 4, 65, 100, 72, {"causal": True}),  # D = 72: pairs not a multiple of 16
    (2, 6, 3, 40, 290, 64, {"padded": True}),
    (1, 2, 1, 300, 700, 64, {"causal": True, "window": 130}),  # blocks skipped on both sides
    (1, 4, 2, 40, 200, 64, {"softcap": 5.0}),
    (2, 4, 2, 40, 120, 64, {"alibi_slopes": torch.tensor([[0.5, 0.25, 0.125, 0.0625], [1.0, 0.3, 0.2, 0.1]])}),
    (1, 2, 1, 33, 90, 64, {"scale": 0.3, "causal": True}),
    (1, 2, 1, 33, 90, 64, {"scale": -0.2}),  # scale <= 0 goes through the in-place score transform
    # Bottom-right causal with q_offset: rows before the first key see nothing (exact zeros).
    (2, 4, 1, 36, 60, 64, {"causal": True, "q_offset": torch.tensor([-5, 20], dtype=torch.int32)}),
]


def _run(dtype, cases):
    for B, Hq, Hkv, Sq, Sk, D, kw in cases:
        q, k, v = make_qkv(B, Hq, Hkv, Sq, Sk, D, dtype, "cpu")
        kw = dict(kw)
        if kw.pop("padded", False):
            kw["key_padding_mask"] = _mask(B, Sk)
        out = fastxf.ops.attention(q, k, v, **kw)
        assert_matches(out, q, k, v, **kw)


@pytest.mark.parametrize("nthreads", [1, 2])
@pytest.mark.parametrize("dtype", HALF)
def test_cases(path, threads, dtype, nthreads):
    path(dtype)
    threads(nthreads)
    _run(dtype, CASES)


@pytest.mark.parametrize("dtype", HALF)
def test_empty_sequences_and_underflow(path, threads, dtype):
    # A sequence with every key padded (zeros), scores spread over hundreds (most
    # probabilities underflow to exact zero in the exp).
    path(dtype)
    threads(2)
    B, H, Sq, Sk, D = 2, 2, 64, 300, 64
    q, k, v = make_qkv(B, H, H, Sq, Sk, D, dtype, "cpu")
    q = (q.float() * 8).to(dtype)
    mask = torch.ones(B, Sk, dtype=torch.bool)
    mask[1] = False
    out = fastxf.ops.attention(q, k, v, key_padding_mask=mask)
    assert_matches(out, q, k, v, key_padding_mask=mask)
    assert (out[1] == 0).all()


@pytest.mark.parametrize("dtype", HALF)
def test_strided_inputs(path, threads, dtype):
    path(dtype)
    threads(2)
    B, Hq, Hkv, Sq, D = 2, 8, 2, 40, 64
    # q as HF's transposed view; K / V as the first 300 slots of a 512-slot cache
    # laid out (B, S, Hkv, D) (row stride Hkv * D); a broadcast key (row stride 0).
    q = torch.randn(B, Sq, Hq, D).to(dtype).transpose(1, 2)
    cache_k = torch.randn(B, 512, Hkv, D).to(dtype)
    cache_v = torch.randn(B, 512, Hkv, D).to(dtype)
    k, v = cache_k[:, :300].transpose(1, 2), cache_v[:, :300].transpose(1, 2)
    assert_matches(fastxf.ops.attention(q, k, v, causal=True), q, k, v, causal=True)
    kb = torch.randn(B, Hkv, 1, D).to(dtype).expand(B, Hkv, 300, D)
    assert_matches(fastxf.ops.attention(q, kb, v), q, kb, v)


# (B, Hq, Hkv, Sq, Sk, D): 16 (batch, kv head) groups of 2.2 MB packed K / V
# each: with 2 threads each thread packs and attends whole groups. 5 groups of
# 8200 keys x D 128 (4.3 MB packed each, too large to pack per thread, and odd):
# all threads pack, in chunks of 3 + 2 groups (16 MB buffer), then attend.
GROUP_SPLITS = [(2, 8, 8, 64, 4100, 128), (1, 10, 5, 32, 8200, 128)]


@pytest.mark.parametrize("shape", GROUP_SPLITS, ids=["per-thread-groups", "chunked"])
def test_group_splits_and_thread_counts_agree(path, threads, shape):
    # 1 thread always packs group by group: the result does not depend on the
    # thread count or the way groups are shared out (no split-KV on this path;
    # the fallback splits 5 tiles over 2 threads, so only same-count runs match).
    import os

    dtype = torch.bfloat16
    path(dtype)
    q, k, v = make_qkv(*shape, dtype, "cpu")
    outs = []
    for n in (1, 2, 2):
        threads(n)
        outs.append(fastxf.ops.attention(q, k, v, causal=True))
    assert torch.equal(outs[1], outs[2])
    if os.environ[ENV] == "require":
        assert torch.equal(outs[0], outs[1])
    assert_matches(outs[0], q, k, v, causal=True)
    assert_matches(outs[1], q, k, v, causal=True)


@pytest.mark.filterwarnings("ignore:TF32 acceleration")  # printed by mkldnn.flags() itself
@pytest.mark.parametrize("dtype", HALF)
def test_what_the_packed_path_does_not_take(monkeypatch, dtype):
    # =require names why a problem stays on the generic tiles; without it they run there.
    if not PACKED[dtype]:
        pytest.skip(f"no packed path for {dtype} here")
    monkeypatch.setenv(ENV, "require")
    for shape, why in [((1, 4, 1, 15, 50, 64), "query rows"), ((1, 2, 1, 40, 50, 33), "even head dim")]:
        q, k, v = make_qkv(*shape, dtype, "cpu")
        with pytest.raises(RuntimeError, match=why):
            fastxf.ops.attention(q, k, v)
    # Turning oneDNN off turns the path off (cpublas::could_pack says no).
    q, k, v = make_qkv(1, 4, 2, 40, 50, 64, dtype, "cpu")
    with torch.backends.mkldnn.flags(enabled=False):
        with pytest.raises(RuntimeError, match="AMX"):
            fastxf.ops.attention(q, k, v)
        monkeypatch.setenv(ENV, "1")
        assert_matches(fastxf.ops.attention(q, k, v), q, k, v)
