"""python -m fastxf bench ops: fastxf's kernels against torch's own, on this machine.

Three groups (--only): norm (LayerNorm, RMSNorm, fused residual add + RMSNorm
vs F.layer_norm / F.rms_norm, torch.compile of them and HF's LlamaRMSNorm),
prefill (attention over whole sequences vs torch SDPA, forced to each backend
on CUDA) and decode (a few query tokens over a KV cache vs SDPA and HF's eager
attention math). Every case checks fastxf's output against the first baseline
before timing it.

CUDA runs the full grids of the published results (the repository's
benchmarks/bench_norm.py, bench_attention_prefill.py, bench_attention_decode.py
call the same functions); CPU runs a few representative shapes. GB/s count each
input read once and each output written once; TFLOP/s count 4 B H Sq Sk D,
halved for causal.

Timing. CUDA: norms replay a CUDA graph of several calls (launch overheads,
which differ between implementations and hide small kernels, left out);
attention uses CUDA events around each call, cycling through input copies
larger than the L2. CPU: implementations run in turn, `--repeats` rounds, the
fastest run of each kept (the least noisy estimate on a shared machine).
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F

from .harness import (
    DTYPES,
    BenchArgError,
    ceilings_line,
    dtype_name,
    load_ceilings,
    measure_ceilings,
    progress,
    resolve_device,
    resolve_dtype,
    row,
    table,
    time_interleaved,
    time_ms,
    write_results,
)

GROUPS = ("norm", "prefill", "decode")
EPS = 1e-6

# ---------------------------------------------------------------- norms

NORM_OPS = ("rms_norm", "add_rms_norm", "layer_norm")
GPU_NORM_ROWS = [4096, 16384, 65536]
GPU_NORM_HIDDEN = [2048, 4096, 5000, 8192, 16384]
CPU_NORM_SHAPES = [(4096, 4096), (8192, 1000)]  # (rows, hidden); 1000: not a multiple of the vector width


def norm_cases(device, dtypes, ops=NORM_OPS, quick=False):
    """(op, dtype, rows, hidden). CUDA: the full rows x hidden grid for bf16 RMSNorm,
    16384 rows for the other (op, dtype) pairs (the GPU-time budget of the published run)."""
    for op in NORM_OPS:
        if op not in ops:
            continue
        for dtype in dtypes:
            if torch.device(device).type == "cuda" and not quick:
                rows = GPU_NORM_ROWS if (op == "rms_norm" and dtype == torch.bfloat16) else [16384]
                for hidden in GPU_NORM_HIDDEN:
                    for r in rows:
                        yield op, dtype, r, hidden
            else:
                for r, hidden in CPU_NORM_SHAPES[:1] if quick else CPU_NORM_SHAPES:
                    yield op, dtype, (r // 16 if quick else r), hidden


def norm_torch(op):
    if op == "rms_norm":
        return lambda x, r, w, b: F.rms_norm(x, x.shape[-1:], w, EPS)
    if op == "layer_norm":
        return lambda x, r, w, b: F.layer_norm(x, x.shape[-1:], w, b, EPS)

    def add_rms(x, r, w, b):
        s = x + r
        return F.rms_norm(s, s.shape[-1:], w, EPS), s

    return add_rms


def norm_fastxf(op):
    import fastxf.ops as ops

    if op == "rms_norm":
        return lambda x, r, w, b: ops.rms_norm(x, w, EPS)
    if op == "layer_norm":
        return lambda x, r, w, b: ops.layer_norm(x, w, b, EPS)
    return lambda x, r, w, b: ops.rms_norm(x, w, EPS, residual=r)


def norm_hf(op, hidden, dtype, weight):
    """HF's LlamaRMSNorm (fp32 upcast in eager PyTorch); None for LayerNorm (HF uses nn.LayerNorm: the torch row)."""
    if op == "layer_norm":
        return None
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    norm = LlamaRMSNorm(hidden, eps=EPS).to(device=weight.device, dtype=dtype)
    with torch.no_grad():
        norm.weight.copy_(weight)
    if op == "rms_norm":
        return lambda x, r, w, b: norm(x)

    def add_rms(x, r, w, b):  # the unfused pair of a Llama decoder layer
        s = x + r
        return norm(s), s

    return add_rms


def norm_bytes(op, rows, hidden, dtype):
    e = torch.finfo(dtype).bits // 8
    n = rows * hidden
    if op == "rms_norm":
        return (2 * n + hidden) * e
    if op == "layer_norm":
        return (2 * n + 2 * hidden) * e
    return (4 * n + hidden) * e


def norm_inputs(rows, hidden, dtype, op, device):
    # On CUDA several input sets for small problems, so repeated runs do not just hit the L2.
    per_set = norm_bytes(op, rows, hidden, dtype)
    sets = max(1, min(4, (256 << 20) // per_set)) if torch.device(device).type == "cuda" else 1
    w = torch.randn(hidden, device=device, dtype=dtype)
    b = torch.randn(hidden, device=device, dtype=dtype)
    out = []
    for _ in range(sets):
        x = torch.randn(rows, hidden, device=device, dtype=dtype)
        r = torch.randn(rows, hidden, device=device, dtype=dtype) if op == "add_rms_norm" else None
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


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def _check(rows_out, op, shape, dtype, fx_out, ref_out, ref_name, mask=None):
    """Records fastxf's max difference from the first baseline, relative to the baseline's
    largest value, on its row; warns past what the dtype's rounding explains (fp32: 1e-4,
    only summation order differs; fp16 / bf16: 1e-2, a few ulps of the output dtype)."""
    ref = _first(ref_out).float()
    diff = (_first(fx_out).float() - ref).abs().nan_to_num(0.0)
    if mask is not None:  # rows padded out of every key differ by convention: compare valid rows only
        diff = diff * mask[:, None, :, None]
        ref = ref.nan_to_num(0.0) * mask[:, None, :, None]
    err = diff.max().item() / (ref.abs().max().item() or 1.0)
    for r in rows_out:
        if r["op"] == op and r["shape"] == shape and r["dtype"] == dtype_name(dtype) and r["impl"] == "fastxf":
            r[f"max_rel_diff_vs_{ref_name}"] = float(f"{err:.3e}")
    if err > (1e-4 if dtype == torch.float32 else 1e-2):
        print(f"  WARNING: fastxf differs from {ref_name} by {err:.3g} (relative) on {op} {shape} "
              f"{dtype_name(dtype)}", flush=True)
    return err


@torch.inference_mode()
def bench_norm(device, dtypes, *, ops=NORM_OPS, compile_=False, repeats=10, quick=False, bar=None, info=None):
    """Rows for every norm case; `info` (a dict) receives compile_s."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    if compile_:
        # Many (op, dtype, hidden) graphs: raise dynamo's per-function recompile cap.
        for name in ("recompile_limit", "cache_size_limit"):
            if hasattr(torch._dynamo.config, name):
                setattr(torch._dynamo.config, name, 256)
    compiled, compile_s, rows_out = {}, 0.0, []
    for op, dtype, rows, hidden in norm_cases(device, dtypes, ops, quick):
        sets = norm_inputs(rows, hidden, dtype, op, device)
        impls = {"fastxf": norm_fastxf(op), "torch": norm_torch(op)}
        if compile_:
            key = (op, dtype, hidden)
            if key not in compiled:
                compiled[key] = torch.compile(norm_torch(op), fullgraph=True)
            impls["torch_compile"] = compiled[key]
        hf = norm_hf(op, hidden, dtype, sets[0][2])
        if hf is not None:
            impls["hf_eager"] = hf
        nbytes = norm_bytes(op, rows, hidden, dtype)
        shape = f"{rows}x{hidden}"
        if "torch_compile" in impls:
            for x, r, w, b in sets:  # rows dynamic, hidden static: one compile per hidden size
                torch._dynamo.maybe_mark_dynamic(x, 0)
                if r is not None:
                    torch._dynamo.maybe_mark_dynamic(r, 0)
            t0 = time.time()
            impls["torch_compile"](*sets[0])
            if cuda:
                torch.cuda.synchronize()
            compile_s += time.time() - t0
        fx_out = impls["fastxf"](*sets[0])
        ref_out = impls["torch"](*sets[0])
        if cuda:
            out_bytes = rows * hidden * (torch.finfo(dtype).bits // 8) * (2 if op == "add_rms_norm" else 1)
            times = {name: graph_time_ms(fn, sets, out_bytes) for name, fn in impls.items()}
        else:
            x, r, w, b = sets[0]
            times = time_interleaved({n: (lambda fn=fn: fn(x, r, w, b)) for n, fn in impls.items()},
                                     device=device, repeats=repeats)
        for name, ms in times.items():
            rows_out.append(row(op, shape, dtype, name, ms, bytes_moved=nbytes))
        _check(rows_out, op, shape, dtype, fx_out, ref_out, "torch")
        if bar is not None:
            bar.update(1)
        del sets
        if cuda:
            torch.cuda.empty_cache()
    if info is not None:
        info["compile_s"] = round(compile_s, 1)
    return rows_out


# ---------------------------------------------------------------- attention


def _sdpa_backends():
    from torch.nn.attention import SDPBackend

    return {"sdpa_flash": [SDPBackend.FLASH_ATTENTION], "sdpa_cudnn": [SDPBackend.CUDNN_ATTENTION],
            "sdpa_efficient": [SDPBackend.EFFICIENT_ATTENTION]}


def bottom_right_causal(q_len, k_len, device):
    """Query i sees keys j <= i + k_len - q_len (fastxf's convention; SDPA's is_causal is
    top-left aligned when q_len != k_len)."""
    i = torch.arange(q_len, device=device)[:, None]
    j = torch.arange(k_len, device=device)[None, :]
    return j <= i + (k_len - q_len)


def hf_eager_attention(q, k, v, mask):
    """transformers' eager_attention_forward: repeat_kv, matmul, fp32 softmax, matmul.
    `mask`: bool, broadcastable to (B, H, Sq, Sk), True = attend; or None."""
    group = q.shape[1] // k.shape[1]
    if group > 1:
        b, h, s, d = k.shape
        k = k[:, :, None].expand(b, h, group, s, d).reshape(b, h * group, s, d)
        v = v[:, :, None].expand(b, h, group, s, d).reshape(b, h * group, s, d)
    w = torch.matmul(q, k.transpose(2, 3)) * q.shape[-1] ** -0.5
    if mask is not None:
        w = w.masked_fill(~mask, torch.finfo(w.dtype).min)
    w = torch.softmax(w, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(w, v)


def attention_impls(q, k, v, causal, key_mask=None, *, cuda, eager=True):
    """name -> callable(q, k, v): fastxf and the baselines, all computing the same
    thing (bottom-right causal, key padding `key_mask` (B, Sk) bool True = attend)."""
    from torch.nn.attention import sdpa_kernel

    import fastxf

    gqa = q.shape[1] != k.shape[1]
    Sq, Sk = q.shape[2], k.shape[2]
    full = None  # one boolean mask for SDPA and the eager math
    if key_mask is not None:
        full = key_mask[:, None, None, :]
    if causal and (Sq != Sk or full is not None):
        tri = bottom_right_causal(Sq, Sk, q.device)
        full = tri if full is None else full & tri
    kw = {"enable_gqa": True} if gqa else {}
    if full is not None:
        kw["attn_mask"] = full
    elif causal:
        kw["is_causal"] = True  # Sq == Sk: top-left and bottom-right agree

    def sdpa(backends):
        def fn(q, k, v):
            if backends is None:
                return F.scaled_dot_product_attention(q, k, v, **kw)
            with sdpa_kernel(backends):
                return F.scaled_dot_product_attention(q, k, v, **kw)

        return fn

    impls = {"fastxf": lambda q, k, v: fastxf.ops.attention(q, k, v, causal=causal, key_padding_mask=key_mask)}
    if cuda:
        impls.update({name: sdpa(b) for name, b in _sdpa_backends().items()})
    impls["sdpa_default"] = sdpa(None)
    if eager:
        eager_mask = full if full is not None else (bottom_right_causal(Sq, Sk, q.device) if causal else None)
        impls["hf_eager"] = lambda q, k, v: hf_eager_attention(q, k, v, eager_mask)
    return impls


def prefill_cases(device, dtype, quick=False):
    """(op, dtype, B, Hq, Hkv, S, D, causal, padded). CUDA: the FlashAttention papers'
    setting (B x S = 16k tokens, hidden 2048, heads = 2048 / D) for S in 512..16k, bf16 at
    D 64 and 128, fp16 at 128; a GQA shape; a padded batch. CPU: one shape of each kind."""
    if torch.device(device).type == "cuda" and not quick and dtype in (torch.bfloat16, torch.float16):
        # The published grid, the part of it in `dtype` (fp16 only at D=128, for GPU time).
        grid = [(torch.bfloat16, D) for D in (64, 128)] + [(torch.float16, 128)]
        for dt, D in grid:
            for causal in (False, True):
                for S in [512, 1024, 2048, 4096, 8192, 16384]:
                    if dt == dtype:
                        yield dt, 16384 // S, 2048 // D, 2048 // D, S, D, causal, False
        if dtype == torch.bfloat16:
            for causal in (False, True):
                yield dtype, 1, 32, 8, 4096, 128, causal, False
            yield dtype, 8, 16, 16, 2048, 128, True, True
        return
    S = 128 if quick else 1024
    for causal in (False, True):
        yield dtype, 1, 8, 8, S, 64, causal, False
    yield dtype, 1, 32, 8, S, 128, True, False
    yield dtype, 4, 8, 8, S // 2, 64, True, True


def _padding_mask(B, S, device):
    """Random lengths from S/4 to S, even rows left-padded, odd rows right-padded."""
    gen = torch.Generator().manual_seed(1)
    lengths = torch.randint(S // 4, S + 1, (B,), generator=gen)
    mask = torch.zeros(B, S, dtype=torch.bool)
    for b, n in enumerate(lengths.tolist()):
        if b % 2:
            mask[b, S - n :] = True
        else:
            mask[b, :n] = True
    return mask.to(device), lengths.tolist()


@torch.inference_mode()
def bench_prefill(device, dtypes, *, repeats=10, quick=False, bar=None, info=None):
    device = torch.device(device)
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    rows_out = []
    for dtype in dtypes:
        for dt, B, Hq, Hkv, S, D, causal, padded in prefill_cases(device, dtype, quick):
            op = "attention_prefill_causal" if causal else "attention_prefill"
            q = torch.randn(B, Hq, S, D, device=device, dtype=dt)
            k = torch.randn(B, Hkv, S, D, device=device, dtype=dt)
            v = torch.randn(B, Hkv, S, D, device=device, dtype=dt)
            mask = None
            if padded:
                mask, lengths = _padding_mask(B, S, device)
                if info is not None:
                    info["padded_lengths"] = lengths
            flops = 4 * B * Hq * S * S * D // (2 if causal else 1)
            shape = f"B={B} H={Hq}/{Hkv} S={S} D={D}" + (" padded" if padded else "")
            # The published CUDA run leaves the eager math out (the GPU-time budget); CPU keeps it.
            impls = attention_impls(q, k, v, causal, mask, cuda=cuda, eager=not cuda)
            outs, runnable = {}, {}
            for name, fn in impls.items():
                try:
                    outs[name] = fn(q, k, v)
                    runnable[name] = fn
                except Exception as e:  # a backend that refuses this case records nothing
                    print(f"  skip {name} for {op} {shape}: {str(e).splitlines()[0][:120]}", flush=True)
            if cuda:
                times = {n: time_ms(lambda fn=fn: fn(q, k, v), device=device, warmup=3, min_runs=5, budget_s=0.12)
                         for n, fn in runnable.items()}
            else:
                times = time_interleaved({n: (lambda fn=fn: fn(q, k, v)) for n, fn in runnable.items()},
                                         device=device, repeats=repeats)
            for name, ms in times.items():
                rows_out.append(row(op, shape, dt, name, ms, flops=flops))
            ref = next((n for n in runnable if n != "fastxf"), None)
            if "fastxf" in outs and ref is not None:
                _check(rows_out, op, shape, dt, outs["fastxf"], outs[ref], ref, mask)
            if bar is not None:
                bar.update(1)
            del q, k, v, outs
    return rows_out


def decode_cases(device, quick=False):
    """(batch, cache length, kv heads, q tokens); 32 query heads, head dim 128."""
    if torch.device(device).type == "cuda" and not quick:
        for batch, k_len in [(1, 4096), (1, 32768), (8, 4096), (8, 16384), (64, 2048)]:
            for hkv in (32, 8):
                for q_len in (1, 4):
                    yield batch, k_len, hkv, q_len
        return
    for batch, k_len in ([(1, 512)] if quick else [(1, 4096), (4, 2048)]):
        for hkv in (32, 8):
            yield batch, k_len, hkv, 1


@torch.inference_mode()
def bench_decode(device, dtypes, *, repeats=10, quick=False, bar=None, info=None):
    device = torch.device(device)
    cuda = device.type == "cuda"
    D, Hq = 128, 32
    torch.manual_seed(0)
    rows_out = []
    for dtype in dtypes:
        caches, cache_key = None, None
        for batch, k_len, hkv, q_len in decode_cases(device, quick):
            kv_bytes = 2 * batch * hkv * k_len * D * (torch.finfo(dtype).bits // 8)
            if cache_key != (batch, k_len, hkv):
                # CUDA: several cache copies (together well past the 50-60 MB L2) so that
                # back-to-back runs do not time the L2.
                n_sets = max(1, min(8, (512 << 20) // kv_bytes)) if cuda else 1
                caches = [(torch.randn(batch, hkv, k_len, D, device=device, dtype=dtype),
                           torch.randn(batch, hkv, k_len, D, device=device, dtype=dtype)) for _ in range(n_sets)]
                cache_key = (batch, k_len, hkv)
            causal = q_len > 1
            q = torch.randn(batch, Hq, q_len, D, device=device, dtype=dtype)
            moved = kv_bytes + 2 * q.numel() * q.element_size()
            shape = f"b{batch} sk{k_len} hq{Hq} hkv{hkv} sq{q_len} d{D}"
            impls = attention_impls(q, *caches[0], causal, cuda=cuda)
            # The op itself (fastxf.ops.attention adds only Python argument checks).
            impls["fastxf"] = lambda q, k, v, c=causal: torch.ops.fastxf.attention(q, k, v, None, None, c, None, 0, 0.0)
            outs, runnable = {}, {}
            for name, fn in impls.items():
                try:
                    outs[name] = fn(q, *caches[0])
                    runnable[name] = fn
                except Exception as e:
                    print(f"  skip {name} for {shape}: {type(e).__name__}: {str(e).splitlines()[0][:100]}")
            if cuda:
                inputs = [(q, k, v) for k, v in caches]
                times = {n: time_ms(fn, device=device, inputs=inputs, warmup=3, min_runs=10, budget_s=0.15)
                         for n, fn in runnable.items()}
            else:
                k, v = caches[0]
                times = time_interleaved({n: (lambda fn=fn: fn(q, k, v)) for n, fn in runnable.items()},
                                         device=device, repeats=repeats)
            for name, ms in times.items():
                rows_out.append(row("attention_decode", shape, dtype, name, ms, bytes_moved=moved))
            ref = next((n for n in runnable if n != "fastxf"), None)
            if "fastxf" in outs and ref is not None:
                _check(rows_out, "attention_decode", shape, dtype, outs["fastxf"], outs[ref], ref)
            if bar is not None:
                bar.update(1)
        del caches
        if cuda:
            torch.cuda.empty_cache()
    return rows_out


# ---------------------------------------------------------------- command line


def _count(group, device, dtypes, quick):
    if group == "norm":
        return sum(1 for _ in norm_cases(device, dtypes, NORM_OPS, quick))
    if group == "prefill":
        return sum(1 for d in dtypes for _ in prefill_cases(device, d, quick))
    return len(dtypes) * sum(1 for _ in decode_cases(device, quick))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fastxf bench ops", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when usable, else cpu)")
    p.add_argument("--dtype", default=None,
                   help=f"comma-separated subset of {', '.join(DTYPES)} (default: float32,bfloat16 on CPU; on "
                        "CUDA the published grids: bfloat16 and float16, decode bfloat16)")
    p.add_argument("--only", default=",".join(GROUPS), help=f"comma-separated subset of {', '.join(GROUPS)}")
    p.add_argument("--repeats", type=int, default=10, help="CPU: rounds of interleaved runs, fastest kept (default 10)")
    p.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                   help="torch.compile baseline for the norms (auto: on for CUDA; on CPU it needs a C++ "
                        "compiler and minutes)")
    p.add_argument("--quick", action="store_true", help="one small shape per case (checks the setup, not the speed)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--out", default=None, help="results JSON (default fastxf_bench/ops-DEVICE.json); plot next to it")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    p.add_argument("--ceilings-json", default=None, help="reuse ceilings measured already (a results JSON)")
    return p


def parse_dtypes(spec, device):
    if spec is None:
        return None
    names = [s for s in spec.split(",") if s]
    if not names:
        raise BenchArgError(f"--dtype {spec!r}: choose from {', '.join(DTYPES)}")
    return [resolve_dtype(n, device) for n in names]


def run(args):
    device = resolve_device(args.device)
    groups = [g for g in args.only.split(",") if g]
    bad = [g for g in groups if g not in GROUPS]
    if bad or not groups:
        raise BenchArgError(f"--only {args.only!r}: choose from {', '.join(GROUPS)}")
    if args.repeats < 1:
        raise BenchArgError(f"--repeats {args.repeats}: must be at least 1")
    if args.threads is not None:
        if args.threads < 1:
            raise BenchArgError(f"--threads {args.threads}: must be at least 1")
        torch.set_num_threads(args.threads)
    cuda = device.type == "cuda"
    dtypes = parse_dtypes(args.dtype, device)
    compile_ = args.compile == "on" or (args.compile == "auto" and cuda)
    if args.ceilings_json:
        ceilings = load_ceilings(args.ceilings_json)
    else:
        ceilings = measure_ceilings(device)
    print(ceilings_line(ceilings, device), flush=True)
    total = 0
    per_group = {}
    for g in groups:
        d = dtypes or ([torch.bfloat16, torch.float16] if cuda and g != "decode" else
                       [torch.bfloat16] if cuda else [torch.float32, torch.bfloat16])
        per_group[g] = d
        total += _count(g, device, d, args.quick)
    bar = progress(total, "bench ops")
    info, rows = {}, []
    for g in groups:
        bar.set_postfix_str(g)
        kw = dict(repeats=args.repeats, quick=args.quick, bar=bar, info=info)
        if g == "norm":
            rows += bench_norm(device, per_group[g], compile_=compile_, **kw)
        elif g == "prefill":
            rows += bench_prefill(device, per_group[g], **kw)
        else:
            rows += bench_decode(device, per_group[g], **kw)
    bar.close()
    timing = "cuda: graph replay (norms), events (attention)" if cuda else f"cpu: fastest of {args.repeats} interleaved runs"
    extra = {"bench": "ops", "groups": groups, "timing": timing, "threads": torch.get_num_threads(),
             "ceilings_matmul_dtype": "bfloat16" if cuda else "float32", **info}
    return rows, ceilings, device, extra


def main(argv) -> int:
    args = parser().parse_args(argv)
    rows, ceilings, device, extra = run(args)
    print()
    print(table(rows, ceilings))
    out = args.out or os.path.join("fastxf_bench", f"ops-{device.type}.json")
    doc = write_results(out, rows, ceilings, device=device, extra=extra)
    print(f"\nwrote {out}")
    if not args.no_plot:
        from .plot import plot_or_explain

        plot_or_explain(doc, os.path.splitext(out)[0] + ".png")
    return 0


# ------------------------------------------ the repository's benchmarks/bench_*.py


def legacy_main(group, argv=None) -> int:
    """benchmarks/bench_norm.py, bench_attention_prefill.py, bench_attention_decode.py:
    the published CUDA grids with their old options and result files (run_all.py and
    scripts/gpu_check.sh depend on them)."""
    name = {"norm": "norm", "prefill": "attention_prefill", "decode": "attention_decode"}[group]
    ap = argparse.ArgumentParser(prog=f"benchmarks/bench_{name}.py")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--ceilings-json", default=None, help="reuse ceilings measured already (a results JSON)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="small shapes (a CPU check of the script)")
    ap.add_argument("--repeats", type=int, default=10)
    if group == "norm":
        ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
        ap.add_argument("--ops", default="", help="comma-separated subset of rms_norm,add_rms_norm,layer_norm")
        ap.add_argument("--name", default="norm", help="results file name (DIR/NAME.json)")
    args = ap.parse_args(argv)
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    start = time.time()
    ceilings = load_ceilings(args.ceilings_json) if args.ceilings_json else measure_ceilings(device)
    print(ceilings_line(ceilings, device), flush=True)
    info = {}
    kw = dict(repeats=args.repeats, quick=args.quick, info=info)
    if group == "norm":
        ops = tuple(args.ops.split(",")) if args.ops else NORM_OPS
        dtypes = [torch.bfloat16, torch.float16] if cuda else [torch.float32]
        rows = bench_norm(device, dtypes, ops=ops, compile_=cuda and not args.no_compile, **kw)
        extra = {"bench": "norm", "timing": "cuda_graph_replay" if cuda else "cpu_best_of_interleaved", **info}
        path = os.path.join(args.out, f"{args.name}.json")
    elif group == "prefill":
        rows = bench_prefill(device, [torch.bfloat16, torch.float16] if cuda else [torch.float32], **kw)
        extra = {"bench": "attention_prefill", **info}
        path = os.path.join(args.out, "attention_prefill.json")
    else:
        rows = bench_decode(device, [torch.bfloat16 if cuda else torch.float32], **kw)
        extra = {"bench": "attention_decode", **info}
        path = os.path.join(args.out, "attention_decode.json")
    print(table(rows, ceilings))
    write_results(path, rows, ceilings, device=device, extra=extra)
    print(f"wrote {path} ({len(rows)} rows, {time.time() - start:.0f} s)")
    return 0
