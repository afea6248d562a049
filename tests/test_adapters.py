"""Attention adapters (fastxf.models.adapters) for the families whose attention
module does not go through AttentionInterface: BLOOM, Falcon (multi-query,
multi-head, new decoder architecture, ALiBi), MPT, GPT-Neo. Tiny random models,
CPU, float32, against the same weights under HF's own attention."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers

import fastxf
from fastxf.models import adapters
from fastxf.models import attention as fx_attention
from fastxf.models.adapters import _common

# fp32 on both sides: only summation order differs (tiled online softmax, ALiBi
# added as -slope * |p - j| instead of slope * j), ~1e-7 relative.
REL_TOL = 1e-4

CASES = {
    "bloom": ("bloom", "BloomForCausalLM", dict(hidden_size=64, n_layer=2, n_head=4, vocab_size=128)),
    # 6 heads: ALiBi slopes for a head count that is not a power of two.
    "bloom-6heads": ("bloom", "BloomForCausalLM", dict(hidden_size=96, n_layer=2, n_head=6, vocab_size=128)),
    "falcon-mqa": ("falcon", "FalconForCausalLM",
                   dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=128)),
    "falcon-mha": ("falcon", "FalconForCausalLM",
                   dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=128,
                        multi_query=False, parallel_attn=False)),
    "falcon-new-arch": ("falcon", "FalconForCausalLM",
                        dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=128,
                             new_decoder_architecture=True, num_kv_heads=2)),
    "falcon-alibi": ("falcon", "FalconForCausalLM",
                     dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=128, alibi=True,
                          multi_query=False, parallel_attn=False, bias=True)),
    "mpt": ("mpt", "MptForCausalLM", dict(d_model=64, n_heads=4, n_layers=2, vocab_size=128)),
    "mpt-6heads-clip": ("mpt", "MptForCausalLM",
                        dict(d_model=96, n_heads=6, n_layers=2, vocab_size=128, attn_config={"clip_qkv": 0.5})),
    "gpt_neo": ("gpt_neo", "GPTNeoForCausalLM",
                dict(hidden_size=64, num_layers=2, num_heads=4, vocab_size=128, max_position_embeddings=128,
                     attention_types=[[["global", "local"], 1]], window_size=4, bos_token_id=1, eos_token_id=2)),
    "xglm": ("xglm", "XGLMForCausalLM",
             dict(d_model=64, num_layers=2, attention_heads=4, ffn_dim=128, vocab_size=128, max_position_embeddings=64,
                  pad_token_id=0, bos_token_id=1, eos_token_id=2)),
}


def build(case: str, attn: str = "eager"):
    model_type, cls, kwargs = CASES[case]
    cfg = transformers.AutoConfig.for_model(model_type, **copy.deepcopy(kwargs))
    cfg._attn_implementation = attn
    torch.manual_seed(0)
    model = getattr(transformers, cls)(cfg).eval()
    with torch.no_grad():  # tiny random init is close to uniform attention: sharpen it
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(3.0)
    return model


def rel_err(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12)).item()


def batch(padding: str):
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(4, 128, (3, 11), generator=gen)
    mask = torch.ones_like(ids)
    if padding == "left":
        mask[0, :4], mask[1, :1] = 0, 0
    else:
        mask[0, 7:], mask[1, 10:] = 0, 0
    return ids, mask


def fallbacks():
    return {k: v for k, v in fx_attention.CALLS.items() if k.startswith("fallback:")}


def n_layers(model):
    return model.config.num_hidden_layers


def pair(case, attn="eager"):
    model = build(case, attn)
    reference = copy.deepcopy(model)
    fastxf.optimize(model)
    return model, reference


@pytest.mark.parametrize("case", list(CASES))
def test_forward_generate_revert(case):
    model, reference = pair(case)
    report = fastxf.explain(model)
    assert report["attention"]["status"] == "rewritten", report["attention"]
    assert report["attention"]["attention_modules"] == n_layers(model)
    assert not report["norms"]["kept"], report["norms"]["kept"]

    for padding in ("left", "right"):
        ids, mask = batch(padding)
        calls, fb = fx_attention.CALLS["fastxf"], fallbacks()
        with torch.no_grad():
            got = model(input_ids=ids, attention_mask=mask).logits
            want = reference(input_ids=ids, attention_mask=mask).logits
        assert fx_attention.CALLS["fastxf"] == calls + n_layers(model), "the kernel did not run in every layer"
        assert fallbacks() == fb, fallbacks()
        valid = mask.bool()  # outputs at padded positions are not defined
        assert rel_err(got[valid], want[valid]) < REL_TOL, padding

    ids, mask = batch("left")  # generate wants left padding
    common = dict(input_ids=ids, attention_mask=mask, max_new_tokens=5, min_new_tokens=5, pad_token_id=0)
    fb = fallbacks()
    calls = fx_attention.CALLS["fastxf"]
    assert torch.equal(model.generate(do_sample=False, **common), reference.generate(do_sample=False, **common))
    assert torch.equal(
        model.generate(num_beams=3, do_sample=False, **common), reference.generate(num_beams=3, do_sample=False, **common)
    )
    torch.manual_seed(5)
    a = model.generate(do_sample=True, top_k=20, **common)
    torch.manual_seed(5)
    b = reference.generate(do_sample=True, top_k=20, **common)
    assert torch.equal(a, b)
    assert fx_attention.CALLS["fastxf"] > calls and fallbacks() == fb, fallbacks()

    fastxf.revert(model)
    for m in model.modules():
        assert "forward" not in m.__dict__ and "_fastxf_extra" not in m.__dict__
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, reference(input_ids=ids, attention_mask=mask).logits)


@pytest.mark.parametrize("case", ["falcon-alibi", "falcon-mqa"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_falcon_follows_the_configured_implementation(case, attn):
    # transformers 5.x: Falcon's eager path adds the ALiBi bias twice (once in the
    # mask, once itself), sdpa once. The adapter reproduces whichever the model
    # runs. sdpa also hands over bool masks instead of additive ones.
    model, reference = pair(case, attn)
    ids, mask = batch("left")
    with torch.no_grad():
        got = model(input_ids=ids, attention_mask=mask).logits
        want = reference(input_ids=ids, attention_mask=mask).logits
    valid = mask.bool()
    assert rel_err(got[valid], want[valid]) < REL_TOL


@pytest.mark.parametrize("case", ["bloom", "falcon-mqa", "mpt", "gpt_neo", "xglm"])
def test_output_attentions_falls_back(case):
    model, reference = pair(case)
    ids, mask = batch("left")
    fb = fx_attention.CALLS["fallback:output_attentions"]
    with torch.no_grad():
        got = model(input_ids=ids, attention_mask=mask, output_attentions=True)
        want = reference(input_ids=ids, attention_mask=mask, output_attentions=True)
    assert fx_attention.CALLS["fallback:output_attentions"] == fb + n_layers(model)
    assert len(got.attentions) == n_layers(model) and all(a is not None for a in got.attentions)
    # HF computed the weights; only the fastxf norms before them differ (fp32 rounding).
    for a, b in zip(got.attentions, want.attentions):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    valid = mask.bool()
    assert rel_err(got.logits[valid], want.logits[valid]) < REL_TOL


def test_unknown_input_and_training_dropout_fall_back():
    model, reference = pair("gpt_neo")
    attn = model.transformer.h[0].attn.attention
    x = torch.randn(2, 5, 64)
    fb = fx_attention.CALLS["fallback:extra attention input 'mystery'"]
    with torch.no_grad():
        got = attn(x, mystery=torch.ones(1))[0]
        want = reference.transformer.h[0].attn.attention(x)[0]
    assert fx_attention.CALLS["fallback:extra attention input 'mystery'"] == fb + 1
    assert torch.equal(got, want)

    model.train()
    attn.attn_dropout.p = 0.1
    fb = fx_attention.CALLS["fallback:dropout in training"]
    attn(x)
    assert fx_attention.CALLS["fallback:dropout in training"] == fb + 1


def test_custom_mask_falls_back_bloom():
    # A 4-D mask with a hole inside the causal pattern: not key padding + causal.
    model, reference = pair("bloom")
    attn, ref_attn = model.transformer.h[0].self_attention, reference.transformer.h[0].self_attention
    x = torch.randn(2, 6, 64)
    alibi = torch.zeros(2 * 4, 1, 6)
    dense = torch.full((2, 1, 6, 6), torch.finfo(torch.float32).min).triu(1)
    dense[1, 0, 4, 2] = torch.finfo(torch.float32).min
    calls = fx_attention.CALLS["fastxf"]
    with torch.no_grad():
        got = attn(x, x, alibi, dense)[0]
        want = ref_attn(x, x, alibi, dense)[0]
    assert fx_attention.CALLS["fastxf"] == calls
    assert torch.equal(got, want)


MIN = torch.finfo(torch.float32).min


def additive(vis):
    return torch.where(vis, 0.0, MIN)


def test_analyse_masks():
    i, j = torch.arange(5)[:, None], torch.arange(7)[None, :]
    pad = torch.tensor([[False, False, True, True, True, True, True], [True] * 7])
    causal = (j <= i + 2)[None] & pad[:, None, :]  # bottom-right: 5 queries, 7 keys
    c = _common._analyse(additive(causal)[:, None], _common.visible_from_additive)
    assert c.causal and c.q_offset is None and torch.equal(c.key_padding, pad) and c.contiguous

    static = (j <= i + 1)[None] & torch.ones(2, 1, 7, dtype=torch.bool)  # offset 1: last key unfilled
    c = _common._analyse(additive(static)[:, None], _common.visible_from_additive)
    assert c.causal and int(c.q_offset) == 1

    holed = pad.clone()
    holed[1, 3] = False
    c = _common._analyse(additive((j <= i + 2)[None] & holed[:, None, :])[:, None], _common.visible_from_additive)
    assert not c.contiguous

    bidir = pad[:, None, :].expand(2, 5, 7)
    c = _common._analyse(additive(bidir)[:, None], _common.visible_from_additive)
    assert not c.causal and torch.equal(c.key_padding, pad)

    custom = causal.clone()
    custom[1, 4, 0] = False
    assert isinstance(_common._analyse(additive(custom)[:, None], _common.visible_from_additive), str)
    biased = additive(causal)[:, None].clone()
    biased[0, 0, 4, 3] = 0.5  # a bias value, not a mask
    assert "bias" in _common._analyse(biased, _common.visible_from_additive)
    assert isinstance(_common._analyse(additive(causal)[:, None].expand(2, 4, 5, 7), _common.visible_from_additive), str)


def test_alibi_slopes_match_hf():
    from transformers.models.bloom import modeling_bloom

    for heads in (4, 6, 12):
        want = modeling_bloom.build_alibi_tensor(torch.ones(1, 3, dtype=torch.long), heads, torch.float32)
        got = _common.slopes_from_build_alibi(modeling_bloom.build_alibi_tensor, heads, "cpu")
        assert torch.equal(want.view(heads, 3)[:, 1], got)


def test_accelerate_style_instance_forward_is_left_alone():
    model = build("mpt")
    attn = model.transformer.blocks[0].attn
    sentinel = attn.forward
    attn.forward = sentinel  # like accelerate's hooks: an instance-level forward already there
    fastxf.optimize(model)
    report = fastxf.explain(model)["attention"]
    assert report["attention_modules"] == 1
    assert any("instance-level forward" in k["reason"] for k in report["kept_modules"])
    assert attn.__dict__["forward"] is sentinel
    fastxf.revert(model)
    assert attn.__dict__["forward"] is sentinel


def test_torch_compile_breaks_only_at_the_mask_analysis():
    # The mask analysis syncs with the host (its verdict picks the kernel or HF's
    # path), so under torch.compile it runs eagerly (torch.compiler.disable): the
    # graph breaks only where precheck calls it, never inside it, and the
    # compiled model computes what the eager one does.
    model, _ = pair("bloom")
    ids, mask = batch("left")

    def logits(ids, mask):
        return model(input_ids=ids, attention_mask=mask).logits

    torch._dynamo.reset()
    try:
        with torch.no_grad():
            explained = torch._dynamo.explain(logits)(ids, mask)
            where = {(b.user_stack[-1].name, b.user_stack[-1].filename) for b in explained.break_reasons}
            assert where == {("precheck", _common.__file__)}, [str(b.reason)[:200] for b in explained.break_reasons]
            torch._dynamo.reset()
            got = torch.compile(logits, backend="eager")(ids, mask)
            want = logits(ids, mask)
    finally:
        torch._dynamo.reset()
    assert torch.equal(got, want)


def test_registry_is_exact_class():
    assert adapters.family_of(torch.nn.Linear(2, 2)) is None


def test_olmo_norm_eps_found_by_probing():
    cfg = transformers.AutoConfig.for_model(
        "olmo", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=128, max_position_embeddings=128, pad_token_id=0,
    )
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    model = transformers.OlmoForCausalLM(cfg).eval()
    reference = copy.deepcopy(model)
    fastxf.optimize(model)
    report = fastxf.explain(model)
    assert not report["norms"]["kept"], report["norms"]["kept"]
    replaced = report["norms"]["replaced"]
    assert len(replaced) == 2 * 2 + 1 and all(r["eps_probed"] == 1e-5 and r["kind"] == "layer_norm" for r in replaced)
    ids, mask = batch("left")
    with torch.no_grad():
        got = model(input_ids=ids, attention_mask=mask).logits
        want = reference(input_ids=ids, attention_mask=mask).logits
    assert rel_err(got[mask.bool()], want[mask.bool()]) < REL_TOL
    fastxf.revert(model)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, want)


class LiteralEpsNorm(torch.nn.Module):
    """Parameter-free norm with its eps in the forward, as OLMo v1 does."""

    def __init__(self, size, eps, rms=False):
        super().__init__()
        self.normalized_shape, self.literal, self.rms = (size,), eps, rms

    def forward(self, x):
        if self.rms:
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.literal)
        return torch.nn.functional.layer_norm(x, self.normalized_shape, None, None, eps=self.literal)


class WeightedLiteralEpsRMSNorm(torch.nn.Module):
    """Llama-style RMSNorm with its eps as a literal (and a weight)."""

    def __init__(self, size):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(size))

    def forward(self, x):
        h = x.float()
        return self.weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)).to(x.dtype)


@pytest.mark.parametrize("eps,rms,found", [(1e-6, True, 1e-6), (1e-12, False, 1e-12), (3e-5, False, None)])
def test_norm_eps_probing(eps, rms, found):
    from fastxf.models import norms

    rep, why = norms.replacement_for(LiteralEpsNorm(48, eps, rms))
    if found is None:  # 3e-5 is no candidate: kept, and the reason says what was tried
        assert rep is None and "no candidate eps" in why, why
    else:
        assert rep is not None and rep.fastxf_eps == found and rep.fastxf_kind == ("rms_norm" if rms else "layer_norm")


_ENC = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, vocab_size=128,
            max_position_embeddings=64)
ENCODERS = {
    "rembert": ("RemBertModel", dict(_ENC, input_embedding_size=32, output_embedding_size=32)),
    "megatron-bert": ("MegatronBertModel", _ENC),
    "tapas": ("TapasModel", _ENC),
    "visual_bert": ("VisualBertModel", dict(_ENC, visual_embedding_dim=16)),
    "vilt": ("ViltModel", dict(_ENC, image_size=32, patch_size=8, max_image_length=-1)),
    "roformer": ("RoFormerModel", dict(_ENC, embedding_size=64, rotary_value=True)),
}


@pytest.mark.parametrize("model_type", list(ENCODERS))
def test_bert_style_encoders(model_type):  # and RoFormer (rotary, here on values too)
    cls, kwargs = ENCODERS[model_type]
    cfg = transformers.AutoConfig.for_model(model_type, **kwargs)
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    model = getattr(transformers, cls)(cfg).eval()
    reference = copy.deepcopy(model)
    fastxf.optimize(model)
    assert fastxf.explain(model)["attention"]["attention_modules"] == 2
    ids, mask = batch("right")
    inputs = dict(input_ids=ids, attention_mask=mask)
    valid = mask.bool()
    if model_type == "vilt":  # text tokens, then image patches (all real)
        inputs.update(pixel_values=torch.randn(3, 3, 32, 32), pixel_mask=torch.ones(3, 32, 32, dtype=torch.long))
    calls, fb = fx_attention.CALLS["fastxf"], fallbacks()
    with torch.no_grad():
        torch.manual_seed(3)  # ViLT samples image patches
        got = model(**inputs).last_hidden_state
        torch.manual_seed(3)
        want = reference(**inputs).last_hidden_state
        valid = torch.cat([valid, torch.ones(3, got.shape[1] - valid.shape[1], dtype=torch.bool)], 1)
        assert fx_attention.CALLS["fastxf"] == calls + 2 and fallbacks() == fb, fallbacks()
        assert rel_err(got[valid], want[valid]) < REL_TOL
        n = sum(fallbacks().values())  # output_attentions arrives by keyword or by position, per class
        torch.manual_seed(3)
        out = model(**inputs, output_attentions=True)
        assert sum(fallbacks().values()) == n + 2 and out.attentions[0] is not None
    fastxf.revert(model)
    with torch.no_grad():
        torch.manual_seed(3)
        assert torch.equal(model(**inputs).last_hidden_state, want)


@pytest.mark.parametrize("sub", ["semantic", "fine"])
def test_bark(sub):
    # Bark's sub-models: causal (semantic, also coarse) and bidirectional (fine).
    from transformers.models.bark import configuration_bark, modeling_bark

    kwargs = dict(hidden_size=64, num_layers=2, num_heads=4, input_vocab_size=128, output_vocab_size=128, block_size=64)
    cfg_cls, cls = {
        "semantic": (configuration_bark.BarkSemanticConfig, modeling_bark.BarkCausalModel),
        "fine": (configuration_bark.BarkFineConfig, modeling_bark.BarkFineModel),
    }[sub]
    cfg = cfg_cls(**kwargs)
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    model = cls(cfg).eval()
    reference = copy.deepcopy(model)
    fastxf.optimize(model)
    for padding in ("left", "right"):
        ids, mask = batch(padding)
        inputs = dict(input_ids=ids, attention_mask=mask)
        if sub == "fine":
            codes = torch.randint(4, 128, (*ids.shape, cfg.n_codes_total), generator=torch.Generator().manual_seed(2))
            inputs = dict(codebook_idx=2, input_ids=codes, attention_mask=mask)
        calls, fb = fx_attention.CALLS["fastxf"], fallbacks()
        with torch.no_grad():
            got, want = model(**inputs).logits, reference(**inputs).logits
        assert fx_attention.CALLS["fastxf"] == calls + 2 and fallbacks() == fb, fallbacks()
        assert rel_err(got[mask.bool()], want[mask.bool()]) < REL_TOL
    if sub == "semantic":
        ids, mask = batch("left")
        common = dict(input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0)
        assert torch.equal(model.generate(**common), reference.generate(**common))
    fastxf.revert(model)
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, want)


def test_alibi_modules_stay_on_hf_where_the_kernel_lacks_alibi(monkeypatch):
    # As on CUDA today: the probe's verdict is cached per (device, dtype); fake a refusal.
    monkeypatch.setitem(_common._ALIBI_OK, ("cpu", torch.float32), "no ALiBi here (simulated)")
    for case in ("bloom", "mpt", "falcon-alibi"):
        model = build(case)
        fastxf.optimize(model)
        report = fastxf.explain(model)["attention"]
        assert report["status"] == "kept" and "simulated" in report["reason"], report
    model = build("falcon-mqa")  # rotary Falcon does not need ALiBi
    fastxf.optimize(model)
    assert fastxf.explain(model)["attention"]["status"] == "rewritten"


def test_deepcopy_of_an_optimized_model_runs_its_own_modules():
    model, reference = pair("mpt")
    twin = copy.deepcopy(model)
    attn = twin.transformer.blocks[0].attn
    assert attn.forward.__self__ is attn
    ids, mask = batch("left")
    calls = fx_attention.CALLS["fastxf"]
    with torch.no_grad():
        got = twin(input_ids=ids, attention_mask=mask).logits
        want = reference(input_ids=ids, attention_mask=mask).logits
    assert fx_attention.CALLS["fastxf"] == calls + 2
    assert rel_err(got[mask.bool()], want[mask.bool()]) < REL_TOL
    fastxf.revert(twin)  # reverts the twin only
    assert "forward" not in attn.__dict__ and not twin.transformer.blocks[0]._forward_pre_hooks
    assert "forward" in model.transformer.blocks[0].attn.__dict__ and model.transformer.blocks[0]._forward_pre_hooks
    fastxf.revert(model)
    assert not model.transformer.blocks[0]._forward_pre_hooks


def test_fsmt_encoder_decoder():
    cfg = transformers.AutoConfig.for_model(
        "fsmt", langs=["en", "de"], src_vocab_size=128, tgt_vocab_size=128, d_model=64, encoder_layers=2,
        decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128,
        decoder_ffn_dim=128, max_position_embeddings=64, pad_token_id=1, bos_token_id=0, eos_token_id=2,
        decoder_start_token_id=2,
    )
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    model = transformers.FSMTForConditionalGeneration(cfg).eval()
    reference = copy.deepcopy(model)
    fastxf.optimize(model)
    assert fastxf.explain(model)["attention"]["attention_modules"] == 6  # encoder self, decoder self + cross
    ids, mask = batch("right")
    dec = torch.randint(4, 128, (3, 6), generator=torch.Generator().manual_seed(3))
    for use_cache in (False, True):  # without a cache FSMT's decoder gets its future mask
        calls, fb = fx_attention.CALLS["fastxf"], fallbacks()
        with torch.no_grad():
            got = model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec, use_cache=use_cache).logits
            want = reference(input_ids=ids, attention_mask=mask, decoder_input_ids=dec, use_cache=use_cache).logits
        assert fx_attention.CALLS["fastxf"] == calls + 6 and fallbacks() == fb, fallbacks()
        assert rel_err(got, want) < REL_TOL
    common = dict(input_ids=ids, attention_mask=mask, max_new_tokens=5, min_new_tokens=5)
    assert torch.equal(model.generate(num_beams=3, **common), reference.generate(num_beams=3, **common))
    torch.manual_seed(5)
    a = model.generate(do_sample=True, top_k=20, **common)
    torch.manual_seed(5)
    assert torch.equal(a, reference.generate(do_sample=True, top_k=20, **common))
    assert fallbacks() == fb


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_norm_eps_probing_with_weight(dtype):
    from fastxf.models import norms

    module = WeightedLiteralEpsRMSNorm(40).to(dtype)
    rep, why = norms.replacement_for(module)
    assert rep is not None and rep.fastxf_eps == 1e-6 and rep.fastxf_kind == "rms_norm", why
    assert rep.weight is module.weight  # borrowed, not copied
