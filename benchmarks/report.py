"""Renders benchmark results JSON as the README's Markdown tables, and checks the
issue's performance targets against them.

    python benchmarks/report.py benchmarks/results/*.json                   # print the tables
    python benchmarks/report.py --write README.md benchmarks/results/*.json # regenerate them in place
    python benchmarks/report.py --targets benchmarks/results/*.json         # which targets are met

--write replaces the text between `<!-- results:NAME -->` and
`<!-- /results:NAME -->` in the file with the table of NAME.json (NAME: the
file's base name), and leaves everything else alone; a results file without
markers is reported, not added. Each table: fastxf's time and rate, its fraction
of the ceiling measured in the same run, and every baseline's time over
fastxf's (> 1: fastxf faster). The reference row of a group is `fastxf`, or the
first `fastxf_*` row when there is none (e.g. a static-cache run that failed).
Missing files are reported and skipped (gpu_check.sh's report step runs on
whatever the run produced)."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys


def _groups(doc):
    groups: dict = {}
    for r in doc["rows"]:
        groups.setdefault((r["op"], r["shape"], r["dtype"]), {})[r["impl"]] = r
    return groups


def reference(g: dict):
    """The fastxf row of one (op, shape, dtype) group, or None."""
    if "fastxf" in g:
        return g["fastxf"]
    return next((r for impl, r in g.items() if impl.startswith("fastxf")), None)


def render(doc: dict) -> str:
    ceil = doc["ceilings"]
    groups = _groups(doc)
    refs = {key: reference(g) for key, g in groups.items()}
    baselines = sorted({impl for key, g in groups.items() for impl in g
                        if refs[key] is not None and impl != refs[key]["impl"]})
    extra = [k for k, label in (("tokens_per_s", "tok/s"), ("sentences_per_s", "sentences/s"))
             if any(k in r for r in doc["rows"])]
    labels = {"tokens_per_s": "fastxf tok/s", "sentences_per_s": "fastxf sentences/s"}
    commit = str(doc.get("commit", "unknown"))
    lines = [
        f"{doc['device']}, torch {doc['torch']}, commit {commit[:10]}; ceilings: copy "
        f"{ceil['copy_gbps']:.0f} GB/s, bf16 matmul {ceil['matmul_tflops']:.0f} TFLOP/s",
        "",
        "| op | shape | dtype | fastxf ms | fastxf rate | of ceiling | " + "".join(f"{labels[k]} | " for k in extra)
        + " | ".join(f"vs {b}" for b in baselines) + " |",
        "| --- | --- | --- | ---: | ---: | ---: | " + "".join("---: | " for _ in extra)
        + " | ".join("---:" for _ in baselines) + " |",
    ]
    for (op, shape, dtype), g in groups.items():
        fx = refs[(op, shape, dtype)]
        if fx is None:
            continue
        if "gbps" in fx:
            rate, frac = f"{fx['gbps']:.0f} GB/s", fx["gbps"] / ceil["copy_gbps"]
        elif "tflops" in fx:
            rate, frac = f"{fx['tflops']:.0f} TFLOP/s", fx["tflops"] / ceil["matmul_tflops"]
        else:
            rate, frac = "", None
        if fx["impl"] != "fastxf":
            rate += f" ({fx['impl']})"
        ratios = [f"{g[b]['ms'] / fx['ms']:.2f}x" if b in g else "" for b in baselines]
        frac_s = f"{frac:.0%}" if frac is not None else ""
        ex = "".join(f"{fx[k]:.1f} | " if k in fx else " | " for k in extra)
        lines.append(f"| {op} | {shape} | {dtype} | {fx['ms']:.4f} | {rate} | {frac_s} | {ex}" + " | ".join(ratios) + " |")
    return "\n".join(lines)


def write_tables(target: str, docs: dict) -> list[str]:
    """Replaces each results:NAME block of `target`; returns one message per file."""
    with open(target) as f:
        text = f.read()
    msgs = []
    for name, doc in docs.items():
        pat = re.compile(rf"(<!-- results:{re.escape(name)} -->\n)(.*?)(<!-- /results:{re.escape(name)} -->)", re.S)
        if not pat.search(text):
            msgs.append(f"{name}: no <!-- results:{name} --> markers in {target}, not written")
            continue
        table = render(doc)
        text = pat.sub(lambda m: m.group(1) + table + "\n" + m.group(3), text)
        msgs.append(f"{name}: table written ({len(doc['rows'])} rows)")
    with open(target, "w") as f:
        f.write(text)
    return msgs


# ----------------------------------------------------------------- targets

def _frac(r, ceil):
    return r["gbps"] / ceil["copy_gbps"] if "gbps" in r else None


def _speedups(g, fx, prefix=None, names=None):
    """{baseline: baseline ms / fastxf ms} for the baselines present."""
    return {b: r["ms"] / fx["ms"] for b, r in g.items()
            if r is not fx and (names is None or b in names) and (prefix is None or b.startswith(prefix))}


def _line(ok, what, detail):
    return f"{'MET ' if ok else 'MISS'} {what}: {detail}"


def targets(name: str, doc: dict) -> list[str]:
    """The issue's targets for one results file (by its base name), one line each."""
    ceil, out = doc["ceilings"], []
    groups = [(k, g, reference(g)) for k, g in _groups(doc).items()]
    groups = [(k, g, fx) for k, g, fx in groups if fx is not None]
    if name == "norm":
        low = [(f"{k[0]} {k[1]} {k[2]}", _frac(fx, ceil)) for k, g, fx in groups if _frac(fx, ceil) < 0.90]
        out.append(_line(not low, "norms >= 90% of copy bandwidth",
                         f"{len(groups) - len(low)}/{len(groups)} shapes; lowest: "
                         + ", ".join(f"{w} {f:.0%}" for w, f in sorted(low, key=lambda x: x[1])[:3])))
        for base in ("torch", "torch_compile", "hf_eager"):
            sp = [(f"{k[0]} {k[1]} {k[2]}", g[base]["ms"] / fx["ms"]) for k, g, fx in groups if base in g]
            slow = [s for s in sp if s[1] < 1]
            if sp:
                out.append(_line(not slow, f"norms faster than {base}", f"{len(sp) - len(slow)}/{len(sp)} shapes"
                                 + (f"; slower at {', '.join(f'{w} {s:.2f}x' for w, s in slow[:3])}" if slow else "")))
    elif name == "attention_prefill":
        for base in ("sdpa_flash", "sdpa_cudnn"):
            sp = [(f"{k[0]} {k[1]} {k[2]}", g[base]["ms"] / fx["ms"]) for k, g, fx in groups if base in g]
            slow = [s for s in sp if s[1] < 1]
            if sp:
                out.append(_line(not slow, f"prefill >= {base}", f"{len(sp) - len(slow)}/{len(sp)} shapes, "
                                 f"min {min(s for _, s in sp):.2f}x" + (f"; slowest {min(slow, key=lambda x: x[1])[0]}" if slow else "")))
    elif name == "attention_decode":
        big = [(k, g, fx) for k, g, fx in groups if "gbps" in fx and fx["gbps"] * fx["ms"] * 1e6 >= 64e6]
        low = [(f"{k[1]}", _frac(fx, ceil)) for k, g, fx in big if _frac(fx, ceil) < 0.85]
        out.append(_line(bool(big) and not low, "decode >= 85% of copy bandwidth (KV >= 64 MB)",
                         f"{len(big) - len(low)}/{len(big)} shapes" + (f"; lowest {min(low, key=lambda x: x[1])[0]} "
                                                                       f"{min(f for _, f in low):.0%}" if low else "")))
        slow, total = [], 0
        for k, g, fx in groups:
            for b, s in _speedups(g, fx, prefix="sdpa").items():
                total += 1
                if s < 1:
                    slow.append(f"{k[1]} vs {b} {s:.2f}x")
        out.append(_line(total > 0 and not slow, "decode faster than every SDPA backend",
                         f"{total - len(slow)}/{total} comparisons" + (f"; slower: {', '.join(slow[:3])}" if slow else "")))
    elif name == "e2e":
        for k, g, fx in groups:
            # Against HF's paths; fastxf's other rows (e.g. its dynamic cache) are context, not targets.
            sp = {b: v for b, v in _speedups(g, fx).items() if not b.startswith("fastxf")}
            frac = _frac(fx, ceil)
            what = f"e2e {k[0]} {k[1]} ({fx['impl']})"
            detail = ", ".join(f"{b} {s:.2f}x" for b, s in sp.items())
            if frac is not None and k[0] == "decode":
                detail += f"; {frac:.0%} of the bandwidth limit"
            out.append(_line(bool(sp) and all(s >= 1 for s in sp.values()), what, detail or "no baseline"))
        for cfg, info in (doc.get("configs") or {}).items():
            if "error" in info or "skipped" in info:
                out.append(_line(False, f"e2e {cfg}", info.get("error") or info.get("skipped")))
            errs = (info.get("checks") or {}).get("static_compile_errors")
            if errs:
                out.append(_line(False, f"e2e {cfg} static cache + compile", "; ".join(f"{k}: {v[:120]}" for k, v in errs.items())))
    return out


def load(paths):
    docs, msgs = {}, []
    for p in paths:
        if not os.path.exists(p):
            msgs.append(f"{p}: missing, skipped")
            continue
        try:
            with open(p) as f:
                doc = json.load(f)
            doc["rows"], doc["ceilings"]  # noqa: B018 (schema check)
        except (ValueError, KeyError) as e:
            msgs.append(f"{p}: not a results JSON ({type(e).__name__}: {e}), skipped")
            continue
        docs[os.path.splitext(os.path.basename(p))[0]] = doc
    return docs, msgs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="*", help="results JSON files")
    ap.add_argument("--write", metavar="FILE", help="replace the results:NAME blocks of FILE (e.g. README.md)")
    ap.add_argument("--targets", action="store_true", help="check the issue's performance targets")
    args = ap.parse_args(argv)
    docs, msgs = load(args.paths)
    for m in msgs:
        print(m)
    if args.write:
        for m in write_tables(args.write, docs):
            print(m)
    elif args.targets:
        for name, doc in docs.items():
            print(f"### {name} ({doc['device']}, commit {str(doc.get('commit'))[:10]})")
            for line in targets(name, doc) or ["(no targets for this file)"]:
                print("  " + line)
    else:
        for name, doc in docs.items():
            print(f"### {name}\n\n{render(doc)}\n")
    # Missing files are normal after a run cut short; a file that is not a results JSON is an error.
    return 1 if any("not a results JSON" in m for m in msgs) else 0


if __name__ == "__main__":
    sys.exit(main())
