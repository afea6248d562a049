"""PNG plots of results files: for each (op, shape, dtype), each baseline's time
over fastxf's (> 1: fastxf faster), one horizontal bar per baseline.

    python -m fastxf bench plot FILE.json [...]     # writes FILE.png next to each

matplotlib is an optional extra: pip install "fastxf[plot]" (or matplotlib)."""

from __future__ import annotations

import argparse
import json
import os
import sys

# Fixed colours per implementation, so that every plot reads the same way.
COLORS = {
    "hf_eager": "#8c8c8c", "hf_sdpa": "#4c72b0", "torch": "#55a868", "torch_compile": "#c44e52",
    "sdpa_default": "#4c72b0", "sdpa_flash": "#8172b2", "sdpa_cudnn": "#937860", "sdpa_efficient": "#da8bc3",
}
MISSING = 'matplotlib is not installed: no plot (pip install "fastxf[plot]" or pip install matplotlib)'


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _groups(doc):
    groups: dict = {}
    for r in doc["rows"]:
        groups.setdefault((r["op"], r["shape"], r["dtype"]), {})[r["impl"]] = r
    return {k: g for k, g in groups.items() if "fastxf" in g and len(g) > 1}


def plot(doc: dict, path: str, title: str | None = None) -> str:
    """Writes the plot of one results document to `path` (PNG); returns path."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    groups = _groups(doc)
    baselines = sorted({impl for g in groups.values() for impl in g if impl != "fastxf"})
    labels = [f"{op} {shape}" + ("" if len({k[2] for k in groups}) == 1 else f" {dtype}")
              for op, shape, dtype in groups]
    n, k = len(groups), max(1, len(baselines))
    bar_h = 0.8 / k
    fig, ax = plt.subplots(figsize=(10, 1.2 + 0.22 * n * k + 0.12 * n))
    for j, b in enumerate(baselines):
        ys, xs = [], []
        for i, g in enumerate(groups.values()):
            if b in g:
                ys.append(i + (j - (k - 1) / 2) * bar_h)
                xs.append(g[b]["ms"] / g["fastxf"]["ms"])
        bars = ax.barh(ys, xs, height=bar_h * 0.9, label=b, color=COLORS.get(b))
        ax.bar_label(bars, labels=[f"{x:.2f}x" for x in xs], fontsize=7, padding=2)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(range(n), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("baseline time / fastxf time  (> 1: fastxf faster)")
    ceil = doc.get("ceilings", {})
    dtypes = sorted({key[2] for key in groups})
    sub = (f"{doc.get('device')}, torch {doc.get('torch')}, commit {str(doc.get('commit'))[:10]}, "
           f"{'/'.join(dtypes)}; ceilings: copy {ceil.get('copy_gbps', 0):.0f} GB/s, "
           f"matmul {ceil.get('matmul_tflops', 0):.3g} TFLOP/s")
    ax.set_title((title or _title(doc)) + "\n" + sub, fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    ax.margins(x=0.12)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _title(doc) -> str:
    if doc.get("bench") == "model":
        return f"fastxf vs Hugging Face on {doc.get('model')} ({doc.get('model_class')})"
    return f"fastxf {doc.get('bench', 'benchmark')}"


def plot_or_explain(doc: dict, path: str) -> str | None:
    """Plots when matplotlib is there, else says how to get it (the run still succeeds)."""
    if not have_matplotlib():
        print(MISSING)
        return None
    if not _groups(doc):
        print("no plot: no row has both fastxf and a baseline")
        return None
    plot(doc, path)
    print(f"wrote {path}")
    return path


def main(argv) -> int:
    p = argparse.ArgumentParser(prog="python -m fastxf bench plot", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", metavar="FILE.json")
    p.add_argument("--out-dir", default=None, help="where the PNGs go (default: next to each JSON)")
    args = p.parse_args(argv)
    if not have_matplotlib():
        print(MISSING, file=sys.stderr)
        return 2
    for f in args.files:
        try:
            with open(f) as fh:
                doc = json.load(fh)
        except (OSError, ValueError) as e:
            print(f"{f}: cannot read a results JSON ({e})", file=sys.stderr)
            return 2
        out = os.path.splitext(f)[0] + ".png"
        if args.out_dir:
            out = os.path.join(args.out_dir, os.path.basename(out))
        plot_or_explain(doc, out)
    return 0
