"""Decode attention (issue 5): a few query tokens over a bf16 KV cache, fastxf's
split-KV kernel against torch SDPA's backends and HF's eager attention math.

GB/s counts K and V read once plus q and the output (the bytes a decode step
cannot avoid); compare with the copy ceiling measured in the same run.

    PYTHONPATH=python:. python benchmarks/bench_attention_decode.py --out DIR
"""

from __future__ import annotations

import argparse
import json
import os

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import fastxf  # noqa: F401  (loads the extension: registers torch.ops.fastxf.*)
from benchmarks.common import measure_ceilings, print_table, row, time_ms, write_results

OP = "attention_decode"
D = 128
Q_HEADS = 32
SHAPES = [(1, 4096), (1, 32768), (8, 4096), (8, 16384), (64, 2048)]  # (batch, cache length)
KV_HEADS = [32, 8]
Q_LENS = [1, 4]

SDPA_BACKENDS = {
    "sdpa_flash": [SDPBackend.FLASH_ATTENTION],
    "sdpa_cudnn": [SDPBackend.CUDNN_ATTENTION],
    "sdpa_efficient": [SDPBackend.EFFICIENT_ATTENTION],
}


def causal_mask(q_len, k_len, device):
    """Bottom-right causal mask (query i sees keys j <= i + k_len - q_len), as
    SDPA's is_causal is top-left aligned when q_len != k_len."""
    i = torch.arange(q_len, device=device)[:, None]
    j = torch.arange(k_len, device=device)[None, :]
    return j <= i + (k_len - q_len)


def sdpa_fn(backends, causal, gqa):
    def fn(q, k, v, mask):
        kw = dict(attn_mask=mask) if causal else {}
        if backends is None:
            return F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa, **kw)
        with sdpa_kernel(backends):
            return F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa, **kw)

    return fn


def hf_eager(q, k, v, mask):
    """transformers' eager_attention_forward: repeat_kv, matmul, fp32 softmax, matmul."""
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--ceilings-json", default=None, help="reuse ceilings from an earlier results JSON")
    args = ap.parse_args()
    dev = "cuda"
    dtype = torch.bfloat16
    if args.ceilings_json:
        with open(args.ceilings_json) as f:
            ceilings = json.load(f)["ceilings"]
    else:
        ceilings = measure_ceilings(dev)
    rows = []
    for batch, k_len in SHAPES:
        for hkv in KV_HEADS:
            # Several cache copies (together well past the 50-60 MB L2) so that
            # back-to-back runs do not time the L2.
            kv_bytes = 2 * batch * hkv * k_len * D * 2
            n_sets = max(1, min(8, (512 << 20) // kv_bytes))
            caches = [
                (torch.randn(batch, hkv, k_len, D, device=dev, dtype=dtype),
                 torch.randn(batch, hkv, k_len, D, device=dev, dtype=dtype))
                for _ in range(n_sets)
            ]
            for q_len in Q_LENS:
                causal = q_len > 1
                q = torch.randn(batch, Q_HEADS, q_len, D, device=dev, dtype=dtype)
                mask = causal_mask(q_len, k_len, dev) if causal else None
                inputs = [(q, k, v, mask) for k, v in caches]
                moved = kv_bytes + 2 * q.numel() * q.element_size()
                shape = f"b{batch} sk{k_len} hq{Q_HEADS} hkv{hkv} sq{q_len} d{D}"
                impls = {
                    # the op itself (fastxf.ops.attention adds only Python argument checks)
                    "fastxf": lambda q, k, v, m, c=causal: torch.ops.fastxf.attention(q, k, v, None, None, c, None, 0, 0.0),
                    **{name: sdpa_fn(b, causal, hkv != Q_HEADS) for name, b in SDPA_BACKENDS.items()},
                    "sdpa_default": sdpa_fn(None, causal, hkv != Q_HEADS),
                    "hf_eager": hf_eager,
                }
                for name, fn in impls.items():
                    try:
                        fn(*inputs[0])
                        torch.cuda.synchronize()
                    except Exception as e:  # a backend that refuses this case records nothing
                        print(f"{shape}: {name} skipped ({type(e).__name__}: {str(e).splitlines()[0][:100]})")
                        continue
                    ms = time_ms(fn, device=dev, inputs=inputs, warmup=3, min_runs=10, budget_s=0.15)
                    rows.append(row(OP, shape, dtype, name, ms, bytes_moved=moved))
                print_table([r for r in rows if r["shape"] == shape], ceilings)
            del caches
            torch.cuda.empty_cache()
    out = os.path.join(args.out, f"{OP}.json")
    write_results(out, rows, ceilings, device=dev)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
