"""The CUDA LayerNorm / RMSNorm kernels (csrc/norm/) run by the CPU emulator,
against the float64 reference with the accuracy rule of tests/test_norm.py
(its `check`: at most 2x torch's own error in the same dtype).

Every launch configuration of choose_config (norm_cuda_ops.cpp) runs at least
once: the 16-byte vectorised and the scalar variants, N = 1, 2, 4 chunks per
thread with sub-warp / warp row groups and with a block per row, the scalar
N = 8 and 16, and the two-pass kernel for rows past what registers hold; each
with LayerNorm and RMSNorm, weight / bias in x's dtype and in fp32, the fused
residual, unit_offset and every out_dtype. test_every_config_dispatched checks
the coverage from the emulated dispatch's own log.
"""

import pytest
import torch

from tests.emulation import dispatch_log, emulated  # noqa: F401 (fixture)
from tests.test_norm import DTYPES, OPS, check

# Hidden sizes at the edges of the launch configurations, for 16-bit x (16-byte
# chunks of 8 elements) and fp32 x (chunks of 4): (hidden, what it selects).
CONFIGS_16 = [
    (64, "vec N=1 sub-warp"),
    (512, "vec N=2 warp"),
    (1024, "vec N=4 warp"),
    (2056, "vec N=4 block per row (G=96)"),
    (32776, "vec two-pass"),
    (31, "scalar N=1"),
    (50, "scalar N=2"),
    (1001, "scalar N=4 block per row"),
    (5001, "scalar N=8"),
    (10001, "scalar N=16"),
    (16385, "scalar two-pass"),
]
CONFIGS_32 = [(32, "vec N=1"), (200, "vec N=2"), (4100, "vec N=4 block per row"), (16388, "vec two-pass"), (33, "scalar N=2")]


def _rand(*shape, dtype):
    return torch.randn(*shape, dtype=torch.float32).to(dtype)


def _configs(dtype):
    return [h for h, _ in (CONFIGS_32 if dtype == torch.float32 else CONFIGS_16)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("op", OPS)
def test_launch_configs(emulated, dtype, op):
    for h in _configs(dtype):
        rows = 3 if h < 10000 else 2  # 3 rows: a multi-row block left partly empty
        x = _rand(rows, h, dtype=dtype) + 1
        w, b = _rand(h, dtype=dtype), _rand(h, dtype=torch.float32)  # weight in x's dtype, bias in fp32
        check(op, x, w, b)
        check(op, x, w.float(), None, residual=_rand(rows, h, dtype=dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("out_dtype", DTYPES, ids=str)
def test_out_dtypes(emulated, dtype, out_dtype):
    # Every (x dtype, out dtype) instantiation, vectorised and scalar.
    for h in (96, 97):
        x = _rand(5, h, dtype=dtype)
        check("layer_norm", x, _rand(h, dtype=dtype), _rand(h, dtype=dtype), out_dtype=out_dtype)
        check("rms_norm", x, _rand(h, dtype=dtype), residual=_rand(5, h, dtype=dtype), unit_offset=True,
              out_dtype=out_dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_views_and_no_affine(emulated, dtype):
    big = _rand(6, 1032, dtype=dtype)
    w = _rand(1025, dtype=dtype)
    check("layer_norm", big[:, 1:1025], w[1:], None)  # misaligned rows and weight: scalar variant
    check("layer_norm", big[::2, :1024], None, None, residual=big[1::2, 8:1032])  # strided rows, vectorised
    check("rms_norm", big[:, :1024], None)


def test_every_config_dispatched(emulated):
    dispatch_log()
    for dtype in DTYPES:
        for h in _configs(dtype):
            check("rms_norm", _rand(2, h, dtype=dtype), None)
    seen = {(" vec=" + line.split(" vec=")[1]) for line in dispatch_log()}
    want = {
        # (vectorised, N, G, rows per block) for every configuration listed above
        " vec=1 N=1 G=8 rows_per_block=16",
        " vec=1 N=2 G=32 rows_per_block=4",
        " vec=1 N=4 G=32 rows_per_block=4",
        " vec=1 N=4 G=96 rows_per_block=1",
        " vec=1 N=4 G=288 rows_per_block=1",
        " vec=1 N=0 G=512 rows_per_block=1",
        " vec=0 N=1 G=32 rows_per_block=4",
        " vec=0 N=2 G=32 rows_per_block=4",
        " vec=0 N=4 G=256 rows_per_block=1",
        " vec=0 N=8 G=640 rows_per_block=1",
        " vec=0 N=16 G=640 rows_per_block=1",
        " vec=0 N=0 G=512 rows_per_block=1",
    }
    assert want <= seen, f"not dispatched: {sorted(want - seen)}"
