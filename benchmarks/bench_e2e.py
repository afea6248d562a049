"""End-to-end: prefill latency and decode tokens/s of whole Hugging Face models,
fastxf.optimize vs HF's own eager and sdpa attention, same weights; the models
and the measurement are `python -m fastxf bench MODEL` (fastxf.bench.model),
run here for the published set into one e2e.json.

Models from their real configs (random weights, bf16 on GPU; nothing is
downloaded): GPT-2 (124M), OPT-350m, Llama-2-7B (full 32 layers), and BERT-base
on a right-padded batch (prefill only). Causal LMs get a left-padded batch and
greedy generate with a dynamic cache (--static-cache on: also a static cache,
compiled on CUDA).

    python benchmarks/bench_e2e.py --out DIR [--ceilings-json FILE] [--device cpu --smoke]

--smoke shrinks every model to 2 layers and small shapes (said in each row's
shape string) so the script can be checked on a CPU; GPU numbers use the full
configs.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys

_PY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python")
if glob.glob(os.path.join(_PY, "fastxf", "_C*")):  # this checkout's build wins over an installed fastxf
    sys.path.insert(0, _PY)

from fastxf.bench import model as model_bench  # noqa: E402
from fastxf.bench.harness import load_ceilings, table, write_results  # noqa: E402

MODELS = ["gpt2", "opt-350m", "llama-2-7b", "bert-base"]
# (batch, prompt tokens, new tokens) per model on GPU; --smoke uses (2, 32, 4).
SHAPES = {"gpt2": (8, 512, 32), "opt-350m": (8, 512, 32), "llama-2-7b": (4, 512, 16), "bert-base": (32, 128, 0)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="directory for e2e.json")
    p.add_argument("--ceilings-json", help="reuse ceilings measured already (a results JSON or {copy_gbps, matmul_tflops})")
    p.add_argument("--device", default="cuda")
    p.add_argument("--smoke", action="store_true", help="2-layer models, tiny shapes (CPU check of the script)")
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of " + ",".join(MODELS))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--static-cache", choices=("auto", "on", "off"), default="off",
                   help="also the static-cache decode (compiled on CUDA: minutes of compile per model; "
                        "off by default to fit gpu_check.sh's time limit)")
    args = p.parse_args(argv)

    # One set of ceilings for all models: given, or measured by the first model's run.
    ceilings = load_ceilings(args.ceilings_json) if args.ceilings_json else None
    rows, checks, status = [], {}, 0
    for name in args.models.split(","):
        batch, seq, new = (2, 32, 4 if name != "bert-base" else 0) if args.smoke else SHAPES[name]
        argv_m = [name, "--device", args.device, "--batch", str(batch), "--prompt-len", str(seq),
                  "--new-tokens", str(new), "--repeats", str(args.repeats), "--no-plot",
                  "--static-cache", args.static_cache]
        if args.smoke:
            argv_m += ["--layers", "2"]
        try:
            result, rc = model_bench.run(model_bench.parser().parse_args(argv_m), ceilings=ceilings)
        except Exception as e:  # one model failing (e.g. out of memory) does not lose the others
            print(f"{name}: FAILED {type(e).__name__}: {e}", flush=True)
            checks[name] = {"error": f"{type(e).__name__}: {e}"}
            status = 1
            continue
        status |= rc
        rows += result["rows"]
        ceilings = ceilings or result["ceilings"]
        device = result["device"]
        checks[name] = {k: result["extra"][k] for k in ("params", "model_class", "checks", "settings")}
    if not rows:
        return 1
    print(table(rows, ceilings, model_bench.EXTRA_COLS))
    path = os.path.join(args.out, "e2e.json")
    write_results(path, rows, ceilings, device=device, extra={"bench": "e2e", "checks": checks})
    print(f"wrote {path}")
    return status


if __name__ == "__main__":
    sys.exit(main())
