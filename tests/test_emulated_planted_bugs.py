"""Planted bugs in a real kernel are caught by the emulator.

csrc/attention/planted_bug<n>_emu.cpp compile the prefill kernel with
FASTXF_PLANT_BUG=n (hooks in prefill_kernel.cuh, compiled out everywhere
else); fastxf_emu::planted_prefill runs one of them (fp16, head dim 64):
  0: no bug (the harness itself is right),
  1: a dropped __syncthreads before a K/V stage is refilled -> race / early access reported,
  2: an off-by-one in the tile's row bound -> out-of-bounds read of q / k reported,
  3: two K fragment registers swapped -> wrong output (the accuracy check),
  4: a tile read before the cp.async wait that lands it -> reported.
"""

import pytest
import torch

from tests.emulation import require_emulator
from tests.test_attention import assert_matches

# Sk = 200: 4 key tiles of 64 (the refilled stage is reused) and a partial last
# tile; the last (batch, head) of k / v ends exactly at the end of its buffer.
B, H, SQ, SK, D = 1, 2, 70, 200, 64


def run(bug, causal=True):
    require_emulator()
    torch.manual_seed(0)
    q = torch.randn(B, H, SQ, D).half()
    k = torch.randn(B, H, SK, D).half()
    v = torch.randn(B, H, SK, D).half()
    out = torch.ops.fastxf_emu.planted_prefill(q, k, v, causal, bug)
    return out, (q, k, v)


def test_no_bug_matches_the_reference():
    out, (q, k, v) = run(0)
    assert_matches(out, q, k, v, causal=True)


def test_dropped_barrier_is_reported():
    # Without the barrier, the next tile's cp.async into a stage overlaps other
    # warps' reads of it: reported as a race, or as a read of a destination of
    # a cp.async in flight, whichever access the fiber schedule meets first.
    with pytest.raises(RuntimeError, match="shared-memory race|not yet retired by cp.async.wait_group"):
        run(1, causal=False)


def test_off_by_one_tail_is_out_of_bounds():
    with pytest.raises(RuntimeError, match="out-of-bounds global read .* buffer '[qk]'"):
        run(2)


def test_swapped_fragment_is_wrong_output():
    out, (q, k, v) = run(3)
    with pytest.raises(AssertionError, match="max error"):
        assert_matches(out, q, k, v, causal=True)


def test_read_before_cp_async_wait_is_reported():
    with pytest.raises(RuntimeError, match="not yet retired by cp.async.wait_group"):
        run(4)
