"""End-to-end: prefill latency and decode tokens/s of whole Hugging Face models,
fastxf.optimize vs HF's own eager and sdpa attention, same weights.

Models are built from their real configs (typed in below, random weights,
bf16 on GPU; nothing is downloaded): GPT-2 (124M), OPT-350m, Llama-2-7B (full
32 layers), and BERT-base on a right-padded batch (prefill only). Causal LMs
get a left-padded batch; decode runs greedy generate with a DynamicCache and
reports tokens/s over the decode steps (generate(N) time minus generate(1) time).

    python benchmarks/bench_e2e.py --out DIR [--ceilings-json FILE] [--device cpu --smoke]

--smoke shrinks every model to 2 layers and small shapes (said in each row's
shape string) so the script can be checked on a CPU; GPU numbers use the full
configs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from benchmarks.common import measure_ceilings, print_table, row, time_ms, write_results  # noqa: E402
from fastxf.demo import use_implementation  # noqa: E402

MODELS = {
    # GPT-2 small (openai-community/gpt2 config.json)
    "gpt2": ("gpt2", "GPT2LMHeadModel", dict(n_embd=768, n_layer=12, n_head=12, n_positions=1024, n_inner=None,
                                             vocab_size=50257, activation_function="gelu_new", layer_norm_epsilon=1e-5)),
    # facebook/opt-350m config.json (post-LN off, 512-wide embeddings projected to 1024)
    "opt-350m": ("opt", "OPTForCausalLM", dict(hidden_size=1024, num_hidden_layers=24, ffn_dim=4096,
                                               num_attention_heads=16, vocab_size=50272, max_position_embeddings=2048,
                                               word_embed_proj_dim=512, do_layer_norm_before=False, pad_token_id=1,
                                               bos_token_id=2, eos_token_id=2)),
    # meta-llama/Llama-2-7b-hf config.json
    "llama-2-7b": ("llama", "LlamaForCausalLM", dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                                                     num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
                                                     max_position_embeddings=4096, rms_norm_eps=1e-5,
                                                     rope_theta=10000.0)),
    # google-bert/bert-base-uncased config.json
    "bert-base": ("bert", "BertModel", dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                            intermediate_size=3072, vocab_size=30522, max_position_embeddings=512)),
}
# (batch, prompt tokens, new tokens) per model on GPU; --smoke uses (2, 32, 4).
SHAPES = {"gpt2": (8, 512, 32), "opt-350m": (8, 512, 32), "llama-2-7b": (4, 512, 16), "bert-base": (32, 128, 0)}
IMPLS = ("fastxf", "sdpa", "eager")


def build(name, device, dtype, smoke):
    import transformers

    model_type, cls, cfg_kwargs = MODELS[name]
    cfg_kwargs = dict(cfg_kwargs)
    if smoke:
        for k in ("n_layer", "num_hidden_layers"):
            if k in cfg_kwargs:
                cfg_kwargs[k] = 2
    cfg = transformers.AutoConfig.for_model(model_type, **cfg_kwargs)
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build directly in bf16 on the GPU: a 7B model in fp32 first would be 27 GB
    try:
        with torch.device(device):
            model = getattr(transformers, cls)(cfg)
    finally:
        torch.set_default_dtype(old)
    return model.to(dtype).eval()


def padded_batch(name, model, batch, seq, device):
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(5, model.config.vocab_size, (batch, seq), generator=gen)
    mask = torch.ones(batch, seq, dtype=torch.long)
    for b in range(1, batch):  # lengths from seq down to about seq / 2
        pad = (b * seq) // (2 * batch)
        if name == "bert-base":
            mask[b, seq - pad :] = 0
        else:
            mask[b, :pad] = 0
    return ids.to(device), mask.to(device)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="directory for e2e.json")
    p.add_argument("--ceilings-json", help="reuse ceilings measured already (a results JSON or {copy_gbps, matmul_tflops})")
    p.add_argument("--device", default="cuda")
    p.add_argument("--smoke", action="store_true", help="2-layer models, tiny shapes (CPU check of the script)")
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of " + ",".join(MODELS))
    args = p.parse_args(argv)

    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if args.ceilings_json:
        with open(args.ceilings_json) as f:
            doc = json.load(f)
        ceilings = doc.get("ceilings", doc)
    elif device.type == "cuda":
        ceilings = measure_ceilings(device)
    else:
        ceilings = {"copy_gbps": 0.0, "matmul_tflops": 0.0}

    rows, checks = [], {}
    for name in args.models.split(","):
        model = build(name, device, dtype, args.smoke)
        batch, seq, new = (2, 32, 4 if name != "bert-base" else 0) if args.smoke else SHAPES[name]
        ids, mask = padded_batch(name, model, batch, seq, device)
        n_params = sum(p.numel() for p in model.parameters())
        weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        tokens = int(mask.sum())
        layers = getattr(model.config, "num_hidden_layers", None)
        tag = f"{name}{' (smoke: 2 layers)' if args.smoke else ''} b{batch} s{seq}"
        causal = name != "bert-base"
        outputs = {}
        for impl in IMPLS:
            use_implementation(model, impl)

            def prefill():
                with torch.no_grad():
                    return model(input_ids=ids, attention_mask=mask)

            try:
                out = prefill()
            except Exception as e:  # e.g. a fastxf build without this device's kernels: say so, time the rest
                print(f"{tag} {impl}: FAILED {type(e).__name__}: {e}", flush=True)
                checks.setdefault(name, {})[f"{impl}_error"] = f"{type(e).__name__}: {e}"
                continue
            outputs[impl] = (out.logits if causal else out.last_hidden_state).float()
            ms = time_ms(prefill, device=device, warmup=2, min_runs=3, budget_s=0.5)
            rows.append(row("prefill", tag, dtype, impl, ms, flops=2 * n_params * tokens))
            if causal and new > 1:

                def generate(n=new):
                    return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n,
                                          min_new_tokens=n, do_sample=False, pad_token_id=0)

                # Decode steps alone: generate(N) minus generate(1) (same prefill and setup).
                one_ms = time_ms(lambda: generate(1), device=device, warmup=1, min_runs=2, budget_s=0.0)
                gen_ms = time_ms(generate, device=device, warmup=1, min_runs=2, budget_s=0.0)
                step_ms = max(gen_ms - one_ms, 1e-6) / (new - 1)
                r = row("decode", f"{tag} +{new} tok", dtype, impl, step_ms, bytes_moved=weight_bytes)
                r["tokens_per_s"] = round(batch / step_ms * 1e3, 1)
                rows.append(r)
        use_implementation(model, "eager")
        checks.setdefault(name, {}).update(layers=layers, params=n_params)
        if "fastxf" in outputs and "sdpa" in outputs:
            valid = mask.bool()
            ref = outputs["sdpa"][valid]
            err = ((outputs["fastxf"][valid] - ref).abs().max() / ref.abs().max()).item()
            checks[name]["max_rel_err_vs_sdpa"] = err
            print(f"{tag}: {n_params / 1e6:.0f}M params, fastxf vs sdpa outputs max rel. err {err:.2e}", flush=True)
        del model, outputs
        if device.type == "cuda":
            torch.cuda.empty_cache()

    print_table(rows, ceilings if device.type == "cuda" else None)
    for r in rows:
        if "tokens_per_s" in r:
            print(f"{r['shape']} {r['impl']}: {r['tokens_per_s']} tokens/s")
    write_results(os.path.join(args.out, "e2e.json"), rows, ceilings, device=device, extra={"checks": checks})
    print(f"wrote {os.path.join(args.out, 'e2e.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
