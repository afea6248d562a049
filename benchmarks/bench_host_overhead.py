"""Host (Python + dispatch) time per decoder layer per decode step: fastxf vs HF sdpa vs HF eager.

    python benchmarks/bench_host_overhead.py [--out DIR] [--device cpu|cuda] [--rounds N]

A tiny Llama (hidden 64, 4 heads / 2 KV heads, batch 1) makes every kernel
cheap, so a decode step's time is almost all host work: what a GPU decode
without CUDA graphs is bound by. The per-layer figure is the slope between
two models that differ only in depth (L_SHALLOW and L_DEEP layers, same
weights for the shared layers): (t_deep - t_shallow) / (L_DEEP - L_SHALLOW).
That removes what a step costs once (embedding, mask creation, LM head) and
leaves the attention function, the mask hand-over, the norms and the residual
adds of one layer, plus the projections and MLP that every implementation runs
alike. The bare attention kernel call of fastxf and of sdpa is timed too, and
the per-layer time without it is reported: the part the Python path controls,
apart from the kernels' own fixed cost.

Each timed step is one forward of one new token over a DynamicCache holding
PROMPT tokens (cropped back after every step, so every step sees the same
cache length), under torch.no_grad as in generate(). Implementations are
interleaved round by round and each keeps its best round (the minimum is the
least disturbed by other processes); ratios are between figures of the same
run. On CPU the clock is the thread's CPU time (one thread), so time spent
waiting for a core shared with other processes is not counted. Writes host_overhead.json (schema: device, torch, transformers, commit,
config, rows [{phase, impl, layers, step_us}], per_layer_us {phase: {impl: us}},
attention_kernel_call_us, decode_per_layer_without_attention_kernel_us, ratios).
The same slope is measured for a prefill of the PROMPT tokens (no cache).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import device_name, git_commit  # noqa: E402

IMPLS = ("fastxf", "sdpa", "eager")
L_SHALLOW, L_DEEP = 2, 10
PROMPT = 32
SIZES = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
             vocab_size=256, max_position_embeddings=512)


def build(layers, impl, device):
    import transformers

    import fastxf

    cfg = transformers.AutoConfig.for_model("llama", num_hidden_layers=layers, **SIZES)
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).to(device).eval()
    if impl == "fastxf":
        fastxf.optimize(model)
    else:
        model.set_attn_implementation(impl)
    return model


def stepper(model, device):
    """Functions running one decode step over a fixed-length cache, and one prefill of the prompt."""
    from transformers import DynamicCache

    gen = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, SIZES["vocab_size"], (1, PROMPT), generator=gen).to(device)
    token = torch.randint(0, SIZES["vocab_size"], (1, 1), generator=gen).to(device)
    mask = torch.ones(1, PROMPT + 1, dtype=torch.long, device=device)
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(input_ids=prompt, attention_mask=mask[:, :PROMPT], cache=cache, use_cache=True)
    position = torch.tensor([PROMPT], device=device)

    def step():
        with torch.no_grad():
            out = model(input_ids=token, attention_mask=mask, cache=cache, use_cache=True,
                        cache_position=position, logits_to_keep=1)
        cache.crop(-1)  # back to PROMPT tokens
        return out.logits

    def prefill():
        with torch.no_grad():
            return model(input_ids=prompt, attention_mask=mask[:, :PROMPT], use_cache=False, logits_to_keep=1).logits

    return {"decode": step, "prefill": prefill}


def kernel_steps(device):
    """The bare attention kernel call each implementation makes in such a step
    (fastxf: its op with the (B, Sk) key padding mask the mask hook hands it;
    sdpa: torch's SDPA, which HF calls without a mask when nothing is padded)."""
    import torch.nn.functional as F

    from fastxf.models import _dispatch

    heads, kv_heads = SIZES["num_attention_heads"], SIZES["num_key_value_heads"]
    d = SIZES["hidden_size"] // heads
    gen = torch.Generator().manual_seed(2)
    q = torch.randn(1, heads, 1, d, generator=gen).to(device)
    k, v = (torch.randn(1, kv_heads, PROMPT + 1, d, generator=gen).to(device) for _ in range(2))
    pad = torch.ones(1, PROMPT + 1, dtype=torch.bool, device=device)
    op = _dispatch.op("attention")

    def fastxf_kernel():
        with torch.no_grad():
            return op(q, k, v, pad, None, True, d**-0.5, 0, 0.0, None)

    def sdpa_kernel():
        with torch.no_grad():
            return F.scaled_dot_product_attention(q, k, v, scale=d**-0.5, enable_gqa=True)

    return {"fastxf": fastxf_kernel, "sdpa": sdpa_kernel}


def time_us(step, device, calls):
    # On CPU everything runs on this thread: its CPU time is the host time, and
    # unlike wall time it does not count the time other processes held the core.
    if device.type == "cpu":
        t = time.thread_time()
        for _ in range(calls):
            step()
        return (time.thread_time() - t) / calls * 1e6
    torch.cuda.synchronize(device)
    t = time.perf_counter()
    for _ in range(calls):
        step()
    torch.cuda.synchronize(device)
    return (time.perf_counter() - t) / calls * 1e6


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--calls", type=int, default=20, help="decode steps per timed round")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)  # host work is single-threaded; more threads only add noise here

    steps, outputs = {}, {}
    for impl in IMPLS:
        for layers in (L_SHALLOW, L_DEEP):
            model = build(layers, impl, device)
            for phase, fn in stepper(model, device).items():
                steps[phase, impl, layers] = fn
                outputs[phase, impl, layers] = fn()
    for phase, impl, layers in outputs:  # the same answer from every implementation
        torch.testing.assert_close(outputs[phase, impl, layers], outputs[phase, "fastxf", layers], atol=1e-4, rtol=1e-4)

    kernels = kernel_steps(device)
    best = {key: float("inf") for key in steps}
    kernel_best = {impl: float("inf") for impl in kernels}
    for _ in range(args.rounds):
        for key, step in steps.items():
            best[key] = min(best[key], time_us(step, device, args.calls))
        for impl, fn in kernels.items():
            kernel_best[impl] = min(kernel_best[impl], time_us(fn, device, 5 * args.calls))

    rows = [{"phase": ph, "impl": impl, "layers": n, "step_us": round(t, 1)} for (ph, impl, n), t in best.items()]
    per_layer = {
        phase: {impl: (best[phase, impl, L_DEEP] - best[phase, impl, L_SHALLOW]) / (L_DEEP - L_SHALLOW) for impl in IMPLS}
        for phase in ("decode", "prefill")
    }
    ratios = {f"{phase} fastxf/{impl}": per_layer[phase]["fastxf"] / per_layer[phase][impl]
              for phase in per_layer for impl in IMPLS[1:]}
    # Decode without the attention kernel call: the part this Python path controls.
    around = {impl: per_layer["decode"][impl] - kernel_best[impl] for impl in kernels}
    ratios["decode fastxf/sdpa without the attention kernel"] = around["fastxf"] / around["sdpa"]
    print(f"host time per step, tiny Llama, batch 1, {PROMPT}-token prompt / cache, {device_name(device)}")
    print(f"{'phase':>8} | {'impl':>8} | {f'{L_SHALLOW} layers us':>14} | {f'{L_DEEP} layers us':>14} | {'per layer us':>12}")
    for phase in per_layer:
        for impl in IMPLS:
            print(f"{phase:>8} | {impl:>8} | {best[phase, impl, L_SHALLOW]:14.1f} | {best[phase, impl, L_DEEP]:14.1f} | "
                  f"{per_layer[phase][impl]:12.1f}")
    for impl, us in kernel_best.items():
        print(f"{impl} decode attention kernel call alone: {us:.1f} us; decode per layer without it: {around[impl]:.1f} us")
    for k, v in ratios.items():
        print(f"per-layer time {k}: {v:.2f}x")

    import transformers

    doc = {
        "device": device_name(device),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "commit": git_commit(),
        "config": dict(SIZES, layers=[L_SHALLOW, L_DEEP], batch=1, cache_tokens=PROMPT, rounds=args.rounds,
                       calls=args.calls, threads=torch.get_num_threads()),
        "rows": rows,
        "per_layer_us": {ph: {k: round(v, 1) for k, v in d.items()} for ph, d in per_layer.items()},
        "attention_kernel_call_us": {k: round(v, 1) for k, v in kernel_best.items()},
        "decode_per_layer_without_attention_kernel_us": {k: round(v, 1) for k, v in around.items()},
        "ratios": {k: round(v, 3) for k, v in ratios.items()},
    }
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "host_overhead.json"), "w") as f:
        json.dump(doc, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
