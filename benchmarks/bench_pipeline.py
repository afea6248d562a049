"""Pipeline placement mechanics on one GPU: the same Llama (~0.9B params, bf16,
random weights) unplaced vs placed as 1, 2 and 4 stages all on cuda:0, with 1
and 4 micro-batches; prefill latency and decode step time.

With every stage on one GPU nothing can run faster than unplaced: the numbers
measure what the hooks, the chunking and the per-stage streams cost. Per-layer,
embedding and head times and the bytes crossing each stage boundary are recorded
too, so docs/placement.md can project throughput on N GPUs.

    PYTHONPATH=python:. python benchmarks/bench_pipeline.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import measure_ceilings, print_table, row, time_ms, write_results  # noqa: E402

BATCH, PROMPT, BIG_BATCH = 8, 512, 64
CONFIG = dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=16,
              num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=4096,
              tie_word_embeddings=False)


def build(device):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**CONFIG)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    return model


def cache_of(out):
    return getattr(out, "past_key_values", None) or getattr(out, "cache", None)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--ceilings-json", default=None)
    ap.add_argument("--smoke", action="store_true", help="tiny model on the CPU: checks the script, times nothing useful")
    args = ap.parse_args()
    from fastxf.placement import place_model, remove_placement

    global BATCH, PROMPT, BIG_BATCH
    dev = "cuda"
    if args.smoke:
        dev, BATCH, PROMPT, BIG_BATCH = "cpu", 8, 16, 16
        CONFIG.update(vocab_size=128, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                      num_key_value_heads=2)
        ceilings = {"copy_gbps": 1.0, "matmul_tflops": 1.0}
    elif args.ceilings_json:
        import json

        with open(args.ceilings_json) as f:
            ceilings = json.load(f)["ceilings"]
    else:
        ceilings = measure_ceilings(dev)
    model = build(dev)
    n_params = sum(p.numel() for p in model.parameters())
    g = torch.Generator(device=dev).manual_seed(1)
    dev_str = dev if dev == "cpu" else f"{dev}:0"
    ids = torch.randint(3, CONFIG["vocab_size"], (BATCH, PROMPT), device=dev, generator=g)
    mask = torch.ones_like(ids)
    nxt = torch.randint(3, CONFIG["vocab_size"], (BATCH, 1), device=dev, generator=g)
    dmask = torch.ones(BATCH, PROMPT + 1, dtype=torch.long, device=dev)
    rows, extra = [], {"model": dict(CONFIG, params=n_params, dtype="bfloat16", batch=BATCH, prompt=PROMPT)}
    pshape, dshape = f"b{BATCH}xt{PROMPT}", f"b{BATCH}xctx{PROMPT}"
    # A GPU-bound prefill too: at batch 8 a 2-sequence chunk's GPU time is below the
    # host's time to issue HF's eager layers, so small chunks measure the host.
    bshape = f"b{BIG_BATCH}xt{PROMPT}"
    big = torch.randint(3, CONFIG["vocab_size"], (BIG_BATCH, PROMPT), device=dev, generator=g)

    def measure(impl):
        @torch.no_grad()
        def prefill():
            return model(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=1).logits

        with torch.no_grad():
            cache = cache_of(model(input_ids=ids, attention_mask=mask, use_cache=True, logits_to_keep=1))

        @torch.no_grad()
        def decode():
            out = model(input_ids=nxt, attention_mask=dmask, past_key_values=cache, use_cache=True).logits
            cache.crop(-1)  # drop the new token: same context next run (a view, no copy)
            return out

        @torch.no_grad()
        def prefill_big():
            return model(input_ids=big, use_cache=False, logits_to_keep=1).logits

        p_ms = time_ms(prefill, device=dev, budget_s=0.5)
        d_ms = time_ms(decode, device=dev, budget_s=1.0)
        big_ms = time_ms(prefill_big, device=dev, warmup=2, min_runs=5, budget_s=0.5)
        rows.append(row("pipeline_prefill", pshape, torch.bfloat16, impl, p_ms,
                        flops=2 * n_params * BATCH * PROMPT))
        rows.append(row("pipeline_prefill", bshape, torch.bfloat16, impl, big_ms,
                        flops=2 * n_params * BIG_BATCH * PROMPT))
        rows.append(row("pipeline_decode", dshape, torch.bfloat16, impl, d_ms, bytes_moved=2 * n_params))
        del cache
        return p_ms, d_ms, big_ms

    base = measure("hf_unplaced")
    overhead = {}
    for stages in (1, 2, 4):
        for mb in (1, 4):
            place_model(model, [dev_str] * stages, micro_batches=mb,
                        placement=[CONFIG["num_hidden_layers"] // stages] * stages)
            p, d, bg = measure(f"fastxf_stages{stages}_mb{mb}")
            overhead[f"stages{stages}_mb{mb}"] = {"prefill": round(p / base[0] - 1, 4), "decode": round(d / base[1] - 1, 4),
                                                  "prefill_big": round(bg / base[2] - 1, 4)}
            remove_placement(model)
    extra["overhead_vs_unplaced"] = overhead

    # Per-part times for the N-GPU projection: one decoder layer, the embedding, the head.
    inner = model.model
    layer = inner.layers[0]
    parts = {}
    for name, T in (("prefill", PROMPT), ("decode", 1)):
        h = torch.randn(BATCH, T, CONFIG["hidden_size"], device=dev, dtype=torch.bfloat16)
        pos = torch.arange(T, device=dev)[None] + (PROMPT if T == 1 else 0)
        cs = inner.rotary_emb(h, pos)
        with torch.no_grad():
            if T == 1:
                # Decode against a PROMPT-long cache for this layer alone.
                from transformers import DynamicCache

                kvc = DynamicCache()
                kv = CONFIG["num_key_value_heads"]
                hd = CONFIG["hidden_size"] // CONFIG["num_attention_heads"]
                kvc.update(torch.randn(BATCH, kv, PROMPT, hd, device=dev, dtype=torch.bfloat16),
                           torch.randn(BATCH, kv, PROMPT, hd, device=dev, dtype=torch.bfloat16), 0)

                def run_layer():
                    out = layer(h, attention_mask=None, position_ids=pos, position_embeddings=cs,
                                past_key_values=kvc, use_cache=True)
                    kvc.crop(-1)
                    return out
            else:
                def run_layer():
                    return layer(h, attention_mask=None, position_ids=pos, position_embeddings=cs)
            layer_ms = time_ms(torch.no_grad()(run_layer), device=dev, budget_s=0.3)
            x = ids if T > 1 else nxt
            emb_ms = time_ms(lambda: inner.embed_tokens(x), device=dev, budget_s=0.2)
            head_ms = time_ms(lambda: model.lm_head(inner.norm(h[:, -1:])), device=dev, budget_s=0.2)
        parts[name] = {"layer_ms": round(layer_ms, 4), "embed_ms": round(emb_ms, 4), "head_ms": round(head_ms, 4),
                       "boundary_bytes": BATCH * T * CONFIG["hidden_size"] * 2,
                       "rotary_bytes_per_stage": 2 * BATCH * T * (CONFIG["hidden_size"] // CONFIG["num_attention_heads"]) * 2}
    extra["per_part"] = parts
    print_table(rows, ceilings)
    for k, v in overhead.items():
        print(f"overhead vs hf_unplaced {k}: prefill {v['prefill']:+.1%} decode {v['decode']:+.1%} "
              f"prefill b{BIG_BATCH} {v['prefill_big']:+.1%}")
    for k, v in parts.items():
        print(f"{k}: {v}")
    path = os.path.join(args.out, "pipeline.json")
    write_results(path, rows, ceilings, device=dev, extra=extra)
    print("wrote", path)


if __name__ == "__main__":
    main()
