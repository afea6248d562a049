"""python -m fastxf bench: is fastxf faster here? Runs from the installed package.

    python -m fastxf bench MODEL [options]     a whole model: fastxf vs HF eager and HF sdpa
    python -m fastxf bench ops [options]       the kernels: norms, prefill and decode attention vs torch
    python -m fastxf bench plot FILE.json...   PNG plots of results files

MODEL is a checkpoint directory or a built-in model type (see --help). Each run
prints a table and writes a results JSON and a PNG plot (the plot needs
matplotlib: pip install "fastxf[plot]"). The repository's benchmarks/ scripts
call this same code."""

from __future__ import annotations

import sys

from .harness import BenchArgError

USAGE = __doc__


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        from .model import model_names

        print("built-in models: " + ", ".join(model_names()))
        return 0 if argv else 2
    try:
        if argv[0] == "ops":
            from .ops import main as ops_main

            return ops_main(argv[1:])
        if argv[0] == "plot":
            from .plot import main as plot_main

            return plot_main(argv[1:])
        from .model import main as model_main

        return model_main(argv)
    except BenchArgError as e:
        # One clear line for a bad argument, not a traceback.
        print(f"python -m fastxf bench: error: {e}", file=sys.stderr)
        return 2
