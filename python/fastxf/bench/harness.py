"""What every fastxf benchmark shares: argument checks for device and dtype,
timing, the copy / matmul ceilings, the results JSON, the terminal table and
the progress bar.

Results schema (one file per run): device, torch, commit, ceilings
{copy_gbps, matmul_tflops} measured in the same run, and rows
[{op, shape, dtype, impl, ms, gbps | tflops, ...}], one row per implementation
(`fastxf` and each baseline by name: torch, torch_compile, sdpa_*, hf_eager,
hf_sdpa, ...). Ratios are always baseline ms / fastxf ms (> 1: fastxf faster)."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class BenchArgError(ValueError):
    """A bad command-line argument: printed as one line, exit status 2."""


def resolve_device(name: str | None) -> torch.device:
    """`name` (None: cuda when usable, else cpu) -> a device fastxf can run on here."""
    import fastxf

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() and fastxf.cuda_kernels_built() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise BenchArgError(f"--device {name!r}: not a device; use cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise BenchArgError(f"--device {name!r}: fastxf runs on cpu or cuda")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise BenchArgError(f"--device {name!r}: no CUDA GPU is visible to torch {torch.__version__} "
                                f"(CUDA {torch.version.cuda or 'none'}); use --device cpu")
        if not fastxf.cuda_kernels_built():
            raise BenchArgError(f"--device {name!r}: this fastxf build has no CUDA kernels (built without nvcc "
                                "or with FASTXF_CUDA=OFF); rebuild with CUDA or use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise BenchArgError(f"--device {name!r}: only {torch.cuda.device_count()} GPU(s) visible")
    return device


def resolve_dtype(name: str | None, device: torch.device) -> torch.dtype:
    """`name` (None: bfloat16 on CUDA, float32 on CPU) -> a dtype the device runs."""
    if name is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise BenchArgError(f"--dtype {name!r}: choose from {', '.join(DTYPES)}")
    dtype = DTYPES[name]
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        if major < 8:  # fastxf's CUDA kernels need sm_80 for every dtype, and bf16 needs it anyway
            raise BenchArgError(f"--dtype {name}: {torch.cuda.get_device_name(device)} is sm_{major}{minor}; "
                                "fastxf's CUDA kernels need sm_80 or newer")
    return dtype


def dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn, *, device="cuda", warmup=5, min_runs=10, budget_s=0.4, inputs=None) -> float:
    """Median milliseconds of fn() (or fn(*inputs[i]) cycling through several
    input sets so that repeated runs do not just measure the L2 cache)."""
    sets = inputs or [()]
    for i in range(warmup):
        fn(*sets[i % len(sets)])
    sync(device)
    cuda = torch.device(device).type == "cuda"
    times = []
    start = time.perf_counter()
    i = 0
    while len(times) < min_runs or (time.perf_counter() - start < budget_s and len(times) < 200):
        args = sets[i % len(sets)]
        i += 1
        if cuda:
            a = torch.cuda.Event(enable_timing=True)
            b = torch.cuda.Event(enable_timing=True)
            a.record()
            fn(*args)
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        else:
            t0 = time.perf_counter()
            fn(*args)
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def time_interleaved(fns: dict, *, device, repeats: int, warmup: int = 1, progress=None) -> dict:
    """{name: ms} for zero-argument callables, run in turn `repeats` times so that
    each comparison sees the same machine state. CPU: the fastest run (on a shared
    machine the minimum is the least noisy estimate); CUDA: the median of
    CUDA-event times (the GPU is not shared; outliers are host hiccups)."""
    cuda = torch.device(device).type == "cuda"
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if cuda:
                a = torch.cuda.Event(enable_timing=True)
                b = torch.cuda.Event(enable_timing=True)
                a.record()
                fn()
                b.record()
                b.synchronize()
                times[name].append(a.elapsed_time(b))
            else:
                t0 = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t0) * 1e3)
        if progress is not None:
            progress.update(1)
    pick = statistics.median if cuda else min
    return {name: pick(t) for name, t in times.items()}


def measure_ceilings(device="cuda", dtype=None) -> dict:
    """Copy bandwidth (bytes read + written) and matmul rate of this device, for
    the "fraction of ceiling" columns. CUDA: 1 GiB copy (far past the L2), bf16
    8192^3 matmul, as in the results already published. CPU: 128 MiB copy (past any
    last-level cache) and a 1024^3 matmul in `dtype` (default float32), which BLAS runs
    near its peak; small so that a short run on a laptop stays short."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    n = (1 << 30) if cuda else (128 << 20)
    src = torch.empty(n, dtype=torch.uint8, device=device).random_(0, 255)
    dst = torch.empty_like(src)
    copy_ms = time_ms(lambda: dst.copy_(src), device=device, warmup=2, min_runs=5, budget_s=1.0 if cuda else 0.3)
    del src, dst
    m = 8192 if cuda else 1024
    mm_dtype = dtype or (torch.bfloat16 if cuda else torch.float32)
    a = torch.randn(m, m, device=device, dtype=mm_dtype)
    b = torch.randn(m, m, device=device, dtype=mm_dtype)
    mm_ms = time_ms(lambda: a @ b, device=device, warmup=2, min_runs=3, budget_s=1.0 if cuda else 0.3)
    return {"copy_gbps": 2 * n / copy_ms / 1e6, "matmul_tflops": 2 * m**3 / mm_ms / 1e9}


def git_commit() -> str:
    """The checkout's commit when run from one, else $FASTXF_COMMIT, else the version."""
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        # An installed package under some unrelated repository (a venv inside a project) would
        # report that project's commit: only trust git when it is fastxf's own tree.
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=here, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        if out.returncode == 0 and top and os.path.exists(os.path.join(top, "csrc", "registration.cpp")):
            return out.stdout.strip()
    except Exception:
        pass
    if os.environ.get("FASTXF_COMMIT"):
        return os.environ["FASTXF_COMMIT"]
    import fastxf

    return f"fastxf {fastxf.__version__} (installed, commit unknown)"


def device_name(device="cuda") -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name} ({torch.get_num_threads()} threads)"


def row(op, shape, dtype, impl, ms, *, bytes_moved=None, flops=None) -> dict:
    r = {"op": op, "shape": shape, "dtype": dtype_name(dtype), "impl": impl, "ms": round(ms, 5)}
    if bytes_moved is not None:
        r["gbps"] = round(bytes_moved / ms / 1e6, 1)
    if flops is not None:
        r["tflops"] = round(flops / ms / 1e9, 3 if flops / ms / 1e9 < 10 else 1)
    return r


def results_doc(rows, ceilings, device="cuda", extra=None) -> dict:
    doc = {
        "device": device_name(device),
        "torch": torch.__version__,
        "commit": git_commit(),
        "ceilings": {k: round(v, 3 if v < 10 else 1) for k, v in ceilings.items()},
        "rows": rows,
    }
    if extra:
        doc.update(extra)
    return doc


def write_results(path, rows, ceilings, device="cuda", extra=None) -> dict:
    doc = results_doc(rows, ceilings, device, extra)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
    return doc


def load_ceilings(path) -> dict:
    """Ceilings from a results JSON or a bare {copy_gbps, matmul_tflops} file."""
    with open(path) as f:
        doc = json.load(f)
    return doc.get("ceilings", doc)


def _rate(r, ceilings) -> str:
    if "gbps" in r:
        s = f"{r['gbps']:.0f} GB/s" if r["gbps"] >= 10 else f"{r['gbps']:.2f} GB/s"
        if ceilings and ceilings.get("copy_gbps"):
            s += f" ({r['gbps'] / ceilings['copy_gbps']:.0%})"
        return s
    if "tflops" in r:
        s = f"{r['tflops']:.1f} TFLOP/s" if r["tflops"] >= 10 else f"{r['tflops'] * 1e3:.0f} GFLOP/s"
        if ceilings and ceilings.get("matmul_tflops"):
            s += f" ({r['tflops'] / ceilings['matmul_tflops']:.0%})"
        return s
    return ""


def table(rows, ceilings=None, extra_cols=()) -> str:
    """Rows grouped by (op, shape, dtype), one line per implementation, with the
    rate, its fraction of the ceiling in parentheses, and baseline ms / fastxf ms."""
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["op"], r["shape"], r["dtype"]), []).append(r)
    head = ["op", "shape", "dtype", "impl", "ms", "rate (of ceiling)", *[c for c, _ in extra_cols], "vs fastxf"]
    body = []
    for (op, shape, dtype), rs in groups.items():
        fx = next((r for r in rs if r["impl"] == "fastxf"), None)
        for r in rs:
            ratio = "" if fx is None or r is fx else f"{r['ms'] / fx['ms']:.2f}x"
            extras = [fmt(r[key]) if key in r else "" for _, (key, fmt) in extra_cols]
            body.append([op, shape, dtype, r["impl"], f"{r['ms']:.4g}", _rate(r, ceilings), *extras, ratio])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    line = lambda cells: "  ".join(str(c).ljust(w) if i < 4 else str(c).rjust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(b) for b in body])


def print_table(rows, ceilings=None, baseline_key=None) -> None:
    """Prints the table (baseline_key: kept for older callers; rows always group by op, shape, dtype)."""
    print(table(rows, ceilings), flush=True)


def ceilings_line(ceilings, device, dtype=None) -> str:
    mm = dtype_name(dtype) if dtype is not None else ("bfloat16" if torch.device(device).type == "cuda" else "float32")
    return (f"ceilings measured now on {device_name(device)}: copy {ceilings['copy_gbps']:.1f} GB/s, "
            f"{mm} matmul {ceilings['matmul_tflops']:.3g} TFLOP/s")


def progress(total: int, desc: str):
    """A tqdm bar on stderr (transformers depends on tqdm); a no-op when stderr is
    not a terminal (logs, CI) or tqdm is missing."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        tqdm = None
    if tqdm is None or not sys.stderr.isatty():
        class _Null:
            def update(self, n=1):
                pass

            def set_postfix_str(self, s):
                pass

            def close(self):
                pass

        return _Null()
    return tqdm(total=total, desc=desc, leave=False, file=sys.stderr, dynamic_ncols=True)
