"""python -m fastxf bench: runs the repository's benchmarks (benchmarks/run_all.py).

The benchmarks are code in the repository, not in the installed package: run
this from a checkout of fastxf, on a machine with a GPU."""

from __future__ import annotations

import os
import subprocess
import sys


def main(argv=None) -> int:
    argv = list(argv or [])
    script = os.path.join(os.getcwd(), "benchmarks", "run_all.py")
    if not os.path.exists(script):
        print("python -m fastxf bench: run it from the root of a fastxf checkout (benchmarks/run_all.py not found)",
              file=sys.stderr)
        return 2
    if "--out" not in argv:
        argv += ["--out", "benchmarks/results/latest"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, script, *argv], env=env).returncode
