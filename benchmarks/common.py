"""The benchmark harness lives in the package (fastxf.bench.harness) so that
`python -m fastxf bench` works from an installed fastxf; this module keeps the
old import path for the scripts here."""

from __future__ import annotations

import glob
import os
import sys

_PY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python")
if glob.glob(os.path.join(_PY, "fastxf", "_C*")):  # this checkout's build wins over an installed fastxf
    sys.path.insert(0, _PY)

from fastxf.bench.harness import (  # noqa: E402,F401
    device_name,
    git_commit,
    load_ceilings,
    measure_ceilings,
    print_table,
    row,
    sync as _sync,
    table,
    time_interleaved,
    time_ms,
    write_results,
)
