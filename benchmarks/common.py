"""Shared benchmark harness: timing with CUDA events, the copy / matmul
ceilings, and the results JSON (schema: device, torch, commit, ceilings
{copy_gbps, matmul_tflops}, rows [{op, shape, dtype, impl, ms, gbps|tflops}])."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time

import torch


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn, *, device="cuda", warmup=5, min_runs=10, budget_s=0.4, inputs=None) -> float:
    """Median milliseconds of fn() (or fn(*inputs[i]) cycling through several
    input sets so that repeated runs do not just measure the L2 cache)."""
    sets = inputs or [()]
    for i in range(warmup):
        fn(*sets[i % len(sets)])
    _sync(device)
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


def measure_ceilings(device="cuda") -> dict:
    """Device-to-device copy bandwidth (bytes read + written) and bf16 matmul rate."""
    n = 1 << 30  # 1 GiB buffers: far past the L2
    src = torch.empty(n, dtype=torch.uint8, device=device).random_(0, 255)
    dst = torch.empty_like(src)
    copy_ms = time_ms(lambda: dst.copy_(src), device=device, budget_s=1.0)
    del src, dst
    m = 8192
    a = torch.randn(m, m, device=device, dtype=torch.bfloat16)
    b = torch.randn(m, m, device=device, dtype=torch.bfloat16)
    mm_ms = time_ms(lambda: a @ b, device=device, budget_s=1.0)
    return {"copy_gbps": 2 * n / copy_ms / 1e6, "matmul_tflops": 2 * m**3 / mm_ms / 1e9}


def git_commit() -> str:
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        return subprocess.check_output(["git", "rev-parse", "HEAD"], cwd=here, text=True).strip()
    except Exception:
        return os.environ.get("FASTXF_COMMIT", "unknown")


def device_name(device="cuda") -> str:
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def row(op, shape, dtype, impl, ms, *, bytes_moved=None, flops=None) -> dict:
    r = {"op": op, "shape": shape, "dtype": str(dtype).replace("torch.", ""), "impl": impl, "ms": round(ms, 5)}
    if bytes_moved is not None:
        r["gbps"] = round(bytes_moved / ms / 1e6, 1)
    if flops is not None:
        r["tflops"] = round(flops / ms / 1e9, 1)
    return r


def write_results(path, rows, ceilings, device="cuda", extra=None) -> dict:
    doc = {
        "device": device_name(device),
        "torch": torch.__version__,
        "commit": git_commit(),
        "ceilings": {k: round(v, 1) for k, v in ceilings.items()},
        "rows": rows,
    }
    if extra:
        doc.update(extra)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
    return doc


def print_table(rows, ceilings=None, baseline_key=("op", "shape", "dtype")) -> None:
    """Prints rows grouped by (op, shape, dtype) with each impl's ratio to fastxf."""
    groups = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in baseline_key), []).append(r)
    for key, rs in groups.items():
        fx = next((r for r in rs if r["impl"] == "fastxf"), None)
        parts = []
        for r in rs:
            rate = f"{r['gbps']:.0f} GB/s" if "gbps" in r else f"{r.get('tflops', 0):.0f} TFLOP/s"
            if ceilings and "gbps" in r:
                rate += f" ({r['gbps'] / ceilings['copy_gbps']:.0%} copy)"
            if ceilings and "tflops" in r:
                rate += f" ({r['tflops'] / ceilings['matmul_tflops']:.0%} mm)"
            speed = f" x{r['ms'] / fx['ms']:.2f}" if fx and r is not fx else ""
            parts.append(f"{r['impl']}={r['ms']:.4f}ms {rate}{speed}")
        print(" | ".join(str(k) for k in key), "::", "; ".join(parts), flush=True)
