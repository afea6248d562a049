"""Forward LayerNorm / RMSNorm / fused add + RMSNorm: fastxf vs torch, torch.compile and HF eager.

    python benchmarks/bench_norm.py --out DIR [--ceilings-json FILE]

GB/s counts every input read once and every output written once (x, residual,
weight, bias; out, new residual). Times are GPU times: each impl is captured
in a CUDA graph of several calls (cycling through input sets larger than L2)
and the graph's replay time is divided by the calls, so Python and launch
overheads, which differ between impls and hide small kernels, are left out. The full grid (rows x hidden) runs for bf16
RMSNorm; the other (op, dtype) pairs run at 16384 rows to stay within the GPU
time budget. torch.compile sees the row count as dynamic and the hidden size as
static (one compile per hidden size, with the persistent-reduction kernel a
fixed-size model would get).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import measure_ceilings, print_table, row, time_ms, write_results  # noqa: E402

ROWS = [4096, 16384, 65536]
HIDDEN = [2048, 4096, 5000, 8192, 16384]
EPS = 1e-6


def torch_impl(op):
    if op == "rms_norm":
        return lambda x, r, w, b: F.rms_norm(x, x.shape[-1:], w, EPS)
    if op == "layer_norm":
        return lambda x, r, w, b: F.layer_norm(x, x.shape[-1:], w, b, EPS)

    def add_rms(x, r, w, b):
        s = x + r
        return F.rms_norm(s, s.shape[-1:], w, EPS), s

    return add_rms


def fastxf_impl(op):
    import fastxf.ops as ops

    if op == "rms_norm":
        return lambda x, r, w, b: ops.rms_norm(x, w, EPS)
    if op == "layer_norm":
        return lambda x, r, w, b: ops.layer_norm(x, w, b, EPS)
    return lambda x, r, w, b: ops.rms_norm(x, w, EPS, residual=r)


def hf_impl(op, hidden, dtype, weight):
    if op == "layer_norm":
        return None  # HF models use nn.LayerNorm, i.e. the torch row
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    norm = LlamaRMSNorm(hidden, eps=EPS).to(device="cuda", dtype=dtype)
    with torch.no_grad():
        norm.weight.copy_(weight)
    if op == "rms_norm":
        return lambda x, r, w, b: norm(x)

    def add_rms(x, r, w, b):  # the unfused pair of a Llama decoder layer
        s = x + r
        return norm(s), s

    return add_rms


def bytes_moved(op, rows, hidden, dtype):
    e = torch.finfo(dtype).bits // 8
    n = rows * hidden
    if op == "rms_norm":
        return (2 * n + hidden) * e
    if op == "layer_norm":
        return (2 * n + 2 * hidden) * e
    return (4 * n + hidden) * e


def make_inputs(rows, hidden, dtype, op):
    # Several input sets for small problems so repeated runs do not just hit L2.
    per_set = bytes_moved(op, rows, hidden, dtype)
    sets = max(1, min(4, (256 << 20) // per_set))
    w = torch.randn(hidden, device="cuda", dtype=dtype)
    b = torch.randn(hidden, device="cuda", dtype=dtype)
    out = []
    for _ in range(sets):
        x = torch.randn(rows, hidden, device="cuda", dtype=dtype)
        r = torch.randn(rows, hidden, device="cuda", dtype=dtype) if op == "add_rms_norm" else None
        out.append((x, r, w, b))
    return out


def graph_time_ms(fn, sets, out_bytes):
    """Per-call GPU time of fn from replaying a CUDA graph of `reps` calls."""
    reps = max(1, min(16, (3 << 30) // out_bytes))  # the graph's outputs stay allocated
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the default stream, as capture wants
        fn(*sets[0])
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(reps):
            fn(*sets[i % len(sets)])
    ms = time_ms(graph.replay, warmup=2, min_runs=5, budget_s=0.08) / reps
    del graph
    return ms


def grid(ops_filter):
    for op in ("rms_norm", "add_rms_norm", "layer_norm"):
        if ops_filter and op not in ops_filter:
            continue
        for dtype in (torch.bfloat16, torch.float16):
            rows = ROWS if (op == "rms_norm" and dtype == torch.bfloat16) else [16384]
            for hidden in HIDDEN:
                for r in rows:
                    yield op, dtype, r, hidden


@torch.inference_mode()
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--ceilings-json", default=None)
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    ap.add_argument("--ops", default="", help="comma-separated subset of rms_norm,add_rms_norm,layer_norm")
    ap.add_argument("--name", default="norm", help="results file name (DIR/NAME.json)")
    args = ap.parse_args()
    assert torch.cuda.is_available(), "bench_norm needs a CUDA GPU"
    start = time.time()

    if args.ceilings_json:
        with open(args.ceilings_json) as f:
            doc = json.load(f)
        ceilings = doc.get("ceilings", doc)
    else:
        ceilings = measure_ceilings()
    print(f"ceilings: {ceilings}", flush=True)

    # Many (op, dtype, hidden) graphs: raise dynamo's per-function recompile cap.
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 256)
    compiled = {}
    compile_s = 0.0
    rows_out = []
    ops_filter = set(args.ops.split(",")) if args.ops else None
    for op, dtype, rows, hidden in grid(ops_filter):
        sets = make_inputs(rows, hidden, dtype, op)
        impls = {"fastxf": fastxf_impl(op), "torch": torch_impl(op)}
        if not args.no_compile:
            key = (op, dtype, hidden)
            if key not in compiled:
                compiled[key] = torch.compile(torch_impl(op), fullgraph=True)
            impls["torch_compile"] = compiled[key]
        hf = hf_impl(op, hidden, dtype, sets[0][2])
        if hf is not None:
            impls["hf_eager"] = hf
        nbytes = bytes_moved(op, rows, hidden, dtype)
        for name, fn in impls.items():
            if name == "torch_compile":
                for x, r, w, b in sets:
                    torch._dynamo.maybe_mark_dynamic(x, 0)
                    if r is not None:
                        torch._dynamo.maybe_mark_dynamic(r, 0)
                t0 = time.time()
                fn(*sets[0])
                torch.cuda.synchronize()
                compile_s += time.time() - t0
            out_bytes = rows * hidden * (torch.finfo(dtype).bits // 8) * (2 if op == "add_rms_norm" else 1)
            ms = graph_time_ms(fn, sets, out_bytes)
            rows_out.append(row(op, f"{rows}x{hidden}", dtype, name, ms, bytes_moved=nbytes))
        del sets
        torch.cuda.empty_cache()

    print_table(rows_out, ceilings)
    path = os.path.join(args.out, f"{args.name}.json")
    extra = {"bench": "norm", "timing": "cuda_graph_replay", "compile_s": round(compile_s, 1)}
    write_results(path, rows_out, ceilings, extra=extra)
    print(f"wrote {path} ({len(rows_out)} rows, {time.time() - start:.0f} s, torch.compile {compile_s:.0f} s)")


if __name__ == "__main__":
    main()
