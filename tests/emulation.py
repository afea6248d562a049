"""Shared set-up of the emulated CUDA kernel tests (tests/test_emulated_*.py).

The emulated tests need fastxf._emu (FASTXF_EMULATOR=ON builds, which CI and
scripts/test.sh make). Without it they skip, unless FASTXF_REQUIRE_EMULATOR=1
(set by CI) turns the skip into a failure, so a CI build that silently lost the
emulator cannot pass.
"""

import os

import pytest

import fastxf.testing

AVAILABLE = fastxf.testing.emulator_available()
REQUIRED = os.environ.get("FASTXF_REQUIRE_EMULATOR", "") == "1"


def require_emulator():
    if not AVAILABLE:
        if REQUIRED:
            pytest.fail("FASTXF_REQUIRE_EMULATOR=1 but fastxf._emu was not built (FASTXF_EMULATOR=ON)")
        pytest.skip("fastxf._emu not built (build with FASTXF_EMULATOR=ON, e.g. bash scripts/test.sh)")


def dispatch_log():
    """Lines the emulated host dispatch recorded since the last call (see csrc/gpu_host.h)."""
    import fastxf._emu

    return fastxf._emu.dispatch_log()


@pytest.fixture
def emulated():
    """Runs the test body with fastxf's ops on CPU tensors routed to the emulated CUDA kernels."""
    require_emulator()
    dispatch_log()  # drop what earlier tests left
    with fastxf.testing.emulate_cuda():
        yield
