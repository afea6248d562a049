"""fastxf.optimize / revert / explain on the architectures of
fastxf.models.supported.ARCHS: tiny random models, CPU, float32, compared with
the same weights under attn_implementation="eager"."""

from __future__ import annotations

import copy

import os

import pytest
import torch

import fastxf
from fastxf.models import attention as fx_attention
from fastxf.models.supported import (
    ARCHS,
    FASTXF_ADAPTER,
    HF_NOT_INTERFACE,
    HF_POSITION_BIAS,
    build,
    markdown,
    with_readme_table,
)

# fp32 on both sides; the only differences are summation order (tiled online
# softmax vs one softmax, fused vs unfused norms), ~1e-7 relative per op.
REL_TOL = 1e-4


def rel_err(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12)).item()


def make_inputs(arch, gen):
    """Model kwargs and a (B, S) bool of the positions whose outputs are compared."""
    if arch.task == "vision":
        x = torch.randn(2, 3, 32, 32, generator=gen)
        return {"pixel_values": x}, None
    if arch.task == "speech_seq2seq":
        feats = torch.randn(2, 16, 32, generator=gen)
        dec = torch.randint(4, 128, (2, 6), generator=gen)
        return {"input_features": feats, "decoder_input_ids": dec}, None
    ids = torch.randint(4, 128, (3, 9), generator=gen)
    mask = torch.ones(3, 9, dtype=torch.long)
    if arch.task == "causal_lm":  # left padding, as generate() wants it
        mask[0, :4] = 0
        mask[1, :1] = 0
    else:  # encoders: right padding
        mask[0, 5:] = 0
        mask[1, 8:] = 0
    kwargs = {"input_ids": ids, "attention_mask": mask}
    if arch.task == "seq2seq":
        kwargs["decoder_input_ids"] = torch.randint(4, 128, (3, 5), generator=gen)
        return kwargs, None
    return kwargs, mask.bool()


def main_output(out):
    for name in ("logits", "last_hidden_state"):
        if getattr(out, name, None) is not None:
            return getattr(out, name)
    return out[0]


def fallbacks():
    return {k: v for k, v in fx_attention.CALLS.items() if k.startswith("fallback:")}


@pytest.mark.parametrize("arch", ARCHS, ids=[a.model_type for a in ARCHS])
def test_architecture(arch):
    gen = torch.Generator().manual_seed(0)
    model = build(arch)
    reference = copy.deepcopy(model)  # never optimized, eager
    inputs, valid = make_inputs(arch, gen)
    state = {k: (v.data_ptr(), v.clone()) for k, v in model.state_dict().items()}

    # Adapted attention modules (fastxf.models.adapters) run the kernel like the interface path.
    expected = "fastxf" if arch.attention == FASTXF_ADAPTER else arch.attention
    if not type(model)._can_set_attn_implementation() and arch.attention != FASTXF_ADAPTER:
        # Some models moved onto AttentionInterface only in later transformers
        # releases (e.g. GPT-J, T5 after 5.17): then attention stays on HF.
        expected = HF_NOT_INTERFACE
    fastxf.optimize(model)
    report = fastxf.explain(model)
    if expected == HF_NOT_INTERFACE:
        assert report["attention"]["status"] == "kept" and "AttentionInterface" in report["attention"]["reason"]
    else:
        assert report["attention"]["status"] == "rewritten", report["attention"]
    assert not report["norms"]["kept"], report["norms"]["kept"]
    assert len(report["norms"]["replaced"]) > 0
    assert bool(report["fused_residual"]["fused"]) == arch.fused_residual, report["fused_residual"]

    after = model.state_dict()
    assert list(after) == list(state)
    for k, (ptr, val) in state.items():
        assert after[k].data_ptr() == ptr and torch.equal(after[k], val), k

    calls, fb = fx_attention.CALLS["fastxf"], fallbacks()
    with torch.no_grad():
        got = main_output(model(**inputs))
        want = main_output(reference(**inputs))
    if expected == "fastxf":
        assert fx_attention.CALLS["fastxf"] > calls, "the fastxf attention kernel was not called"
        assert fallbacks() == fb, f"attention fell back to HF: {fallbacks()}"
    elif expected == HF_POSITION_BIAS:
        assert fx_attention.CALLS["fastxf"] == calls
        assert fx_attention.CALLS["fallback:extra attention input 'position_bias'"] > fb.get(
            "fallback:extra attention input 'position_bias'", 0
        )
    else:
        assert fx_attention.CALLS["fastxf"] == calls and fallbacks() == fb
    if valid is not None:
        got, want = got[valid], want[valid]
    assert rel_err(got, want) < REL_TOL

    if arch.task in ("causal_lm", "seq2seq", "speech_seq2seq"):
        gen_inputs = {k: v for k, v in inputs.items() if k != "decoder_input_ids"}
        common = dict(max_new_tokens=6, min_new_tokens=6, pad_token_id=0)
        a = model.generate(**gen_inputs, do_sample=False, **common)
        b = reference.generate(**gen_inputs, do_sample=False, **common)
        assert torch.equal(a, b)
        if arch.static_cache:
            a = model.generate(**gen_inputs, do_sample=False, cache_implementation="static", **common)
            b = reference.generate(**gen_inputs, do_sample=False, cache_implementation="static", **common)
            assert torch.equal(a, b)
        if "beam" in arch.generate:
            beams = model.generate(**gen_inputs, num_beams=2, do_sample=False, **common)
            sampled = model.generate(**gen_inputs, do_sample=True, top_k=10, **common)
            assert beams.shape[0] == sampled.shape[0] == a.shape[0]
        if expected == "fastxf":
            assert fallbacks() == fb, f"attention fell back to HF during generate: {fallbacks()}"

    fastxf.revert(model)
    assert model.config._attn_implementation == "eager"
    with torch.no_grad():
        again = main_output(model(**inputs))
        want = main_output(reference(**inputs))
    assert torch.equal(again, want), "revert must restore bit-identical outputs"


def test_supported_models_doc_is_current():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    stale = "stale: run python -m fastxf.models.supported --write"
    with open(os.path.join(root, "docs", "supported_models.md")) as f:
        assert f.read() == markdown(), f"docs/supported_models.md is {stale}"
    with open(os.path.join(root, "README.md")) as f:
        readme = f.read()
    assert with_readme_table(readme) == readme, f"the table in README.md is {stale}"
