"""fastxf.optimize on a module that wraps Hugging Face models (a classifier head
around an AutoModel, a bi-encoder of two models; SentenceTransformer is tested
in tests/test_sentence_transformers.py): attention and the padding-free path go
to the transformers models inside, norms to the whole module; outputs match,
the state dict is untouched, revert restores everything."""

from __future__ import annotations

import torch
import transformers
from torch import nn

import fastxf
from tests._tiny_models import DECODER, build, one_thread  # noqa: F401  (one_thread: autouse fixture)

BERT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, vocab_size=97)


def _bert():
    cfg = transformers.AutoConfig.for_model("bert", **BERT)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(1)
    return transformers.AutoModel.from_config(cfg).eval()


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = _bert()
        self.head = nn.Sequential(nn.LayerNorm(32), nn.Linear(32, 3))

    def forward(self, input_ids, attention_mask):
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.head(hidden[:, 0])


class BiEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.text = _bert()
        self.code = build("llama", DECODER).model  # the decoder stack alone (a transformers model too)

    def forward(self, ids_a, mask_a, ids_b, mask_b):
        a = self.text(input_ids=ids_a, attention_mask=mask_a).last_hidden_state[:, 0]
        b = self.code(input_ids=ids_b, attention_mask=mask_b).last_hidden_state[:, -1]
        return a, b


def _batch(B=3, S=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 97, (B, S), generator=g)
    mask = torch.ones(B, S, dtype=torch.long)
    mask[1, 7:] = 0  # right padding (BERT)
    mask[2, 4:] = 0
    return ids, mask


def _state(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def test_classifier_wrapper():
    model = Classifier().eval()
    ids, mask = _batch()
    with torch.no_grad():
        plain = model(ids, mask)
    before = _state(model)
    fastxf.optimize(model)
    report = fastxf.explain(model)
    assert report["model_type"] == "bert"
    assert report["attention"]["status"] == "rewritten" and report["attention"]["submodule"] == "encoder"
    assert report["unpad"]["status"] == "on"
    assert any(r["name"] == "head.0" for r in report["norms"]["replaced"])  # the wrapper's own norm too
    with torch.no_grad():
        fast = model(ids, mask)
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    fastxf.revert(model)
    assert model.encoder.config._attn_implementation == "sdpa"
    with torch.no_grad():
        assert torch.equal(model(ids, mask), plain)


def test_two_models_in_one_wrapper():
    model = BiEncoder().eval()
    ids_a, mask_a = _batch(seed=1)
    ids_b, mask_b = _batch(seed=2)
    mask_b = mask_b.flip(1)  # left padding for the decoder
    with torch.no_grad():
        plain = model(ids_a, mask_a, ids_b, mask_b)
    fastxf.optimize(model)
    att = fastxf.explain(model)["attention"]
    assert att["status"] == "rewritten"
    assert {n: a["status"] for n, a in att["submodules"].items()} == {"text": "rewritten", "code": "rewritten"}
    assert model.text.config._attn_implementation == model.code.config._attn_implementation != "sdpa"
    with torch.no_grad():
        fast = model(ids_a, mask_a, ids_b, mask_b)
    for f, p in zip(fast, plain):
        torch.testing.assert_close(f, p, rtol=1e-5, atol=1e-5)
    fastxf.revert(model)
    assert model.text.config._attn_implementation == "sdpa"
    assert model.code.config._attn_implementation == "eager"
    with torch.no_grad():
        for r, p in zip(model(ids_a, mask_a, ids_b, mask_b), plain):
            assert torch.equal(r, p)
