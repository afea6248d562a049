"""The published norm benchmark (CUDA grid; --device cpu --quick checks it on a CPU).
The code is fastxf.bench.ops, shared with `python -m fastxf bench ops`:

    PYTHONPATH=python:. python benchmarks/bench_norm.py --out DIR [--ceilings-json FILE]
"""

import glob
import os
import sys

_PY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python")
if glob.glob(os.path.join(_PY, "fastxf", "_C*")):  # this checkout's build wins over an installed fastxf
    sys.path.insert(0, _PY)

from fastxf.bench.ops import legacy_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(legacy_main("norm"))
