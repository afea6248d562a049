"""Runs every CUDA kernel once or twice on small, awkward shapes (odd sizes,
masks, GQA, misaligned views) and compares with the CPU ops. Meant to run under
`compute-sanitizer --tool memcheck`, where the full test suite would be too slow."""

import torch

import fastxf
from fastxf import ops


def close(a, b, what):
    err = (a.float().cpu() - b.float()).abs().max().item()
    print(f"{what}: max abs diff vs CPU {err:.3g}")


def main():
    torch.manual_seed(0)
    dev = "cuda"
    for dtype in (torch.bfloat16, torch.float16):
        x = torch.randn(37, 5001, dtype=dtype)
        r = torch.randn(37, 5001, dtype=dtype)
        w = torch.randn(5001)
        close(ops.rms_norm(x.to(dev)[:, 1:], w.to(dev)[1:], 1e-6), ops.rms_norm(x[:, 1:], w[1:], 1e-6), f"rms_norm {dtype}")
        o, s = ops.layer_norm(x.to(dev), w.to(dev, dtype), w.to(dev), 1e-5, residual=r.to(dev))
        o_ref, _ = ops.layer_norm(x, w.to(dtype), w, 1e-5, residual=r)
        close(o, o_ref, f"add_layer_norm {dtype}")
        for (b, hq, hkv, sq, sk, d) in [(2, 8, 2, 97, 131, 64), (1, 4, 4, 1, 1025, 128), (3, 8, 1, 4, 700, 128), (2, 2, 2, 33, 33, 128)]:
            q = torch.randn(b, sq, hq, d, dtype=dtype).transpose(1, 2)
            k = torch.randn(b, hkv, sk, d, dtype=dtype)
            v = torch.randn(b, hkv, sk, d, dtype=dtype)
            mask = torch.rand(b, sk) > 0.3
            mask[0, : sk // 2] = False
            kw = dict(causal=True, key_padding_mask=mask)
            got = ops.attention(q.to(dev), k.to(dev), v.to(dev), **{**kw, "key_padding_mask": mask.to(dev)})
            close(got, ops.attention(q, k, v, **kw), f"attention {dtype} {(b, hq, hkv, sq, sk, d)}")
        # Varlen: packed q / k / v views of one qkv buffer, an empty sequence, a
        # sequence without keys, one longer than a query tile, causal with q_len != k_len.
        lens_q, lens_k = [5, 0, 130, 3, 1], [9, 2, 130, 0, 1]
        cu_q = torch.tensor([0, *torch.tensor(lens_q).cumsum(0).tolist()], dtype=torch.int32)
        cu_k = torch.tensor([0, *torch.tensor(lens_k).cumsum(0).tolist()], dtype=torch.int32)
        qv = torch.randn(sum(lens_q), 3, 4, 80, dtype=dtype)[:, 0]
        kv = torch.randn(sum(lens_k), 2, 2, 80, dtype=dtype)
        args = (cu_q, cu_k, max(lens_q), max(lens_k))
        dev_args = (cu_q.to(dev), cu_k.to(dev), max(lens_q), max(lens_k))
        got = ops.attention_varlen(qv.to(dev), kv[:, 0].to(dev), kv[:, 1].to(dev), *dev_args, causal=True)
        close(got, ops.attention_varlen(qv, kv[:, 0], kv[:, 1], *args, causal=True), f"attention_varlen {dtype}")
    torch.cuda.synchronize()
    print("sanitizer smoke done")


if __name__ == "__main__":
    main()
