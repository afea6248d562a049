"""Testing tools: run fastxf's CUDA kernels on the CPU through the emulator.

    with fastxf.testing.emulate_cuda():
        y = fastxf.ops.attention(q, k, v, causal=True)   # CPU tensors in, CPU tensor out

Inside the context, fastxf's ops called on CPU tensors (through fastxf.ops or
torch.ops.fastxf directly) take the CUDA dispatch (decode vs prefill, split
count, tile sizes, instantiation by dtype and head dim, as on an H100 / H200:
132 SMs, 227 KB of shared memory per block) and run the CUDA kernel code in
fastxf._emu, an emulator that checks every global and shared memory access.
A checker finding (out-of-bounds access, shared-memory race, read of
uninitialised shared memory or of a cp.async destination before its wait,
divergent barrier) raises RuntimeError. `FASTXF_EMULATE_CUDA=1` switches the
emulation on for the whole process at `import fastxf`.

The emulator is an opt-in build: `FASTXF_EMULATOR=ON pip install
--no-build-isolation .` (scripts/test.sh does this).
"""

from __future__ import annotations

import contextlib
import importlib
import os

from .. import _C

__all__ = ["emulate_cuda", "emulator_available"]

_BUILD_HINT = (
    "build fastxf with the emulator: `FASTXF_EMULATOR=ON pip install --no-build-isolation .` "
    "(or `bash scripts/test.sh`, which does), or for a development build "
    "`scripts/dev_build.sh -DFASTXF_EMULATOR=ON`"
)


def _import_emu():
    return importlib.import_module("fastxf._emu")


def _load_emulator():
    try:
        return _import_emu()
    except ImportError as e:
        raise RuntimeError(f"fastxf.testing.emulate_cuda: this fastxf build has no CUDA emulator ({e}); {_BUILD_HINT}") from e


def emulator_available() -> bool:
    """Whether fastxf._emu (the CPU emulator of the CUDA kernels) was built."""
    try:
        _import_emu()
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def emulate_cuda():
    """Runs fastxf's CUDA kernels through the CPU emulator for ops called on CPU tensors.

    The switch is process-wide while the context is open (autograd and other
    threads see it too); nesting restores the outer setting on exit.
    """
    _load_emulator()
    previous = _C._set_emulate_cuda(True)
    try:
        yield
    finally:
        _C._set_emulate_cuda(previous)


def _apply_env() -> None:
    """FASTXF_EMULATE_CUDA=1: emulation on for the whole process (called by `import fastxf`)."""
    value = os.environ.get("FASTXF_EMULATE_CUDA", "").strip().lower()
    if value in ("", "0", "false", "off", "no"):
        return
    if value not in ("1", "true", "on", "yes"):
        raise ValueError(f"FASTXF_EMULATE_CUDA must be 0 or 1 (or true / false, on / off), got {value!r}")
    _load_emulator()
    _C._set_emulate_cuda(True)
