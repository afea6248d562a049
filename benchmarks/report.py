"""Renders benchmark results JSON as Markdown tables for the README:
    python benchmarks/report.py benchmarks/results/*.json
Each row: fastxf's time and rate, its fraction of the measured ceiling, and the
speed-up over each baseline measured in the same run (>1 = fastxf faster)."""

from __future__ import annotations

import json
import sys


def render(doc: dict) -> str:
    ceil = doc["ceilings"]
    groups: dict = {}
    for r in doc["rows"]:
        groups.setdefault((r["op"], r["shape"], r["dtype"]), {})[r["impl"]] = r
    baselines = sorted({impl for g in groups.values() for impl in g if impl != "fastxf"})
    lines = [
        f"{doc['device']}, torch {doc['torch']}, commit {doc['commit'][:10]}; ceilings: copy "
        f"{ceil['copy_gbps']:.0f} GB/s, bf16 matmul {ceil['matmul_tflops']:.0f} TFLOP/s",
        "",
        "| op | shape | dtype | fastxf ms | fastxf rate | of ceiling | " + " | ".join(f"vs {b}" for b in baselines) + " |",
        "| --- | --- | --- | ---: | ---: | ---: | " + " | ".join("---:" for _ in baselines) + " |",
    ]
    for (op, shape, dtype), g in groups.items():
        fx = g.get("fastxf")
        if fx is None:
            continue
        if "gbps" in fx:
            rate, frac = f"{fx['gbps']:.0f} GB/s", fx["gbps"] / ceil["copy_gbps"]
        elif "tflops" in fx:
            rate, frac = f"{fx['tflops']:.0f} TFLOP/s", fx["tflops"] / ceil["matmul_tflops"]
        else:
            rate, frac = "", None
        ratios = [f"{g[b]['ms'] / fx['ms']:.2f}x" if b in g else "" for b in baselines]
        frac_s = f"{frac:.0%}" if frac is not None else ""
        lines.append(f"| {op} | {shape} | {dtype} | {fx['ms']:.4f} | {rate} | {frac_s} | " + " | ".join(ratios) + " |")
    return "\n".join(lines)


def main(paths) -> int:
    for p in paths:
        with open(p) as f:
            print(f"### {p}\n\n{render(json.load(f))}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
