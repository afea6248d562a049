"""End to end on whole Hugging Face models (random weights, bf16 on GPU; nothing
is downloaded), fastxf.optimize vs HF's own attention on the same instance and
inputs, into one e2e.json (rewritten after each configuration, so a run cut
short keeps what finished). The configurations, in the order they run:

  llama-b1         Llama-2-7B, batch 1, 128-token prompt, 64 greedy decode steps,
                   dynamic cache: fastxf_dynamic vs hf_eager, hf_sdpa.
  llama-b1-static  the same with a static cache and the decode step compiled
                   (torch.compile mode="reduce-overhead": CUDA graphs, via
                   generate's CompileConfig; same config for every implementation):
                   fastxf (this row is fastxf's figure) vs hf_sdpa_static_compile;
                   the llama-b1 rows are compared against it too (one group).
  llama-long       Llama-2-7B, batch 1, 16384 and 32000 tokens of cache, 16 steps,
                   dynamic cache: fastxf vs hf_sdpa (hf_eager's prefill at these
                   lengths materialises 32 x S x S scores per layer: left out).
  bert-base        BERT-base, a right-padded batch of 32 x 512 (25% padding),
                   prefill: fastxf vs hf_sdpa, hf_eager (python -m fastxf bench).

Decode rows: the median step time (interval between successive logits of
greedy generate, a logits processor stamping them after a device sync), tokens/s,
and GB/s counting the bytes one step must read (every weight once + the KV cache
at the mean context length): against the copy ceiling measured in the same run
that is the fraction of the bandwidth limit (weight bytes / copy bandwidth for
short contexts). Before timing, each implementation's prefill logits are
compared with hf_eager's (tolerance as in fastxf.bench.model).

Llama-2-7B's max_position_embeddings is raised to 32768 for the long-context
rows (the default RoPE does not depend on it; no row at 4096 or below changes).

    python benchmarks/bench_e2e.py --out DIR [--ceilings-json FILE] [--configs a,b] [--budget-s S]
    python benchmarks/bench_e2e.py --out /tmp/x --device cpu --smoke     # tiny models: checks the script
"""

from __future__ import annotations

import argparse
import glob
import os
import statistics
import sys
import time

_PY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python")
if glob.glob(os.path.join(_PY, "fastxf", "_C*")):  # this checkout's build wins over an installed fastxf
    sys.path.insert(0, _PY)

import torch  # noqa: E402

from fastxf.bench import model as model_bench  # noqa: E402
from fastxf.bench.harness import (  # noqa: E402
    load_ceilings,
    measure_ceilings,
    resolve_device,
    row,
    table,
    write_results,
)

CONFIGS = ["llama-b1", "llama-b1-static", "llama-long", "bert-base"]
# Expected seconds on an H200 (a config is not started with less than this left of --budget-s).
EXPECTED_S = {"llama-b1": 40, "llama-b1-static": 200, "llama-long": 60, "bert-base": 25}
LLAMA_MAX_POS = 32768
B1_PROMPT, B1_NEW = 128, 64
LONG_CONTEXTS, LONG_NEW = (16384, 32000), 16
# --smoke: tiny shapes of the same code paths.
SMOKE_LLAMA = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=4, vocab_size=512)
SMOKE = {"b1": (16, 4), "long": ((64,), 4)}


def build_llama(device, dtype, smoke):
    import transformers

    _, kwargs = model_bench.BUILTIN["llama-2-7b"]
    kwargs = dict(kwargs, max_position_embeddings=LLAMA_MAX_POS)
    if smoke:
        kwargs.update(SMOKE_LLAMA)
    cfg = transformers.AutoConfig.for_model("llama", **kwargs)
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in bf16 on the device: 7B in fp32 would be 27 GB
    try:
        with torch.device(device):
            model = transformers.LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(old)
    return model.to(dtype).eval()


def kv_bytes_per_token(model):
    c = model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    kv_heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    return 2 * c.num_hidden_layers * kv_heads * head_dim * next(model.parameters()).element_size()


class Decoder:
    """Greedy generate on one model instance switched between implementations, with
    per-step time stamps (fastxf.bench.model's logits-processor clock)."""

    def __init__(self, model, device):
        self.model, self.device = model, device

    def use(self, impl):
        model_bench.use_implementation(self.model, impl)

    def generate(self, ids, n, static=False, stamps=None):
        from transformers import CompileConfig, LogitsProcessorList

        kw = {}
        if static:
            kw["cache_implementation"] = "static"
            # Stated, not left to the installed version's default: CUDA graphs, graph breaks allowed.
            kw["compile_config"] = CompileConfig(mode="reduce-overhead", fullgraph=False, dynamic=False)
        if stamps is not None:
            kw["logits_processor"] = LogitsProcessorList([model_bench._StepClock(stamps, self.device)])
        with torch.no_grad():
            return self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                                       min_new_tokens=n, do_sample=False, pad_token_id=0, **kw)

    def steps_ms(self, ids, n, static=False):
        stamps = []
        self.generate(ids, n, static, stamps)
        return [(b - a) * 1e3 for a, b in zip(stamps, stamps[1:])]

    def reset_compile(self):
        # transformers keeps its compiled forward on the model; a fresh one per implementation
        # (else a leftover graph could run, or dynamo's recompile limit fall back to eager).
        self.model.__dict__.pop("_compiled_call", None)
        torch._dynamo.reset()

    def compiled(self):
        return "_compiled_call" in self.model.__dict__

    def check_logits(self, ids, impls):
        """Last-position logits of each implementation vs hf_eager: max relative error."""
        out = {}
        for name in ("hf_eager", *[i for i in impls if i != "hf_eager"]):
            self.use(model_bench.IMPLS[name])
            with torch.no_grad():
                logits = self.model(input_ids=ids, logits_to_keep=1).logits[:, -1].float()
            out[name] = logits
        ref = out.pop("hf_eager")
        scale = ref.abs().max().item() or 1.0
        return {name: float(f"{(v - ref).abs().max().item() / scale:.3e}") for name, v in out.items()}


def decode_rows(dec, ids, new, impls, *, static, repeats, shape, bytes_per_step, batch, extra_fields, ceilings):
    """Decode rows for `impls` (row name -> attention implementation), dynamic or static cache;
    the static cache compiles one implementation at a time. Returns (rows, {name: error})."""
    rows, errors = [], {}
    times = {}
    if not static:
        for name, impl in impls.items():  # warm-up
            dec.use(impl)
            dec.generate(ids, 2)
        times = {name: [] for name in impls}
        for _ in range(repeats):  # in turn: each comparison sees the same machine state
            for name, impl in impls.items():
                dec.use(impl)
                times[name] += dec.steps_ms(ids, new)
    else:
        for name, impl in impls.items():  # one at a time: switching would recompile
            dec.use(impl)
            dec.reset_compile()
            t0 = time.time()
            try:
                dec.steps_ms(ids, new, static=True)  # compiles (CUDA)
            except Exception as e:  # torch.compile's reach depends on the versions installed: report, go on
                errors[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
                print(f"  {name}: static-cache generate failed, left out: {errors[name]}", flush=True)
                continue
            compile_s = time.time() - t0
            compiled = dec.compiled()
            times[name] = []
            for _ in range(repeats):
                times[name] += dec.steps_ms(ids, new, static=True)
            extra_fields.setdefault(name, {}).update(compile_s=round(compile_s, 1), compiled=compiled)
            dec.reset_compile()
    for name, steps in times.items():
        if not steps:
            continue
        ms = statistics.median(steps)
        r = row("decode", shape, next(dec.model.parameters()).dtype, name, ms, bytes_moved=bytes_per_step)
        r["tokens_per_s"] = round(batch / ms * 1e3, 1)
        # The bandwidth limit: one step reads bytes_per_step at the measured copy rate.
        r["limit_tokens_per_s"] = round(batch * ceilings["copy_gbps"] * 1e9 / bytes_per_step, 1)
        r["cache"] = "static" if static else "dynamic"
        r.update(extra_fields.get(name, {}))
        rows.append(r)
        print(f"  {name}: {ms:.3f} ms/step, {r['tokens_per_s']} tok/s", flush=True)
    return rows, errors


def run_llama(which, state, args, device, dtype, ceilings):
    if state.get("llama") is None:
        t0 = time.time()
        state["llama"] = build_llama(device, dtype, args.smoke)
        print(f"built Llama-2-7B config ({'smoke' if args.smoke else 'full'}) in {time.time() - t0:.0f} s", flush=True)
    model = state["llama"]
    dec = Decoder(model, device)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    kv_tok = kv_bytes_per_token(model)
    gen = torch.Generator().manual_seed(1)
    checks, rows = {}, []
    label = "llama-2-7b" + (" (smoke)" if args.smoke else "")
    if which in ("llama-b1", "llama-b1-static"):
        prompt, new = SMOKE["b1"] if args.smoke else (B1_PROMPT, B1_NEW)
        ids = torch.randint(5, model.config.vocab_size, (1, prompt), generator=gen).to(device)
        shape = f"{label} b1 ctx{prompt}+{new}"
        step_bytes = weight_bytes + kv_tok * (prompt + new // 2)
        fields = {}
        if which == "llama-b1":
            impls = {"fastxf_dynamic": "fastxf", "hf_eager": "eager", "hf_sdpa": "sdpa"}
            checks["logits_vs_hf_eager"] = dec.check_logits(ids, ["hf_sdpa", "fastxf"])
            r, errs = decode_rows(dec, ids, new, impls, static=False, repeats=args.repeats, shape=shape,
                                  bytes_per_step=step_bytes, batch=1, extra_fields=fields, ceilings=ceilings)
        else:
            impls = {"fastxf": "fastxf", "hf_sdpa_static_compile": "sdpa"}
            r, errs = decode_rows(dec, ids, new, impls, static=True, repeats=args.repeats, shape=shape,
                                  bytes_per_step=step_bytes, batch=1, extra_fields=fields, ceilings=ceilings)
            if errs:
                checks["static_compile_errors"] = errs
        rows += r
        checks["bytes_per_step"] = {"weights": weight_bytes, "kv_cache_mean": step_bytes - weight_bytes}
    else:
        contexts, new = SMOKE["long"] if args.smoke else (LONG_CONTEXTS, LONG_NEW)
        impls = {"fastxf": "fastxf", "hf_sdpa": "sdpa"}
        for ctx in contexts:
            ids = torch.randint(5, model.config.vocab_size, (1, ctx), generator=gen).to(device)
            shape = f"{label} b1 ctx{ctx}+{new}"
            step_bytes = weight_bytes + kv_tok * (ctx + new // 2)
            checks[f"ctx{ctx}_logits_vs_hf_sdpa"] = _check_vs_sdpa(dec, ids)
            r, _ = decode_rows(dec, ids, new, impls, static=False, repeats=args.repeats, shape=shape,
                               bytes_per_step=step_bytes, batch=1, extra_fields={}, ceilings=ceilings)
            rows += r
            if device.type == "cuda":
                torch.cuda.empty_cache()
        checks["note"] = "hf_eager left out: its prefill materialises 32 x S x S scores per layer at these lengths"
    model_bench.use_implementation(model, "eager")
    return rows, {"model_class": type(model).__name__, "params": sum(p.numel() for p in model.parameters()),
                  "checks": checks}


def _check_vs_sdpa(dec, ids):
    out = {}
    for name in ("hf_sdpa", "fastxf"):
        dec.use(model_bench.IMPLS[name])
        with torch.no_grad():
            out[name] = dec.model(input_ids=ids, logits_to_keep=1).logits[:, -1].float()
    ref = out["hf_sdpa"]
    return float(f"{(out['fastxf'] - ref).abs().max().item() / (ref.abs().max().item() or 1.0):.3e}")


def run_bert(args, ceilings):
    batch, seq = (2, 32) if args.smoke else (32, 512)
    argv = ["bert-base", "--device", args.device, "--batch", str(batch), "--prompt-len", str(seq), "--new-tokens", "0",
            "--repeats", str(args.repeats), "--no-plot", "--static-cache", "off"] + (["--layers", "2"] if args.smoke else [])
    result, rc = model_bench.run(model_bench.parser().parse_args(argv), ceilings=ceilings)
    info = {k: result["extra"][k] for k in ("params", "model_class", "checks", "settings")}
    return result["rows"], info, rc


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="directory for e2e.json")
    p.add_argument("--ceilings-json", help="reuse ceilings measured already (a results JSON or {copy_gbps, matmul_tflops})")
    p.add_argument("--device", default="cuda")
    p.add_argument("--smoke", action="store_true", help="tiny models and shapes (a CPU check of the script)")
    p.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset of " + ",".join(CONFIGS))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--budget-s", type=float, default=None,
                   help="stop starting configurations whose expected time no longer fits (gpu_check.sh passes it)")
    args = p.parse_args(argv)
    configs = [c for c in args.configs.split(",") if c]
    bad = [c for c in configs if c not in CONFIGS]
    if bad or not configs:
        p.error(f"--configs {args.configs!r}: choose from {', '.join(CONFIGS)}")
    start = time.time()
    device = resolve_device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    ceilings = load_ceilings(args.ceilings_json) if args.ceilings_json else measure_ceilings(device)
    rows, info, status, state = [], {}, 0, {}
    path = os.path.join(args.out, "e2e.json")
    for name in CONFIGS:  # always in this order
        if name not in configs:
            continue
        left = None if args.budget_s is None else args.budget_s - (time.time() - start)
        if left is not None and left < EXPECTED_S[name] and not args.smoke:
            print(f"== {name}: skipped, {left:.0f} s left of --budget-s, expected {EXPECTED_S[name]} s", flush=True)
            info[name] = {"skipped": f"budget ({left:.0f} s left)"}
            continue
        print(f"== {name}", flush=True)
        t0 = time.time()
        try:
            if name == "bert-base":
                state.pop("llama", None)  # the 7B model is not needed any more
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                r, i, rc = run_bert(args, ceilings)
                status |= rc
            else:
                r, i = run_llama(name, state, args, device, dtype, ceilings)
        except Exception as e:  # one configuration failing (e.g. out of memory) does not lose the others
            print(f"{name}: FAILED {type(e).__name__}: {e}", flush=True)
            info[name] = {"error": f"{type(e).__name__}: {str(e)[:500]}"}
            status = 1
            continue
        rows += r
        info[name] = {**i, "seconds": round(time.time() - t0, 1)}
        write_results(path, rows, ceilings, device=device,
                      extra={"bench": "e2e", "configs": info, "smoke": args.smoke,
                             "timing": "decode: median step interval of greedy generate; prefill: fastest of repeats"})
        print(f"== {name}: {time.time() - t0:.0f} s; wrote {path}", flush=True)
    if rows:
        print(table(rows, ceilings, model_bench.EXTRA_COLS))
    return status if rows else 1


if __name__ == "__main__":
    sys.exit(main())
