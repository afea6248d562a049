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


def write_readme_block(table: str, begin: str, end: str, path: str | None = None) -> None:
    """Replaces what stands between the `begin` and `end` marker lines of README.md
    (or `path`) with `table`: how the CPU benchmarks regenerate their README tables."""
    path = path or os.path.join(os.path.dirname(_PY), "README.md")
    with open(path) as f:
        text = f.read()
    start = text.index(begin) + len(begin)
    stop = text.index(end)
    with open(path, "w") as f:
        f.write(text[:start] + "\n" + table + "\n" + text[stop:])


def add_render_arguments(parser) -> None:
    """--render JSON / --write-readme, shared by the benchmarks that own a README table."""
    parser.add_argument("--render", metavar="JSON", help="print the Markdown table of a results JSON (no benchmark)")
    parser.add_argument("--write-readme", action="store_true", help="with --render: put the table into README.md")


def render_results(args, render, begin: str, end: str) -> None:
    """Prints render(results JSON at args.render); with --write-readme also puts it between the markers."""
    import json

    with open(args.render) as f:
        table = render(json.load(f))
    print(table)
    if args.write_readme:
        write_readme_block(table, begin, end)


def save_json(doc: dict, path: str) -> None:
    """Writes a benchmark's results JSON (indented, trailing newline) and says where."""
    import json

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print(f"wrote {path}")
