"""The CUDA varlen attention (fastxf.attention_varlen on the prefill kernel's
varlen variant, csrc/attention/attention_varlen_cuda.cu + prefill_*) run by the
CPU emulator, against the float64 block-diagonal reference of
tests/test_attention_varlen.py (same bar: at most 2x the error of the same math
in the input dtype plus one epsilon of the largest output; rows with no visible
key exactly zero).

Under fastxf.testing.emulate_cuda() the CPU op forwards to the CUDA host code
before reading any offset, so torch.ops.fastxf.attention_varlen called directly
reaches the kernel with unchecked offsets: the bad-offset tests rely on the
emulator's bounds checker (any access outside q / k / v / out / the offsets
raises) to show that the kernel's clamping keeps every access in bounds.
Sizes are small: the emulator runs every thread of every CTA on the CPU. The
prefill kernel's query tile is 128 rows (head dim <= 128) or 64 (256).
"""

from __future__ import annotations

import pytest
import torch

import fastxf
from tests.emulation import dispatch_log, emulated, require_emulator  # noqa: F401 (fixture)
from tests.test_attention_varlen import assert_close_to_reference, block_reference, cu, packed

DTYPES = [torch.float16, torch.bfloat16]
HEAD_DIMS = [32, 64, 128, 256]
TNAME = {torch.float16: "Half", torch.bfloat16: "BFloat16"}  # as the dispatch log prints them


def run(q, k, v, cu_q, cu_k, **kw):
    lens_q, lens_k = (c[1:] - c[:-1] for c in (cu_q, cu_k))
    max_q = int(lens_q.max()) if lens_q.numel() else 0
    max_k = int(lens_k.max()) if lens_k.numel() else 0
    out = fastxf.ops.attention_varlen(q, k, v, cu_q, cu_k, max_q, max_k, **kw)
    assert out.device.type == "cpu"
    assert_close_to_reference(out, q, k, v, cu_q, cu_k, **kw)
    return out


def no_key_rows(cu_q, cu_k, **kw):
    """(total_q,) bool: query rows that see no key (must be exact zeros)."""
    ones = lambda c: torch.ones(int(c[-1]), 1, 1, dtype=torch.float64)
    return block_reference(ones(cu_q), ones(cu_k), ones(cu_k), cu_q, cu_k, **kw)[:, 0, 0] == 0


# ---------------------------------------------------------------- coverage ----
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("D", HEAD_DIMS)
def test_instantiations(emulated, dtype, D):
    # GQA; per sequence q_len != k_len both ways, an empty sequence, a sequence
    # with queries but no keys, length-1 sequences.
    lens_q, lens_k = [5, 0, 37, 1, 4, 1], [9, 3, 30, 1, 0, 6]
    q, k, v, cu_q, cu_k = packed(lens_q, lens_k, 4, 2, D, dtype)
    out = run(q, k, v, cu_q, cu_k, causal=True)
    assert (out[no_key_rows(cu_q, cu_k, causal=True)] == 0).all()
    assert (out[43:47] == 0).all()  # sequence 4 (rows 43..46): queries without keys
    run(q, k, v, cu_q, cu_k)
    assert dispatch_log() == [f"prefill_varlen T={TNAME[dtype]} D={D} d_load={D} d_out={D}"] * 2


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("D", [40, 80, 36])  # padded to 64 / 128 in the kernel; 36: zero-padded copy to 40
def test_padded_head_dims(emulated, dtype, D):
    q, k, v, cu_q, cu_k = packed([7, 20], [7, 25], 2, 1, D, dtype)
    run(q, k, v, cu_q, cu_k, causal=True)
    kD = 64 if D <= 64 else 128
    assert dispatch_log() == [f"prefill_varlen T={TNAME[dtype]} D={kD} d_load={(D + 7) // 8 * 8} d_out={D}"]


@pytest.mark.parametrize("heads", [(4, 4), (6, 2), (5, 1)], ids=["mha", "gqa", "mqa"])
def test_heads(emulated, heads):
    q, k, v, cu_q, cu_k = packed([3, 17, 1], [3, 20, 2], *heads, 64, torch.bfloat16)
    run(q, k, v, cu_q, cu_k, causal=True)
    run(q, k, v, cu_q, cu_k)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_longer_than_one_tile(emulated, dtype):
    # D 64: 128-row query tiles, 64-key tiles; a 150-row sequence takes two query
    # tiles, the short one's second tile exits early. Causal with k_len > q_len and
    # q_len > k_len (the first rows then see no key).
    q, k, v, cu_q, cu_k = packed([150, 3, 40], [170, 2, 140], 2, 1, 64, dtype)
    run(q, k, v, cu_q, cu_k, causal=True)
    out = run(*packed([150, 5], [90, 5], 2, 2, 64, dtype), causal=True)
    assert (out[:60] == 0).all()  # query i of sequence 0 sees keys j <= i - 60
    # D 256: 64-row query tiles.
    run(*packed([70, 9], [70, 65], 2, 1, 256, dtype), causal=True)


def test_many_sequences(emulated):
    lens = [1 + (i * 7) % 13 for i in range(40)]
    q, k, v, cu_q, cu_k = packed(lens, lens[::-1], 2, 1, 32, torch.float16)
    run(q, k, v, cu_q, cu_k, causal=True)
    run(q, k, v, cu_q, cu_k)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_window_softcap_scale(emulated, dtype):
    q, k, v, cu_q, cu_k = packed([19, 3, 40], [30, 3, 40], 4, 2, 64, dtype)
    run(q, k, v, cu_q, cu_k, causal=True, window=5, softcap=8.0, scale=0.3)
    run(q, k, v, cu_q, cu_k, window=7)  # window without causal
    run(q, k, v, cu_q, cu_k, softcap=2.0)


def test_empty_and_degenerate(emulated):
    dt = torch.float16
    # Every sequence empty, then queries but no key anywhere (total_k = 0): zeros.
    for lens_q, lens_k in (([0, 0], [0, 0]), ([3, 4], [0, 0]), ([], [])):
        q, k, v, cu_q, cu_k = packed(lens_q, lens_k, 2, 2, 64, dt)
        out = fastxf.ops.attention_varlen(q, k, v, cu_q, cu_k, max(lens_q, default=0), max(lens_k, default=0))
        assert out.shape == q.shape and (out == 0).all()
    # Only length-1 sequences.
    run(*packed([1, 1, 1], [1, 1, 1], 2, 1, 32, dt), causal=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_strided_packed_views(emulated, dtype):
    # q / k / v sliced out of a packed qkv (total, 3, H, D): row stride 3 H D.
    T, H, D = 45, 2, 64
    qkv = torch.randn(T, 3, H, D).to(dtype)
    q, k, v = qkv.unbind(1)
    c = cu([20, 25])
    run(q, k, v, c, c, causal=True)
    # Head-split views of one fused projection (T, 3 H D), and a GQA kv buffer (T, 2, Hkv, D).
    fused = torch.randn(T, 3 * H * D).to(dtype)
    q2, k2, v2 = (t.view(T, H, D) for t in fused.split(H * D, dim=1))
    run(q2, k2, v2, c, c)
    kv = torch.randn(T, 2, 1, D).to(dtype)
    run(q, kv[:, 0], kv[:, 1], c, c, causal=True)
    # A base that is not 16-byte aligned (copied by the host code), and a padded head dim with strides.
    flat = torch.randn(T * H * D + 1).to(dtype)
    run(flat[1:].view(T, H, D), k, v, c, c)
    qkv36 = torch.randn(T, 3, H, 36).to(dtype)
    run(*qkv36.unbind(1), c, c, causal=True)


# --------------------------------------------------------------- bad offsets ----
def direct(q, k, v, cu_q, cu_k, max_q, max_k, causal=False):
    # torch.ops directly: no value checks on the way (as on the GPU).
    return torch.ops.fastxf.attention_varlen(q, k, v, cu_q, cu_k, max_q, max_k, causal, None, 0, 0.0)


def test_bad_offsets_stay_in_bounds(emulated):
    i32 = lambda *x: torch.tensor(x, dtype=torch.int32)
    q, k, v, cu_q, cu_k = packed([10, 12], [10, 12], 2, 1, 64, torch.float16)
    # Documented: each sequence's rows are clamped to [0, total]; offsets past the
    # end give the attention of the clamped rows (here sequence 1 = rows 10..21).
    out = direct(q, k, v, i32(0, 10, 999), i32(0, 10, 5000), 4000, 5000, causal=True)
    assert_close_to_reference(out, q, k, v, cu_q, cu_k, causal=True)
    # Negative and decreasing offsets: sequence 0 is rows [0, 10) (start clamped to 0),
    # sequence 1 is empty (end clamped to its start); rows 10.. are not written.
    out = direct(q, k, v, i32(-7, 10, 3), i32(-1, 10, 2), 12, 12)
    want = block_reference(q[:10], k[:10], v[:10], cu([10]), cu([10]))
    assert (out[:10].double() - want).abs().max() < 1e-2
    # Garbage (huge, negative): only checks that nothing is
    # read or written out of bounds (the emulator raises on any such access).
    direct(q, k, v, i32(2**31 - 1, -(2**31), 7), i32(5, 22, -3), 22, 22, causal=True)
    # Overlapping sequences (0..14 and 10..21): two CTAs write rows 10..14, values unspecified.
    direct(q, k, v, i32(0, 15, 10, 22), i32(0, 15, 10, 22), 22, 22)
    # max_seqlen_q too small: the grid covers ceil(max_seqlen_q / 128) * 128 rows of
    # each sequence; the rows it covers are right.
    q, k, v, cu_q, cu_k = packed([140, 3], [140, 3], 1, 1, 64, torch.float16)
    out = direct(q, k, v, cu_q, cu_k, 5, 140, causal=True)
    want = block_reference(q, k, v, cu_q, cu_k, causal=True)
    assert (out[:128].double() - want[:128]).abs().max() < 1e-2
    assert (out[140:].double() - want[140:]).abs().max() < 1e-2


def test_cuda_rejections_apply(emulated):
    q, k, v, cu_q, cu_k = packed([3, 4], [3, 4], 2, 2, 64, torch.float32)
    with pytest.raises(RuntimeError, match="float16/bfloat16; got float32"):
        fastxf.ops.attention_varlen(q, k, v, cu_q, cu_k, 4, 4)
    q, k, v, cu_q, cu_k = packed([3, 4], [3, 4], 2, 2, 264, torch.float16)
    with pytest.raises(RuntimeError, match="head_dim up to 256"):
        fastxf.ops.attention_varlen(q, k, v, cu_q, cu_k, 4, 4)
    q, k, v, cu_q, cu_k = packed([3, 4], [3, 4], 2, 2, 64, torch.float16)
    with pytest.raises(RuntimeError, match="int32"):
        direct(q, k, v, cu_q.long(), cu_k, 4, 4)
    with pytest.raises(RuntimeError, match="same length"):
        direct(q, k, v, cu_q[:2], cu_k, 4, 4)


# ------------------------------------------------------------------ routing ----
def test_routing(emulated):
    q, k, v, cu_q, cu_k = packed([3, 4], [3, 4], 2, 2, 64, torch.float16)
    torch.ops.fastxf.attention_varlen(q, k, v, cu_q, cu_k, 4, 4, True, None, 0, 0.0)
    # One varlen launch, not the dense kernel once per sequence.
    assert dispatch_log() == ["prefill_varlen T=Half D=64 d_load=64 d_out=64"]


def test_outside_the_context_the_cpu_kernel_runs():
    require_emulator()
    dispatch_log()
    q, k, v, cu_q, cu_k = packed([3, 4], [3, 4], 2, 2, 64, torch.float16)
    fastxf.ops.attention_varlen(q, k, v, cu_q, cu_k, 4, 4)
    assert dispatch_log() == []


# ------------------------------------------------------------- model level ----
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_bert_unpad(emulated, dtype):
    # A tiny BERT under optimize(unpad=True) on a padded batch, every kernel
    # emulated: the encoder layers' attention runs on the CUDA varlen kernel. Bar:
    # at most 2x the error of HF eager in the same dtype (vs HF eager in float32),
    # plus one epsilon, at the real positions.
    from fastxf.models.supported import ARCHS, build

    arch = next(a for a in ARCHS if a.model_type == "bert")
    ref = build(arch).eval()
    fx = build(arch).eval()
    fx.load_state_dict(ref.state_dict())
    ref_lp = build(arch).eval()
    ref_lp.load_state_dict(ref.state_dict())
    fx.to(dtype)
    ref_lp.to(dtype)
    fastxf.optimize(fx, unpad=True)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 128, (3, 11), generator=gen)
    mask = torch.ones(3, 11, dtype=torch.long)
    mask[0, 5:] = 0
    mask[1, 1:] = 0  # a length-1 sequence
    keep = mask.bool()
    dispatch_log()
    with torch.no_grad():
        got = fx(input_ids=ids, attention_mask=mask).last_hidden_state
        want = ref(input_ids=ids, attention_mask=mask).last_hidden_state
        base = ref_lp(input_ids=ids, attention_mask=mask).last_hidden_state
    lines = dispatch_log()
    layers = fx.config.num_hidden_layers
    assert sum(line.startswith("prefill_varlen") for line in lines) == layers, lines
    assert (got[~keep] == 0).all()
    err = (got[keep].double() - want[keep].double()).abs().max().item()
    base_err = (base[keep].double() - want[keep].double()).abs().max().item()
    bound = 2 * base_err + torch.finfo(dtype).eps * want[keep].abs().max().item()
    assert err <= bound, f"max error {err:.3g} > {bound:.3g} (HF eager in {dtype}: {base_err:.3g})"
