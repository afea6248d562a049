"""Pipeline stages beyond one machine: one stage per process with
torch.distributed.pipelining, started by torchrun.

    torchrun --nproc-per-node 2 -m fastxf.distributed --check
    torchrun --nnodes 2 --nproc-per-node 8 ... -m fastxf.distributed --model /path/to/llama --prompt-len 32

Every process builds the model (the built-in tiny Llama with fixed seed, or a
local checkpoint given by --model), keeps only the layers of its own stage
(embeddings on the first, final norm and head on the last) and runs a GPipe
schedule over micro-batches: NCCL between GPUs (one GPU per process, by
LOCAL_RANK), gloo between CPU processes.

Generation: torch.distributed.pipelining has no KV cache handling, so greedy
generation here recomputes the full sequence every step. To keep the stages'
communication buffers at one shape, the sequence lives in a fixed buffer of
prompt + new tokens padded at the end; the model is causal, so the padding never
influences the logits at the positions that are read. That is O(n^2) work and
meant as a correctness check and a template, not a fast path (single-machine
generation with caches is fastxf.placement.place_model).

--check compares the pipelined logits and greedy tokens with a single-process
run of the same model, prints the comparison and exits non-zero on a mismatch."""

from __future__ import annotations

import argparse
import datetime
import faulthandler
import os
import sys

import torch
import torch.distributed as dist
from torch import nn


def build_tiny_llama(seed: int = 0):
    """The built-in check model: a tiny Llama with random weights (fixed seed)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=False)
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).eval()


def _llama_parts(model):
    inner = getattr(model, "model", None)
    needed = ("embed_tokens", "layers", "norm", "rotary_emb")
    if inner is None or not all(hasattr(inner, n) for n in needed) or not hasattr(model, "lm_head"):
        raise ValueError(f"fastxf.distributed: {type(model).__name__} is not a Llama-like causal LM "
                         "(model.model.{embed_tokens,layers,norm,rotary_emb} + lm_head)")
    return inner


class Stage(nn.Module):
    """One pipeline stage: [embeddings] + layers[a:b] + [final norm + head].
    Each stage rebuilds the rotary tables and the causal mask from the sequence
    length, so only the hidden states cross a stage boundary."""

    def __init__(self, model, a: int, b: int, first: bool, last: bool):
        super().__init__()
        inner = _llama_parts(model)
        self.first, self.last = first, last
        self.embed_tokens = inner.embed_tokens if first else None
        self.layers = nn.ModuleList(inner.layers[a:b])
        self.rotary_emb = inner.rotary_emb
        self.norm = inner.norm if last else None
        self.lm_head = model.lm_head if last else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed_tokens(x) if self.first else x
        T = h.shape[1]
        pos = torch.arange(T, device=h.device).unsqueeze(0)
        cos_sin = self.rotary_emb(h, pos)
        # Additive causal mask, understood by the eager and sdpa attention paths alike.
        mask = torch.full((T, T), torch.finfo(h.dtype).min, device=h.device, dtype=h.dtype).triu(1)[None, None]
        for layer in self.layers:
            out = layer(h, attention_mask=mask, position_ids=pos, position_embeddings=cos_sin)
            h = out[0] if isinstance(out, tuple) else out
        if self.last:
            h = self.lm_head(self.norm(h))
        return h


def split_counts(n_layers: int, n_stages: int, placement: str | None):
    if placement:
        counts = [int(c) for c in placement.split(",")]
        if len(counts) != n_stages or sum(counts) != n_layers or min(counts) < 1:
            raise ValueError(f"--placement {placement!r}: need {n_stages} positive counts summing to {n_layers}")
        return counts
    if n_stages > n_layers:
        raise ValueError(f"{n_stages} processes but only {n_layers} layers")
    q, r = divmod(n_layers, n_stages)
    return [q + (1 if i < r else 0) for i in range(n_stages)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m fastxf.distributed", description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="compare with a single-process run; non-zero exit on mismatch")
    p.add_argument("--model", default=None, help="local HF checkpoint directory (default: built-in tiny Llama)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None,
                   help="cpu (gloo) or cuda (nccl, GPU = LOCAL_RANK); --check defaults to cpu")
    p.add_argument("--placement", default=None, help="layer counts per stage, e.g. 3,5")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--prompt-len", type=int, default=9)
    p.add_argument("--new-tokens", type=int, default=5)
    p.add_argument("--micro-batches", type=int, default=2)
    p.add_argument("--atol", type=float, default=1e-5)
    p.add_argument("--timeout", type=float, default=120.0, help="seconds before the process dumps stacks and exits")
    args = p.parse_args(argv)
    if min(args.batch, args.prompt_len, args.new_tokens, args.micro_batches) < 1:
        p.error("--batch, --prompt-len, --new-tokens and --micro-batches must be >= 1")

    # A hung collective must not hang CI: dump every thread's stack and exit.
    faulthandler.dump_traceback_later(args.timeout, exit=True)
    if "RANK" not in os.environ:
        print("fastxf.distributed: run me under torchrun, e.g. "
              "`torchrun --nproc-per-node 2 -m fastxf.distributed --check`", file=sys.stderr)
        return 2
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    device_kind = args.device or ("cpu" if args.check else "auto")
    if device_kind == "auto":
        device_kind = "cuda" if torch.cuda.is_available() else "cpu"
    if device_kind == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
        torch.set_num_threads(1)  # one core per stage process; the check runs on small machines
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=max(10.0, args.timeout / 2)),
                            **({"device_id": device} if device.type == "cuda" else {}))
    try:
        return _run(args, rank, world, device)
    finally:
        dist.destroy_process_group()


def _run(args, rank, world, device) -> int:
    from torch.distributed.pipelining import PipelineStage, ScheduleGPipe

    if args.model:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(args.model, attn_implementation="eager").eval()
    else:
        model = build_tiny_llama()
    n_layers = len(_llama_parts(model).layers)
    counts = split_counts(n_layers, world, args.placement)
    a = sum(counts[:rank])
    b = a + counts[rank]
    first, last = rank == 0, rank == world - 1
    stage_mod = Stage(model, a, b, first, last).to(device)
    vocab = model.config.vocab_size

    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(3, vocab, (args.batch, args.prompt_len), generator=g)
    total = args.prompt_len + args.new_tokens
    buf = torch.zeros(args.batch, total, dtype=torch.long)
    buf[:, : args.prompt_len] = prompt

    stage = PipelineStage(stage_mod, rank, world, device)
    schedule = ScheduleGPipe(stage, n_microbatches=args.micro_batches)

    def pipelined_logits(ids):
        with torch.no_grad():
            if first:
                out = schedule.step(ids.to(device))
            else:
                out = schedule.step()
        return out if last else None

    # Every step feeds the same fixed-shape buffer (the stages' receive buffers are
    # sized on the first step). The first step's logits at the prompt positions are
    # the prompt forward's logits, since later (padding) positions cannot affect them.
    logits = None
    for t in range(args.prompt_len, total):
        out = pipelined_logits(buf)
        if last and logits is None:
            logits = out[:, : args.prompt_len].clone()
        nxt = torch.empty(args.batch, dtype=torch.long, device=device)
        if last:
            nxt.copy_(out[:, t - 1].argmax(-1))
        dist.broadcast(nxt, src=world - 1)
        buf[:, t] = nxt.cpu()

    status = torch.zeros(1, dtype=torch.long, device=device)
    if last:
        print(f"fastxf.distributed: {world} stages {counts} on {device.type} ({dist.get_backend()}), "
              f"batch {args.batch} x {args.prompt_len} tokens, {args.micro_batches} micro-batches", flush=True)
        if args.check:
            with torch.no_grad():
                ref = model.to("cpu")(input_ids=prompt).logits
                ref_gen = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt),
                                         max_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0,
                                         eos_token_id=None)
            err = (logits.float().cpu() - ref.float()).abs().max().item()
            same = torch.equal(buf, ref_gen)
            print(f"  logits: max |pipelined - single process| = {err:.3e} (atol {args.atol})", flush=True)
            print(f"  greedy tokens (recompute, no cache) vs single-process generate: "
                  f"{'identical' if same else 'DIFFERENT'}", flush=True)
            if not same:
                print(f"  pipelined: {buf.tolist()}\n  reference: {ref_gen.tolist()}", flush=True)
            ok = err <= args.atol and same
            print(f"  check {'PASSED' if ok else 'FAILED'}", flush=True)
            status.fill_(0 if ok else 1)
        else:
            print(f"  generated: {buf[:, args.prompt_len:].tolist()}", flush=True)
    dist.broadcast(status, src=world - 1)  # every rank exits with the verdict
    return int(status.item())


if __name__ == "__main__":
    sys.exit(main())
