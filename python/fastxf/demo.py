"""python -m fastxf demo: optimize a built-in model, check it against Hugging
Face's own attention, and time it on this machine.

The model is built from a config typed in below, with random weights (nothing
is downloaded). Checks: logits on a left-padded batch against
attn_implementation="eager", and greedy generate tokens. Then a small speed
table: prefill latency and decode tokens/s for fastxf, HF eager and HF sdpa,
all on the same weights (one copy of the model each, rounds interleaved, best
round kept), and the measured fastxf / HF sdpa ratios as the verdict, whichever
way they go. CPU: float32, a small model; CUDA: bfloat16, a TinyLlama-sized
model.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

# Built-in configs: (cpu, cuda) sizes. Random weights, so speed is honest and
# correctness is exact, but the generated text is noise.
CONFIGS = {
    "llama": (
        dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8,
             num_key_value_heads=4, vocab_size=8192, max_position_embeddings=1024),
        dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
             num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048),  # TinyLlama-1.1B shape
    ),
    "gpt2": (
        dict(n_embd=256, n_layer=4, n_head=8, vocab_size=8192, n_positions=1024),
        dict(n_embd=768, n_layer=12, n_head=12, vocab_size=50257, n_positions=1024),  # GPT-2 small
    ),
    "bert": (
        dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=8, intermediate_size=1024, vocab_size=8192),
        dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
             vocab_size=30522),  # BERT-base
    ),
}
MODEL_TYPES = {"llama": ("llama", "LlamaForCausalLM"), "gpt2": ("gpt2", "GPT2LMHeadModel"), "bert": ("bert", "BertModel")}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_s(fn, device, runs=3, warmup=1) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _build(name, device, dtype):
    import transformers

    model_type, cls = MODEL_TYPES[name]
    sizes = CONFIGS[name][1 if device.type == "cuda" else 0]
    cfg = transformers.AutoConfig.for_model(model_type, **sizes)
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    with torch.device(device):
        model = getattr(transformers, cls)(cfg)
    return model.to(dtype).eval()


def _inputs(name, model, batch, seq, device):
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(5, model.config.vocab_size, (batch, seq), generator=gen)
    mask = torch.ones(batch, seq, dtype=torch.long)
    if name == "bert":
        for b in range(batch):  # right padding, different lengths
            if b:
                mask[b, seq - (b * seq) // (2 * batch) :] = 0
    else:
        for b in range(batch):  # left padding, different lengths
            mask[b, : (b * seq) // (2 * batch)] = 0
    return ids.to(device), mask.to(device)


IMPLS = ("fastxf", "sdpa", "eager")


def _ratio(what, speedup) -> str:
    if speedup != speedup:  # nan: too noisy to measure
        return f"{what} not measured (too noisy)"
    return f"{what} {speedup:.2f}x ({'faster' if speedup >= 1.0 else 'slower'})"


def use_implementation(model, impl):
    """Switch the one model instance between implementations."""
    import fastxf

    fastxf.revert(model)
    if impl == "fastxf":
        fastxf.optimize(model)
    else:
        model.set_attn_implementation(impl)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m fastxf demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when usable, else cpu)")
    p.add_argument("--model", choices=sorted(CONFIGS), default="llama")
    p.add_argument("--new-tokens", type=int, default=None, help="tokens to decode (default 16 on CPU, 64 on CUDA)")
    p.add_argument("--rounds", type=int, default=None, help="timing rounds, best kept (default 5 on CPU, 3 on CUDA)")
    args = p.parse_args(argv)

    import fastxf

    if args.device is None:
        device = torch.device("cuda" if torch.cuda.is_available() and fastxf.cuda_kernels_built() else "cpu")
    else:
        device = torch.device(args.device)
    if device.type == "cuda" and not fastxf.cuda_kernels_built():
        print("this fastxf build has no CUDA kernels; use --device cpu")
        return 2
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    new_tokens = args.new_tokens or (64 if device.type == "cuda" else 16)
    batch, seq = (8, 512) if device.type == "cuda" else (4, 64)
    causal = args.model != "bert"

    model = _build(args.model, device, dtype)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"fastxf demo: {type(model).__name__}, {n_params / 1e6:.1f}M parameters (random weights), "
          f"{device.type} {str(dtype).replace('torch.', '')}, batch {batch} x {seq} tokens, padded")
    ids, mask = _inputs(args.model, model, batch, seq, device)
    valid = mask.bool()

    def forward():  # on whichever model `model` names when called
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=mask)
        return out.logits if causal else out.last_hidden_state

    def generate(n=new_tokens):
        return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n,
                              min_new_tokens=n, do_sample=False, pad_token_id=0)

    # 1. Correctness against HF eager on the same weights.
    want = forward()
    want_tokens = generate() if causal else None
    fastxf.optimize(model)
    from fastxf.models import format_report

    print(format_report(fastxf.explain(model)))
    got = forward()
    err = ((got[valid].double() - want[valid].double()).abs().max() / want[valid].double().abs().max()).item()
    # fp32: summation order only. bf16: both sides round every op to 8 bits of mantissa.
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    ok = err < tol
    print(f"outputs vs HF eager (valid positions): max rel. error {err:.2e} (tolerance {tol:g}) -> "
          f"{'OK' if ok else 'MISMATCH'}")
    if causal:
        tokens = generate()
        same = torch.equal(tokens, want_tokens)
        if same:
            print(f"greedy generate, {new_tokens} new tokens x {batch} sequences: identical to HF eager")
        else:
            agree = (tokens == want_tokens).all(0).long().cumprod(0).sum().item() - seq
            msg = f"diverge after {agree} new tokens"
            print(f"greedy generate: {msg}" + (" (bf16 rounding; fp32 on CPU must be identical)" if dtype != torch.float32 else ""))
            ok = ok and dtype != torch.float32
    # 2. Speed, same weights, three implementations, each on its own copy of the
    # model (no switching between timings). Rounds interleave the implementations
    # and each keeps its best round, so a busy machine slows all of them alike.
    fastxf.revert(model)
    models = {}
    for impl in IMPLS:
        models[impl] = copy.deepcopy(model)
        use_implementation(models[impl], impl)
    rounds = args.rounds or (5 if device.type == "cpu" else 3)
    prefill = {impl: float("inf") for impl in IMPLS}
    decode = {impl: float("inf") for impl in IMPLS}
    for _ in range(rounds):
        for impl in IMPLS:
            model = models[impl]
            prefill[impl] = min(prefill[impl], _time_s(forward, device, runs=1, warmup=1))
            if causal:
                # Decode steps alone: generate(N) minus generate(1), which share the prefill and the setup.
                total = _time_s(generate, device, runs=1, warmup=0)
                one = _time_s(lambda: generate(1), device, runs=1, warmup=0)
                decode[impl] = min(decode[impl], total - one if total > one else float("inf"))
    tok_s = {impl: batch * (new_tokens - 1) / t if t != float("inf") else 0.0 for impl, t in decode.items()}
    head = ["impl", "prefill ms"] + (["decode tok/s"] if causal else [])
    print()
    print(" | ".join(f"{h:>12}" for h in head))
    for impl in IMPLS:
        row = [impl, f"{prefill[impl] * 1e3:.1f}"] + ([f"{tok_s[impl]:.1f}"] if causal else [])
        print(" | ".join(f"{c:>12}" for c in row))
    print(f"\n({device.type}: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, best of {rounds} interleaved rounds)")
    # The verdict is the measured ratios, whichever way they go.
    parts = [_ratio("prefill", prefill["sdpa"] / prefill["fastxf"])]
    if causal:
        parts.append(_ratio("decode", tok_s["fastxf"] / tok_s["sdpa"] if tok_s["sdpa"] else float("nan")))
    print("fastxf vs HF sdpa on this machine: " + ", ".join(parts))
    return 0 if ok else 1
