"""PNG plots of results files: for each (op, shape, dtype), each baseline's time
over fastxf's (> 1: fastxf faster), one bar per baseline, one panel per (op, dtype).

    python -m fastxf bench plot FILE.json [...]     # writes FILE.png next to each

matplotlib is an optional extra: pip install "fastxf[plot]" (or matplotlib)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap

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
    """Writes the plot of one results document to `path` (PNG); returns path. One panel
    per (op, dtype); in each, one group of bars per shape, one bar per baseline."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    groups = _groups(doc)
    dtypes = sorted({key[2] for key in groups})
    panels: dict = {}  # panel title -> {bar-group label: {impl: row}}
    for (op, shape, dtype), g in groups.items():
        label = shape if len(dtypes) == 1 else f"{shape}\n{dtype}"
        panels.setdefault(op if len(dtypes) > 1 else f"{op}, {dtype}", {})[label] = g
    if len(panels) > 1 and all(len(p) == 1 for p in panels.values()):
        # One shape per op (a model run: prefill, decode, ...): one panel, a bar group per op.
        first_shape = next(iter(groups))[1].split(" +")[0]
        merged = {}
        for (op, shape, dtype), g in groups.items():
            suffix = f" +{shape.split(' +')[1]} tokens" if " +" in shape else ""
            merged[f"{op}{suffix}" + ("" if len(dtypes) == 1 else f"\n{dtype}")] = g
        panels = {f"{first_shape}, {'/'.join(dtypes)}": merged}
    ncols = 1 if len(panels) == 1 else 2
    nrows = -(-len(panels) // ncols)
    widest = max(len(p) for p in panels.values())
    nbase = len({impl for g in groups.values() for impl in g}) - 1
    fig_w = min(16.0, max(8.0, (2.0 + 0.3 * widest * nbase) * ncols))
    fig_h = 1.2 + 3.2 * nrows
    fig, axes = plt.subplots(nrows, ncols, figsize=(fig_w, fig_h), squeeze=False)
    for ax, (name, shapes) in zip(axes.flat, panels.items()):
        # Only this panel's baselines, in a fixed order, so that no bar slot stays empty.
        baselines = sorted({impl for g in shapes.values() for impl in g if impl != "fastxf"})
        k = max(1, len(baselines))
        width = 0.8 / k
        for j, b in enumerate(baselines):
            xs, ys = [], []
            for i, g in enumerate(shapes.values()):
                if b in g:
                    xs.append(i + (j - (k - 1) / 2) * width)
                    ys.append(g[b]["ms"] / g["fastxf"]["ms"])
            bars = ax.bar(xs, ys, width=width * 0.9, label=b, color=COLORS.get(b))
            if len(shapes) * k <= 24:  # values on the bars while they stay readable
                ax.bar_label(bars, labels=[f"{y:.2f}" for y in ys], fontsize=7, padding=1)
        ax.axhline(1.0, color="black", linewidth=0.8)
        tilt = len(shapes) > 4 or max(len(s) for s in shapes) * len(shapes) > 90
        ax.set_xticks(range(len(shapes)), list(shapes), fontsize=7, rotation=30 if tilt else 0,
                      ha="right" if tilt else "center")
        ax.set_title(name, fontsize=9)
        ax.set_ylabel("baseline time / fastxf time", fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
        ax.margins(y=0.15)
        ax.legend(fontsize=7, loc="best")  # per panel: the baselines differ between ops
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    ceil = doc.get("ceilings", {})
    commit = str(doc.get("commit"))
    if all(c in "0123456789abcdef" for c in commit) and len(commit) > 10:
        commit = commit[:10]
    sub = (f"{doc.get('device')}, torch {doc.get('torch')}, commit {commit}; ceilings: copy "
           f"{ceil.get('copy_gbps', 0):.3g} GB/s, matmul {ceil.get('matmul_tflops', 0):.3g} TFLOP/s; "
           "bars: baseline time / fastxf time, > 1: fastxf faster")
    lines = [title or _title(doc)] + textwrap.wrap(sub, width=int(fig_w * 14))
    fig.suptitle("\n".join(lines), fontsize=9, x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 1 - (0.05 + 0.16 * len(lines)) / fig_h))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
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
        print(f"no plot for {path}: no (op, shape, dtype) has both a fastxf row and a baseline")
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
