"""Every dispatched CUDA kernel variant of fastxf, launched at least once at small,
awkward sizes, each result compared with the CPU op (the tested reference).
Meant to run under compute-sanitizer (scripts/gpu_check.sh: memcheck over all
families, racecheck and synccheck over the attention kernels), where the whole
CUDA test suite would take too long.

    python scripts/kernel_variants.py [--device cuda|emulate|cpu] [--only norm,prefill,decode,varlen] [--minimal]

Variants (what the host dispatch chooses; csrc/norm/norm_cuda_ops.cpp,
csrc/attention/prefill_cuda.cu, decode_cuda.cu):
- norm: every (x dtype, out dtype) instantiation, LayerNorm and RMSNorm, and
  every launch configuration (16-byte vectorised / scalar, N = 1, 2, 4 chunks
  per thread with sub-warp, warp and block-per-row groups, scalar N = 8, 16,
  the two-pass kernel), with weight / bias / fused residual / unit offset.
- prefill: fp16 and bf16 at head dims 32, 64, 128, 256, and the padded ones
  (36, 40, 80, 96, 160); GQA, chunked (Sq < Sk), key padding, q_offset,
  window, softcap, ALiBi, a strided q view.
- decode (q_len <= 16): fp16 and bf16 at head dims 32, 64, 80, 96, 128, 256,
  without and with split-KV, causal q_len 4 with GQA, key padding, ALiBi.
- varlen: the packed op, when the build has a CUDA kernel for it (skipped with
  a note otherwise).

--device emulate runs the same launches through the CPU emulator (fastxf._emu)
and checks from the emulated dispatch's own log that every variant in EXPECTED
was reached (tests/test_gpu_check.py does this in CI); --device cpu runs the
CPU kernels (a check of the script's plumbing only). --minimal launches one
case per (family, dtype, head dim) instantiation (racecheck is slow).
Exit status: 0 all matched, 1 a mismatch, an error or (emulate) a variant not reached.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time

import torch

FAMILIES = ("norm", "prefill", "decode", "varlen")
HALF = (torch.float16, torch.bfloat16)
PREFILL_HEAD_DIMS = (32, 64, 128, 256)
PADDED_HEAD_DIMS = (40, 80, 96, 160, 36)  # run by the 64 / 128 / 128 / 256 / 64 instantiations
DECODE_HEAD_DIMS = (32, 64, 80, 96, 128, 256)
# Hidden sizes at the edges of the norm launch configurations (see tests/test_emulated_norm.py).
NORM_HIDDEN_16 = (64, 512, 1024, 2056, 32776, 31, 50, 1001, 5001, 10001, 16385)
NORM_HIDDEN_32 = (32, 200, 4100, 16388, 33)

# What the emulated dispatch logs for the launches below (csrc/gpu_host.h trace_dispatch).
_T = {torch.float16: "Half", torch.bfloat16: "BFloat16", torch.float32: "Float"}
EXPECTED = {
    "norm": (
        [f"norm {kind} x={_T[x]} out={_T[o]} " for kind in ("layer", "rms") for x in _T for o in _T]
        + [f" vec={c}" for c in ("1 N=1 G=8 rows_per_block=16", "1 N=2 G=32 rows_per_block=4",
                                 "1 N=4 G=32 rows_per_block=4", "1 N=4 G=96 rows_per_block=1",
                                 "1 N=4 G=288 rows_per_block=1", "1 N=0 G=512 rows_per_block=1",
                                 "0 N=1 G=32 rows_per_block=4", "0 N=2 G=32 rows_per_block=4",
                                 "0 N=4 G=256 rows_per_block=1", "0 N=8 G=640 rows_per_block=1",
                                 "0 N=16 G=640 rows_per_block=1", "0 N=0 G=512 rows_per_block=1")]
    ),
    "prefill": (
        [f"prefill T={_T[t]} D={d} d_load={d} " for t in HALF for d in PREFILL_HEAD_DIMS]
        + [f"prefill T={_T[t]} D={kd} d_load={dl} d_out={do}" for t in HALF
           for kd, dl, do in ((64, 40, 40), (128, 80, 80), (128, 96, 96), (256, 160, 160), (64, 40, 36))]
    ),
    "decode": [f"decode T={_T[t]} D={d} splits={s} " for t in HALF for d in DECODE_HEAD_DIMS for s in (1, 2)],
    "varlen": [],
}


def rand(*shape, dtype, device):
    return torch.randn(*shape, dtype=torch.float32).to(dtype).to(device)


class Runner:
    """Runs each case on the device under test and on the CPU, records the relative
    max difference, and (emulate) the dispatch log lines each case produced."""

    def __init__(self, device: str, verbose: bool):
        self.device, self.verbose = device, verbose
        self.dev = "cuda" if device == "cuda" else "cpu"
        self.failures: list[str] = []
        self.log: list[str] = []
        self.cases = 0
        self._emu = None
        if device == "emulate":
            import fastxf._emu  # noqa: F401  (ImportError: not built; main() explains)
            import fastxf.testing

            self._emu = fastxf._emu
            self._emu.dispatch_log()
            self._ctx = fastxf.testing.emulate_cuda

    def _on_device(self, fn):
        ctx = self._ctx() if self._emu is not None else contextlib.nullcontext()
        with ctx:
            out = fn(self.dev)
        if self.dev == "cuda":
            torch.cuda.synchronize()
        if self._emu is not None:
            self.log += self._emu.dispatch_log()
        return out

    def case(self, what: str, fn, tol: float):
        """fn(device) -> tensor or tuple; compared with fn("cpu") on the same inputs
        (fn draws its inputs from a seeded generator, so both calls see the same)."""
        self.cases += 1
        try:
            torch.manual_seed(self.cases)
            got = self._on_device(fn)
            torch.manual_seed(self.cases)
            want = fn("cpu")
        except Exception as e:  # one broken case must not hide the others
            self.failures.append(f"{what}: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
            print(f"FAIL {what}: {self.failures[-1]}", flush=True)
            return
        got = got if isinstance(got, tuple) else (got,)
        want = want if isinstance(want, tuple) else (want,)
        for i, (g, w) in enumerate(zip(got, want)):
            g, w = g.detach().float().cpu(), w.detach().float()
            if not torch.isfinite(g).all():
                self.failures.append(f"{what}[{i}]: non-finite values")
                print(f"FAIL {self.failures[-1]}", flush=True)
                continue
            err = (g - w).abs().max().item() / (w.abs().max().item() or 1.0)
            if err > tol:
                self.failures.append(f"{what}[{i}]: relative max diff {err:.3g} > {tol}")
                print(f"FAIL {self.failures[-1]}", flush=True)
            elif self.verbose:
                print(f"ok {what}[{i}]: {err:.2g}", flush=True)


def _tol(dtype):
    # Both sides accumulate in fp32 and round once to the output dtype; only the
    # summation order differs: a few ulps of the output dtype.
    return {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 2e-2}[dtype]


def norm_cases(r: Runner, minimal: bool):
    import fastxf.ops as ops

    for dtype in (torch.float32, *HALF):
        # Every (x, out) dtype instantiation, vectorised (96) and scalar (97) rows.
        for out_dtype in (torch.float32, *HALF):
            for h in ((96,) if minimal else (96, 97)):
                def ln(dev, h=h, dtype=dtype, out_dtype=out_dtype):
                    x, w, b = rand(5, h, dtype=dtype, device=dev), rand(h, dtype=dtype, device=dev), rand(h, dtype=dtype, device=dev)
                    return ops.layer_norm(x, w, b, 1e-5, out_dtype=out_dtype)

                def rms(dev, h=h, dtype=dtype, out_dtype=out_dtype):
                    x, w = rand(5, h, dtype=dtype, device=dev), rand(h, dtype=dtype, device=dev)
                    res = rand(5, h, dtype=dtype, device=dev)
                    return ops.rms_norm(x, w, 1e-6, residual=res, unit_offset=True, out_dtype=out_dtype)

                tol = max(_tol(dtype), _tol(out_dtype))
                r.case(f"layer_norm x={dtype} out={out_dtype} h={h}", ln, tol)
                r.case(f"rms_norm+residual x={dtype} out={out_dtype} h={h}", rms, tol)
        # Every launch configuration.
        for h in (NORM_HIDDEN_32 if dtype == torch.float32 else NORM_HIDDEN_16):
            rows = 3 if h < 10000 else 2  # 3 rows: a multi-row block left partly empty

            def rms_cfg(dev, h=h, dtype=dtype, rows=rows):
                return ops.rms_norm(rand(rows, h, dtype=dtype, device=dev) + 1, None, 1e-6)

            def ln_cfg(dev, h=h, dtype=dtype, rows=rows):
                x, w = rand(rows, h, dtype=dtype, device=dev), rand(h, dtype=torch.float32, device=dev)
                return ops.layer_norm(x, w, rand(h, dtype=torch.float32, device=dev), 1e-5,
                                      residual=rand(rows, h, dtype=dtype, device=dev))

            r.case(f"rms_norm x={dtype} h={h}", rms_cfg, _tol(dtype))
            if not minimal:
                r.case(f"layer_norm+residual fp32 affine x={dtype} h={h}", ln_cfg, _tol(dtype))
    if not minimal:
        def views(dev):  # misaligned rows and weight (scalar), strided rows (vectorised)
            big, w = rand(6, 1032, dtype=torch.bfloat16, device=dev), rand(1025, dtype=torch.bfloat16, device=dev)
            a = ops.layer_norm(big[:, 1:1025], w[1:], None, 1e-5)
            b = ops.layer_norm(big[::2, :1024], None, None, 1e-5, residual=big[1::2, 8:1032])
            return (a, *b)

        r.case("norm views", views, _tol(torch.bfloat16))


def _qkv(B, Hq, Hkv, Sq, Sk, D, dtype, dev):
    return (rand(B, Hq, Sq, D, dtype=dtype, device=dev), rand(B, Hkv, Sk, D, dtype=dtype, device=dev),
            rand(B, Hkv, Sk, D, dtype=dtype, device=dev))


def _mask(B, Sk, dev):
    m = torch.ones(B, Sk, dtype=torch.bool)
    m[0, : Sk // 3] = False  # left padding
    if B > 1:
        m[1, Sk - Sk // 2:] = False  # right padding
    if B > 2:
        m[2, ::3] = False  # holes
    return m.to(dev)


def _slopes(shape, dev):
    return (torch.rand(*shape) * 0.5 + 0.01).to(dev)


def prefill_cases(r: Runner, minimal: bool):
    from fastxf.ops import attention

    for dtype in HALF:
        tol = _tol(dtype)
        for D in PREFILL_HEAD_DIMS:
            r.case(f"prefill {dtype} D={D} GQA chunked causal",
                   lambda dev, D=D, dtype=dtype: attention(*_qkv(1, 2, 1, 33, 97, D, dtype, dev), causal=True), tol)
            if minimal:
                continue

            def flags(dev, D=D, dtype=dtype):
                q, k, v = _qkv(2, 2, 2, 40, 97, D, dtype, dev)
                return attention(q, k, v, key_padding_mask=_mask(2, 97, dev), window=30, softcap=5.0,
                                 q_offset=torch.tensor([50, 10], device=dev))

            def alibi(dev, D=D, dtype=dtype):
                q, k, v = _qkv(2, 4, 2, 24, 70, D, dtype, dev)
                return attention(q, k, v, causal=True, alibi_slopes=_slopes((2, 4), dev))

            r.case(f"prefill {dtype} D={D} mask window softcap q_offset", flags, tol)
            r.case(f"prefill {dtype} D={D} alibi", alibi, tol)
        for D in PADDED_HEAD_DIMS:
            r.case(f"prefill {dtype} D={D} (padded head dim)",
                   lambda dev, D=D, dtype=dtype: attention(*_qkv(1, 2, 2, 24, 70, D, dtype, dev), causal=True), tol)
        if not minimal:
            def strided(dev, dtype=dtype):  # q as a (B, S, H, D) transpose, k / v slices of one buffer
                q = rand(2, 50, 4, 64, dtype=dtype, device=dev).transpose(1, 2)
                kv = rand(2, 2, 2, 77, 64, dtype=dtype, device=dev)
                return attention(q, kv[0], kv[1], causal=True)

            def sq_gt_sk(dev, dtype=dtype):  # the first rows see no key: zeros
                return attention(*_qkv(1, 2, 2, 150, 65, 64, dtype, dev), causal=True)

            r.case(f"prefill {dtype} strided views", strided, tol)
            r.case(f"prefill {dtype} Sq > Sk", sq_gt_sk, tol)


def decode_cases(r: Runner, minimal: bool):
    from fastxf.ops import attention

    for dtype in HALF:
        tol = _tol(dtype)
        for D in DECODE_HEAD_DIMS:
            # 100 keys: one split; 300: split-KV (the split count follows the SM count:
            # H100 / H200, 132 SMs, as the emulator's dispatch assumes).
            r.case(f"decode {dtype} D={D} Sk=100",
                   lambda dev, D=D, dtype=dtype: attention(*_qkv(1, 1, 1, 1, 100, D, dtype, dev)), tol)
            r.case(f"decode {dtype} D={D} Sk=300 (split-KV)",
                   lambda dev, D=D, dtype=dtype: attention(*_qkv(1, 1, 1, 1, 300, D, dtype, dev)), tol)
            if minimal:
                continue
            r.case(f"decode {dtype} D={D} GQA q_len=4 causal",
                   lambda dev, D=D, dtype=dtype: attention(*_qkv(1, 8, 2, 4, 200, D, dtype, dev), causal=True), tol)

            def masked(dev, D=D, dtype=dtype):
                q, k, v = _qkv(3, 4, 4, 1, 600, D, dtype, dev)
                return attention(q, k, v, key_padding_mask=_mask(3, 600, dev), alibi_slopes=_slopes((4,), dev))

            r.case(f"decode {dtype} D={D} key padding alibi", masked, tol)
        if not minimal:
            def offsets(dev, dtype=dtype):
                q, k, v = _qkv(4, 8, 2, 4, 700, 128, dtype, dev)
                return attention(q, k, v, causal=True, window=70, softcap=5.0,
                                 q_offset=torch.tensor([650, 100, 5, 400], device=dev))

            r.case(f"decode {dtype} window softcap q_offset", offsets, tol)
            r.case(f"decode {dtype} 16 row tiles",
                   lambda dev, dtype=dtype: attention(*_qkv(1, 16, 1, 16, 300, 128, dtype, dev), causal=True), tol)


def varlen_cases(r: Runner, minimal: bool):
    from fastxf.ops import attention_varlen

    lengths_q, lengths_k = [5, 0, 33, 17], [9, 0, 33, 70]
    cu_q = torch.tensor([0] + torch.tensor(lengths_q).cumsum(0).tolist(), dtype=torch.int32)
    cu_k = torch.tensor([0] + torch.tensor(lengths_k).cumsum(0).tolist(), dtype=torch.int32)
    if r.dev == "cuda":
        probe = rand(1, 1, 64, dtype=torch.bfloat16, device="cuda")
        one = torch.tensor([0, 1], dtype=torch.int32, device="cuda")
        try:
            attention_varlen(probe, probe, probe, one, one, 1, 1)
        except NotImplementedError as e:
            print(f"varlen: skipped, {str(e).splitlines()[0][:160]}", flush=True)
            return
    for dtype in HALF:
        for D in ((64,) if minimal else (64, 128)):
            def fn(dev, D=D, dtype=dtype):
                q = rand(int(cu_q[-1]), 4, D, dtype=dtype, device=dev)
                k = rand(int(cu_k[-1]), 2, D, dtype=dtype, device=dev)
                v = rand(int(cu_k[-1]), 2, D, dtype=dtype, device=dev)
                return attention_varlen(q, k, v, cu_q.to(dev), cu_k.to(dev), max(lengths_q), max(lengths_k), causal=True)

            r.case(f"varlen {dtype} D={D}", fn, _tol(dtype))


def missing_variants(log: list[str], families) -> list[str]:
    """EXPECTED entries of `families` that no dispatch log line contains."""
    return [want for f in families for want in EXPECTED[f] if not any(want in line for line in log)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cuda", "emulate", "cpu"), default="cuda")
    ap.add_argument("--only", default=",".join(FAMILIES), help="comma-separated subset of " + ",".join(FAMILIES))
    ap.add_argument("--minimal", action="store_true", help="one launch per instantiation (racecheck / synccheck)")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args(argv)
    families = [f for f in args.only.split(",") if f]
    bad = [f for f in families if f not in FAMILIES]
    if bad or not families:
        ap.error(f"--only {args.only!r}: choose from {', '.join(FAMILIES)}")
    import fastxf

    if args.device == "cuda" and not (torch.cuda.is_available() and fastxf.cuda_kernels_built()):
        print("kernel_variants: needs a CUDA GPU and fastxf built with its CUDA kernels "
              "(use --device emulate or cpu on a CPU machine)", file=sys.stderr)
        return 2
    try:
        r = Runner(args.device, args.verbose)
    except ImportError:
        print("kernel_variants: --device emulate needs fastxf._emu (build with -DFASTXF_EMULATOR=ON)", file=sys.stderr)
        return 2
    t0 = time.time()
    funcs = {"norm": norm_cases, "prefill": prefill_cases, "decode": decode_cases, "varlen": varlen_cases}
    for f in families:
        n = r.cases
        funcs[f](r, args.minimal)
        print(f"{f}: {r.cases - n} cases, {time.time() - t0:.1f} s", flush=True)
    status = 0
    if r.failures:
        print(f"{len(r.failures)} of {r.cases} cases FAILED:\n  " + "\n  ".join(r.failures))
        status = 1
    if args.device == "emulate":
        missing = missing_variants(r.log, [f for f in families if not (f == "norm" and args.minimal)])
        if missing:
            print("variants never dispatched:\n  " + "\n  ".join(missing))
            status = 1
        else:
            print(f"every expected variant dispatched ({len(set(r.log))} distinct dispatch lines)")
    print(f"kernel_variants: {r.cases} cases on {args.device}, {len(r.failures)} failed, {time.time() - t0:.1f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
