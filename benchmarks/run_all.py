"""Runs every benchmark on the GPU with one measurement of the copy / matmul
ceilings, each in its own process (one failing benchmark does not stop the
rest) and under a time limit. scripts/gpu_check.sh runs the same scripts as
separate steps under its global deadline; this is the manual way. Usage:
    PYTHONPATH=python:. python benchmarks/run_all.py --out DIR [--only norm,attention_decode]"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

BENCHES = ["norm", "attention_decode", "attention_prefill", "e2e", "pipeline"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--only", default="", help="comma-separated subset of " + ",".join(BENCHES))
    ap.add_argument("--timeout", type=float, default=150, help="seconds per benchmark")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)

    import torch

    if not torch.cuda.is_available():
        print("benchmarks/run_all.py: no CUDA GPU visible; the benchmarks compare GPU kernels "
              "(CPU: python -m fastxf bench ops --device cpu)", file=sys.stderr)
        return 2
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from common import measure_ceilings

    ceilings = measure_ceilings()
    print(f"ceilings: copy {ceilings['copy_gbps']:.0f} GB/s, bf16 matmul {ceilings['matmul_tflops']:.0f} TFLOP/s",
          flush=True)
    ceil_path = os.path.join(tempfile.mkdtemp(), "ceilings.json")  # $OUT keeps only results
    with open(ceil_path, "w") as f:
        # As a results document: bench_pipeline.py reads doc["ceilings"], the others either form.
        json.dump({"ceilings": ceilings}, f)

    selected = [b for b in BENCHES if not args.only or b in args.only.split(",")]
    failed = []
    here = os.path.dirname(os.path.abspath(__file__))
    for name in selected:
        script = os.path.join(here, f"bench_{name}.py")
        if not os.path.exists(script):
            print(f"== {name}: no {script}, skipped", flush=True)
            continue
        print(f"== {name}", flush=True)
        t0 = time.time()
        try:
            rc = subprocess.run([sys.executable, script, "--out", args.out, "--ceilings-json", ceil_path],
                                timeout=args.timeout).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
        print(f"== {name}: rc={rc} in {time.time() - t0:.0f}s", flush=True)
        if rc != 0:
            failed.append(name)
    print("failed:", failed or "none")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
