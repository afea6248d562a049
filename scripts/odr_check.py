"""Lists fastxf functions that both compilers of a CUDA build compiled: defined in
an nvcc object (*.cu.o) and in a g++ object (*.cpp.o) of BUILD_DIR. Such an
inline function exists twice and the linker keeps one copy, whichever it meets
first; the copies need not agree (different compilers, flags, inlining), which
is how a TORCH_CHECK throwing from host code shared by the CPU and CUDA norm ops
crashed the process on the GPU machine (torch 2.11, commit 2ddd34e; the checks
moved out of line in a806bc5). scripts/gpu_check.sh's segv step runs this next
to the bad-input check.

    python scripts/odr_check.py build/gpu       # exit 1 when a function is in both
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys


def defined_symbols(obj: str) -> set[str]:
    """Demangled fastxf:: function symbols defined in `obj` (text, weak or unique)."""
    out = subprocess.run(["nm", "-C", "--defined-only", obj], capture_output=True, text=True, check=True).stdout
    syms = set()
    for line in out.splitlines():
        parts = line.split(" ", 2)
        if len(parts) == 3 and parts[1] in ("T", "t", "W", "u", "V") and "fastxf::" in parts[2]:
            syms.add(parts[2])
    return syms


def duplicates(build_dir: str) -> tuple[dict, int, int]:
    objs = glob.glob(os.path.join(build_dir, "**", "*.o"), recursive=True)
    nv = [o for o in objs if o.endswith(".cu.o")]
    cc = [o for o in objs if o.endswith((".cpp.o", ".cc.o"))]
    in_nv: dict = {}
    for o in nv:
        for s in defined_symbols(o):
            in_nv.setdefault(s, o)
    both: dict = {}
    for o in cc:
        for s in defined_symbols(o):
            if s in in_nv:
                both.setdefault(s, (in_nv[s], o))
    return both, len(nv), len(cc)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    build_dir = argv[0] if argv else "build/gpu"
    both, n_nv, n_cc = duplicates(build_dir)
    print(f"odr_check {build_dir}: {n_nv} nvcc objects, {n_cc} g++ objects")
    if not n_nv:
        print("  no nvcc objects (a CPU-only build): nothing to compare")
        return 0
    for sym, (a, b) in sorted(both.items()):
        print(f"  in both: {sym}\n    {os.path.basename(a)} and {os.path.basename(b)}")
    print(f"  {len(both)} fastxf function(s) compiled by both nvcc and g++")
    return 1 if both else 0


if __name__ == "__main__":
    sys.exit(main())
