"""Self tests of the CUDA emulator runtime (csrc/emu/), on its own test kernels.

The ldmatrix and mma layouts are checked against references written here from
the PTX ISA (an explicit gather, torch.mm), not against fastxf's kernels, so a
kernel bug and an emulator bug cannot agree by accident. Every checker
finding is exercised by a kernel with one planted bug (and its correct twin
must run clean).
"""

from __future__ import annotations

import re

import pytest
import torch

import fastxf  # noqa: F401  (loads fastxf._C)
from fastxf.testing import emulator_available
from tests.emulation import require_emulator


def _load_selftest_ops():
    if not emulator_available():
        return None
    import fastxf._emu  # noqa: F401  (registers torch.ops.fastxf_emu_selftest)

    return torch.ops.fastxf_emu_selftest


ops = _load_selftest_ops()


@pytest.fixture(autouse=True)
def _needs_emulator():
    if ops is None:
        require_emulator()  # a skip, or a failure under FASTXF_REQUIRE_EMULATOR=1 (CI)


# ------------------------------------------------------------------- mma ----
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("use_ldmatrix", [False, True], ids=["fragments", "ldmatrix"])
@pytest.mark.parametrize("mnk", [(16, 8, 16), (48, 40, 80), (32, 24, 48)])
def test_mma_gemm_matches_torch_mm(dtype, use_ldmatrix, mnk):
    m, n, k = mnk
    g = torch.Generator().manual_seed(m * 1000 + n * 10 + k)
    a = torch.randn(m, k, generator=g).to(dtype)
    b = torch.randn(k, n, generator=g).to(dtype)
    c = ops.mma_gemm(a, b, use_ldmatrix)
    assert c.dtype == torch.float32 and c.shape == (m, n)
    ref = torch.mm(a.double(), b.double())
    # 16-bit products are exact in fp32 and the emulator rounds each k16 sum once:
    # a few fp32 ulps of the magnitudes involved.
    bound = 4 * 2.0**-24 * torch.mm(a.double().abs(), b.double().abs()) * (k // 16) + 1e-30
    assert ((c.double() - ref).abs() <= bound).all(), (c.double() - ref).abs().max()


def test_mma_layout_is_not_symmetric():
    # A permutation of rows/columns would still pass a GEMM test with a
    # symmetric layout error; with one-hot inputs every output element has one
    # known source.
    a = torch.zeros(16, 16, dtype=torch.float16)
    b = torch.zeros(16, 8, dtype=torch.float16)
    a[3, 11] = 2.0
    a[12, 1] = 3.0
    b[11, 6] = 5.0
    b[1, 2] = 7.0
    c = ops.mma_gemm(a, b, False)
    expected = torch.zeros(16, 8)
    expected[3, 6] = 10.0
    expected[12, 2] = 21.0
    torch.testing.assert_close(c, expected, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_mma_accumulator_feeds_a_operand(dtype):
    # (A B) B2 with the fp32 accumulators of A B packed into the A operand of
    # the second mma: pins the C layout relative to the (ldmatrix-checked) A layout.
    g = torch.Generator().manual_seed(3)
    a = torch.randn(16, 16, generator=g).to(dtype)
    b = torch.randn(16, 16, generator=g).to(dtype)
    b2 = torch.randn(16, 8, generator=g).to(dtype)
    d = ops.mma_chain(a, b, b2)
    p = torch.mm(a.double(), b.double()).float().to(dtype)  # rounded like pack2 (round to nearest even)
    ref = torch.mm(p.double(), b2.double())
    bound = 4 * 2.0**-24 * torch.mm(p.double().abs(), b2.double().abs()) + 1e-30
    assert ((d.double() - ref).abs() <= bound).all(), (d.double() - ref).abs().max()


# -------------------------------------------------------------- ldmatrix ----
def _ldmatrix_reference(smem_rows, rows, num, trans):
    """PTX ISA: lanes 8i..8i+7 address rows 0..7 of matrix i; lane l gets in
    register i (row l//4, cols 2(l%4), 2(l%4)+1) of matrix i, .trans: (row 2(l%4), col l//4), (row 2(l%4)+1, col l//4)."""
    u16 = smem_rows.to(torch.int64) & 0xFFFF
    out = torch.zeros(32, num, dtype=torch.int64)
    for lane in range(32):
        g, t = lane // 4, lane % 4
        for i in range(num):
            mat = u16[rows[8 * i : 8 * i + 8].long()]  # (8 rows, 8 cols)
            lo, hi = (mat[2 * t, g], mat[2 * t + 1, g]) if trans else (mat[g, 2 * t], mat[g, 2 * t + 1])
            out[lane, i] = lo | (hi << 16)
    return out.to(torch.int32)  # two's complement view of the .b32 register


@pytest.mark.parametrize("num", [1, 2, 4])
@pytest.mark.parametrize("trans", [False, True])
def test_ldmatrix_matches_explicit_gather(num, trans):
    g = torch.Generator().manual_seed(num * 2 + trans)
    r = 37  # rows of 16 bytes in shared memory
    smem_rows = torch.randint(-32768, 32767, (r, 8), generator=g, dtype=torch.int16)
    rows = torch.randperm(r, generator=g)[:32].to(torch.int32)
    out = ops.ldmatrix_probe(smem_rows, rows, num, trans)
    torch.testing.assert_close(out, _ldmatrix_reference(smem_rows, rows, num, trans), rtol=0, atol=0)


def test_ldmatrix_reports_out_of_bounds_row():
    smem_rows = torch.zeros(8, 8, dtype=torch.int16)
    rows = torch.zeros(32, dtype=torch.int32)
    rows[5] = 9  # lane 5 addresses a row past the 8 written ones
    with pytest.raises(RuntimeError, match=r"(?s)out-of-bounds shared read.*ldmatrix_kernel.*lane 5\)"):
        ops.ldmatrix_probe(smem_rows, rows, 1, False)


# ------------------------------------------------------- shuffles, votes ----
def _shfl_reference(vals, args, mode, width, mask):
    out = torch.full((32,), -1, dtype=torch.int32)
    for lane in range(32):
        if not (mask >> lane) & 1:
            continue
        a = int(args[lane])
        first = lane & ~(width - 1)
        if mode == 0:  # idx: lane srcLane % width of this lane's segment
            src = first + (a & (width - 1))
        elif mode == 1:  # xor: a later segment returns the lane's own value
            src = lane ^ a
            src = lane if src >= first + width else src
        elif mode == 2:  # down
            src = lane + a
            src = lane if src >= first + width else src
        else:  # up
            src = lane - a
            src = lane if src < first else src
        out[lane] = vals[src]
    return out


@pytest.mark.parametrize("mode", [0, 1, 2, 3], ids=["idx", "xor", "down", "up"])
@pytest.mark.parametrize("width", [32, 8, 4])
def test_shuffles(mode, width):
    g = torch.Generator().manual_seed(mode * 100 + width)
    vals = torch.randint(-(2**31), 2**31 - 1, (32,), generator=g, dtype=torch.int32)
    hi = 32 if mode in (0, 1) else width
    args = torch.randint(0, hi, (32,), generator=g, dtype=torch.int32)
    if mode in (2, 3):
        args[:] = args[0]  # one delta for the warp, as in real code
    mask = 0xFFFFFFFF
    out = ops.shfl_probe(vals, args, mode, width, mask)
    torch.testing.assert_close(out, _shfl_reference(vals, args, mode, width, mask), rtol=0, atol=0)


def test_shuffle_partial_mask():
    vals = torch.arange(100, 132, dtype=torch.int32)
    args = torch.full((32,), 3, dtype=torch.int32)
    mask = 0x0000FFFF  # lanes 16-31 exit without shuffling
    out = ops.shfl_probe(vals, args, 1, 16, mask)
    torch.testing.assert_close(out, _shfl_reference(vals, args, 1, 16, mask), rtol=0, atol=0)
    args[2] = 20  # lane 2 reads lane 22, which is not in the mask
    with pytest.raises(RuntimeError, match=r"(?s)reads lane 22, outside the mask.*lane 2\)"):
        ops.shfl_probe(vals, args, 1, 32, mask)


def test_votes_and_warp_reductions():
    pred = torch.tensor([(i * 7) % 3 == 0 for i in range(32)], dtype=torch.int32)
    out, red = ops.vote_probe(pred)
    ballot = sum(1 << i for i in range(32) if pred[i])
    ballot_i32 = ballot - (1 << 32) if ballot >= 1 << 31 else ballot
    assert (out[:, 0] == ballot_i32).all()
    assert (out[:, 1] == 1).all() and (out[:, 2] == 0).all()
    assert (red[:, 0] == float(pred.sum())).all() and (red[:, 1] == 1.0).all()
    out, _ = ops.vote_probe(torch.ones(32, dtype=torch.int32))
    assert (out[:, 0] == -1).all() and (out[:, 2] == 1).all()


# -------------------------------------------------------------- cp.async ----
def test_cp_async_zero_fill_and_groups():
    n = 37
    g = torch.Generator().manual_seed(7)
    src = torch.randint(0, 256, (n * 16,), generator=g, dtype=torch.uint8)
    src_bytes = torch.randint(0, 17, (n,), generator=g, dtype=torch.int32)
    src_bytes[:3] = torch.tensor([0, 16, 5], dtype=torch.int32)
    out = ops.cp_async_probe(src, src_bytes)
    chunks = src.view(n, 16)
    nxt = [(i + 1) % n for i in range(n)]
    first = torch.zeros(n, 16, dtype=torch.uint8)
    for i, j in enumerate(nxt):
        k = int(src_bytes[j])
        first[i, :k] = chunks[j, :k]  # the rest of the 16 bytes is zero-filled
    torch.testing.assert_close(out[:n], first, rtol=0, atol=0)
    torch.testing.assert_close(out[n:], chunks[nxt], rtol=0, atol=0)


# ---------------------------------------------------------- planted bugs ----
_PLANTED = {
    1: r"shared-memory race: write of shared byte \d+ \('s' \+ \d+\), which thread \(\d+, 0, 0\) read",
    2: r"out-of-bounds global read of 4 bytes at address 0x[0-9a-f]+: offset 288 of buffer 'in' \(288 bytes\), "
    r"past its end.*thread \(5, 0, 0\)",
    3: r"out-of-bounds shared write of 4 bytes at shared byte \d+ \('s' \+ 256, past its end \(size 256\)\)"
    r".*thread \(63, 0, 0\)",
    4: r"read of never-written shared byte \d+ \('s' \+ 28\).*thread \(6, 0, 0\)",
    5: r"read of shared byte 0 \(dynamic shared memory \+ 0\), the destination of a cp.async not yet retired",
    6: r"deadlock.*threads 32-63: exited.*threads 0-31: wait at __syncthreads",
    7: r"divergent __syncthreads: threads 32-63 wait here, threads 0-31 at __syncthreads",
    8: r"out-of-bounds shared read of 4 bytes at shared byte 1036 \(dynamic shared memory \+ 1036, past its end "
    r"\(size 1024\)\).*thread \(3, 0, 0\)",
    9: r"write of 4 bytes to read-only global buffer 'in' at offset 36.*thread \(9, 0, 0\)",
    10: r"shared-memory race: write of shared byte 16 \(dynamic shared memory \+ 16\), which thread \(0, 0, 0\) "
    r"read.*thread \(1, 0, 0\)",
    11: r"misaligned global read of 16 bytes.*needs 16-byte alignment.*thread \(0, 0, 0\)",
    12: r"deadlock.*threads 16-31, 48-63: exited.*threads 0-15, 32-47: wait in a warp collective",
}


@pytest.mark.parametrize("bug", sorted(_PLANTED))
def test_planted_bug_is_reported(bug):
    x = torch.randn(72)
    with pytest.raises(RuntimeError) as info:
        ops.planted_bug(x, bug)
    msg = str(info.value)
    assert re.search(_PLANTED[bug], msg, re.S), msg
    # Every finding names the kernel, the block and a source location.
    assert re.search(r"kernel planted_kernel, block \(0, 0, 0\)", msg), msg
    assert "selftest_kernels.cpp:" in msg, msg


def test_correct_twin_runs_clean():
    x = torch.randn(72)
    out = ops.planted_bug(x, 0)
    # The same arithmetic, in the same fp32 order, in torch.
    t = torch.arange(64)
    v = x[(t + 1) % 64]
    v = v + (x[(t + 34) % 64] + 1.0)
    dyn = torch.zeros(256)
    dyn[:128] = x[:64].repeat(2)
    v = v + dyn[(t + 5) % 256]
    v = v + v[t ^ 3]
    torch.testing.assert_close(out, v, rtol=0, atol=0)
    # A finding in one launch leaves the emulator usable for the next.
    with pytest.raises(RuntimeError):
        ops.planted_bug(x, 1)
    torch.testing.assert_close(ops.planted_bug(x, 0), v, rtol=0, atol=0)


# ---------------------------------------------------- launch and limits ----
def test_dynamic_shared_memory_opt_in():
    with pytest.raises(RuntimeError, match=r"needs set_max_dynamic_shared_bytes"):
        ops.big_smem(64 * 1024, False)
    assert (ops.big_smem(64 * 1024, True) == 1.0).all()
    with pytest.raises(RuntimeError, match=r"exceeds the device maximum"):
        ops.big_smem(240 * 1024, True)


@pytest.mark.parametrize("grid,block", [((3, 2, 2), (64, 2, 1)), ((5, 1, 1), (32, 1, 1)), ((1, 1, 1), (1024, 1, 1))])
def test_grid_and_block_coordinates(grid, block):
    nb = grid[0] * grid[1] * grid[2]
    nt = block[0] * block[1] * block[2]
    x = torch.randn(nb, 203)
    out = ops.block_sum(x, list(grid), list(block))
    expected = x.sum(1, keepdim=True) + torch.arange(nt)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("blocks,threads", [(1, 1), (7, 96), (40, 65)])
def test_atomics_and_counting_barriers(blocks, threads):
    counter, fsum, out = ops.atomics_probe(blocks, threads)
    assert int(counter) == blocks * threads  # global atomics, blocks on several OS threads
    assert float(fsum) == 0.5 * blocks * threads
    for b in range(blocks):
        keys = [(b * 37 + t * 11) % 1000 for t in range(threads)]
        expected = [min(keys), max(keys), threads, len(range(0, threads, 3)), 1, int(threads > 5)]
        assert out[b].tolist() == expected, (b, out[b].tolist(), expected)


def test_warp_exchange_needs_syncwarp():
    out = ops.warp_exchange(True)
    torch.testing.assert_close(out, (torch.arange(64) ^ 1).float(), rtol=0, atol=0)
    with pytest.raises(RuntimeError, match=r"shared-memory race: write of shared byte \d+ \('s' \+ 4\), which thread \(0, 0, 0\) read"):
        ops.warp_exchange(False)


def test_full_mask_shuffle_in_a_partial_warp_is_reported():
    # 48 threads: warp 1 has 16 lanes, so a 0xffffffff shuffle there names lanes that do not exist.
    with pytest.raises(RuntimeError, match=r"(?s)__shfl_xor_sync with mask 0xffffffff names lanes that have exited or do "
                       r"not exist.*0xffff0000.*block_sum_kernel.*warp 1"):
        ops.block_sum(torch.randn(1, 10), [1, 1, 1], [48, 1, 1])


def test_failed_launch_leaves_no_state_behind():
    # Every launch of an OS thread reuses its executor (fiber pool, warp slots,
    # shared-memory shadow). A launch of 1000 threads that stops on a finding
    # while its fibers wait in shuffles and at a barrier, then one with 64 KiB of
    # dynamic shared memory, must not leak into later, smaller launches: the
    # deadlock report lists only the launch's own threads, and the guard bytes
    # after a static array count as unallocated again.
    with pytest.raises(RuntimeError, match=r"names lanes that have exited or do not exist"):
        ops.block_sum(torch.randn(1, 10), [1, 1, 1], [1000, 1, 1])  # last warp is partial
    assert (ops.big_smem(64 * 1024, True) == 1.0).all()
    x = torch.randn(1, 203)
    torch.testing.assert_close(ops.block_sum(x, [1, 1, 1], [64, 1, 1]), x.sum(1, keepdim=True) + torch.arange(64),
                               rtol=1e-5, atol=1e-4)
    ops.planted_bug(torch.randn(72), 0)  # the correct twin runs clean
    for bug in (3, 6, 12):
        with pytest.raises(RuntimeError) as info:
            ops.planted_bug(torch.randn(72), bug)
        msg = str(info.value)
        assert re.search(_PLANTED[bug], msg, re.S), msg
        listed = " ".join(re.findall(r"threads ([0-9, -]+):", msg))  # deadlock reports only
        assert all(int(t) < 64 for t in re.findall(r"\d+", listed)), msg
