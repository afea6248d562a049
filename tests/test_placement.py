"""Pipeline placement (fastxf.placement): explicit and planned placements over
repeated CPU devices, micro-batched execution, generate with caches, the planner
and validation. On CPU every stage runs on the same device, so these tests check
the schedule, the per-chunk cache handling and the bookkeeping; the CUDA test at
the end runs the stream/event path on one GPU.

Tolerance: fp32 on CPU. Unsplit placement runs the very same kernels in the same
order, so it must match exactly; micro-batching changes the matmul row count,
which may change the BLAS blocking, so logits match to 1e-5 (observed ~1e-7)
and greedy tokens must be identical."""

import pytest
import torch
from transformers import AutoConfig

from fastxf.placement import discover, place_model, placement_of, plan_placement, remove_placement
from tests import _tiny_models
from tests._tiny_models import DECODER, GPT2, VOCAB, one_thread  # noqa: F401 (one_thread: autouse fixture)

SMALL = {
    "llama": dict(DECODER, max_position_embeddings=128),
    "qwen2": dict(DECODER, max_position_embeddings=128),
    # Mistral with a sliding window shorter than prompt + new tokens: sliding cache layers.
    "mistral": dict(DECODER, max_position_embeddings=128, sliding_window=4),
    "gpt2": dict(GPT2, n_positions=128),
}
_MODELS = {}


def tiny(family):
    if family not in _MODELS:
        _MODELS[family] = _tiny_models.build(family, SMALL[family])
    m = _MODELS[family]
    remove_placement(m)
    return m


def batch(b=5, t=7, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (b, t), generator=g)
    mask = torch.ones_like(ids)
    # Left padding of different lengths (generate's layout for batched prompts).
    for i in range(b):
        pad = (i * 2) % (t - 1)
        mask[i, :pad] = 0
        ids[i, :pad] = 0
    return ids, mask


def greedy(m, ids, mask, **kw):
    with torch.no_grad():
        return m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=False,
                          pad_token_id=0, eos_token_id=None, **kw)


def logits(m, ids, mask):
    with torch.no_grad():
        return m(input_ids=ids, attention_mask=mask).logits


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral", "gpt2"])
@pytest.mark.parametrize("devices,placement", [
    (["cpu", "cpu"], None),
    (["cpu", "cpu"], [4, 1]),
    (["cpu"] * 3, [1, 3, 1]),
    (["cpu"] * 5, [1, 1, 1, 1, 1]),
])
@pytest.mark.parametrize("mb", [1, 2, 3])
def test_matches_unplaced(family, devices, placement, mb):
    m = tiny(family)
    ids, mask = batch()
    ref, ref_tokens = logits(m, ids, mask), greedy(m, ids, mask)
    place_model(m, devices, placement=placement, micro_batches=mb)
    try:
        out = logits(m, ids, mask)
        if mb == 1:
            assert torch.equal(out, ref)
        else:
            torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
        assert torch.equal(greedy(m, ids, mask), ref_tokens)
    finally:
        remove_placement(m)


@pytest.mark.parametrize("b,mb", [(5, 2), (5, 3), (2, 3), (1, 2), (4, 4)])
def test_uneven_micro_batches_and_static_cache(b, mb):
    m = tiny("llama")
    ids, mask = batch(b=b, t=6, seed=b)
    ref_tokens = greedy(m, ids, mask)
    ref_static = greedy(m, ids, mask, cache_implementation="static")
    assert torch.equal(ref_static, ref_tokens)
    place_model(m, ["cpu"] * 3, placement=[2, 2, 1], micro_batches=mb)
    try:
        assert torch.equal(greedy(m, ids, mask), ref_tokens)
        assert torch.equal(greedy(m, ids, mask, cache_implementation="static"), ref_tokens)
    finally:
        remove_placement(m)


def test_wavefront_order_and_chunks():
    """Batch 5 in 3 chunks (2, 2, 1) over stages [1, 3, 1]: stage s must run chunk c
    at step t = s + c, in the order of the GPipe wavefront."""
    m = tiny("llama")
    seen = []
    hooks = [layer.register_forward_pre_hook(
        lambda mod, args, kw, i=i: seen.append((i, (args[0] if args else kw["hidden_states"]).shape[0])),
        with_kwargs=True) for i, layer in enumerate(m.model.layers)]
    try:
        place_model(m, ["cpu"] * 3, placement=[1, 3, 1], micro_batches=3)
        ids, mask = batch()
        logits(m, ids, mask)
    finally:
        for h in hooks:
            h.remove()
        remove_placement(m)
    stage = {0: [0], 1: [1, 2, 3], 2: [4]}
    sizes = [2, 2, 1]
    expected = [(j, 5) for j in range(5)]  # the model's own calls, recorded; the last one runs the pipeline
    for t in range(3 + 3 - 1):
        for s in range(3):
            c = t - s
            if 0 <= c < 3:
                expected += [(j, sizes[c]) for j in stage[s]]
    assert seen == expected


def test_cache_is_full_batch_and_on_layer_device():
    m = tiny("llama")
    ids, mask = batch()
    place_model(m, ["cpu", "cpu"], placement=[2, 3], micro_batches=2)
    try:
        with torch.no_grad():
            out = m(input_ids=ids, attention_mask=mask, use_cache=True)
        cache = getattr(out, "past_key_values", None) or getattr(out, "cache", None)
        assert len(cache.layers) == 5
        for layer in cache.layers:
            assert layer.keys.shape[0] == ids.shape[0] and layer.keys.shape[-2] == ids.shape[1]
        assert cache.get_seq_length() == ids.shape[1]
    finally:
        remove_placement(m)


def test_state_dict_unchanged_and_remove_restores():
    for family in ("llama", "gpt2"):
        m = tiny(family)
        before = {k: v.clone() for k, v in m.state_dict().items()}
        ids, mask = batch()
        ref = logits(m, ids, mask)
        place_model(m, ["cpu"] * 3, placement=[1, 2, 2], micro_batches=2)
        assert placement_of(m) == (["cpu"] * 3, [1, 2, 2], 2)
        sd = m.state_dict()
        assert list(sd) == list(before)
        assert all(torch.equal(sd[k], before[k]) for k in before)
        if family == "gpt2":
            assert m.lm_head.weight is m.transformer.wte.weight  # still tied
        remove_placement(m)
        assert placement_of(m) is None
        parts = discover(m)
        for layer in parts.layers:
            assert "forward" not in layer.__dict__
            assert not layer._forward_pre_hooks
        assert not m._forward_pre_hooks
        assert torch.equal(logits(m, ids, mask), ref)


@pytest.mark.parametrize("devices,placement,kw,match", [
    (["cpu", "cpu"], [2, 2], {}, "sum to 4 but the model has 5"),
    (["cpu", "cpu"], [0, 5], {}, "at least one layer"),
    (["cpu", "cpu"], [-1, 6], {}, "at least one layer"),
    (["cpu"] * 6, [1] * 6, {}, "6 stages but the model has only 5"),
    (["cpu", "cpu"], [5], {}, "1 layer counts .* for 2 devices"),
    (["cpu", "cuda:7"], [2, 3], {}, "cuda:7"),
    (["cpu", "not-a-device"], [2, 3], {}, "not-a-device"),
    (["cpu", "cpu"], [2, 3], {"micro_batches": 0}, "micro_batches"),
    ("cpu", None, {}, "list of device strings"),
    ([], None, {}, "empty"),
])
def test_bad_placements(devices, placement, kw, match):
    m = tiny("llama")
    with pytest.raises(ValueError, match=match):
        place_model(m, devices, placement=placement, **kw)
    assert placement_of(m) is None


def test_per_layer_outputs_rejected_with_micro_batches():
    m = tiny("llama")
    ids, mask = batch()
    place_model(m, ["cpu", "cpu"], placement=[2, 3], micro_batches=2)
    try:
        with pytest.raises(ValueError, match="output_hidden_states=True is not supported with micro_batches=2"):
            with torch.no_grad():
                m(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    finally:
        remove_placement(m)
    place_model(m, ["cpu", "cpu"], placement=[2, 3], micro_batches=1)
    try:
        with torch.no_grad():
            out = m(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        assert len(out.hidden_states) == 6
    finally:
        remove_placement(m)


def test_planner_fits_and_balances():
    m = tiny("llama")
    plan = plan_placement(m, ["cpu", "cpu"], max_memory=["1GiB", "1GiB"], batch_size=2, max_seq_len=64)
    assert sorted(plan.placement) == [2, 3]
    text = str(plan)
    for word in ("stage", "weights", "kv cache", "activations", "budget", "embeddings", "head"):
        assert word in text
    # KV cache: 2 (k, v) x batch 2 x 2 kv heads x head_dim 8 x 64 tokens x 4 bytes per layer.
    per_layer_kv = 2 * 2 * 2 * 8 * 64 * 4
    assert [s.kv_bytes for s in plan.stages] == [n * per_layer_kv for n in plan.placement]
    three = plan_placement(m, ["cpu"] * 3, max_memory={"cpu": "3GiB"})  # shared by three stages
    assert sum(three.placement) == 5 and max(three.placement) == 2


def test_planner_uneven_budgets_and_no_fit():
    m = tiny("llama")
    big = plan_placement(m, ["cpu", "cpu"], max_memory=["1GiB", "1GiB"], batch_size=2, max_seq_len=64)
    s0 = big.stages[0]
    fixed0 = s0.weight_bytes - sum(
        sum(p.numel() * 4 for p in m.model.layers[i].parameters()) for i in range(s0.start, s0.end))
    layer_bytes = sum(p.numel() * 4 for p in m.model.layers[0].parameters()) + s0.kv_bytes // s0.num_layers
    # Room for exactly one layer on the first device: the rest must go to the second.
    budget0 = fixed0 + layer_bytes + s0.activation_bytes + layer_bytes // 2
    plan = plan_placement(m, ["cpu", "cpu"], max_memory=[budget0, "1GiB"], batch_size=2, max_seq_len=64)
    assert plan.placement == [1, 4]
    assert all(s.total_bytes <= s.budget_bytes for s in plan.stages)
    # place_model without a placement uses the planner (at its default batch 1 x 2048 tokens).
    budgets = ["3.4MiB", "1GiB"]  # one layer + 3 MiB of activations fits, two do not
    place_model(m, ["cpu", "cpu"], max_memory=budgets)
    try:
        assert placement_of(m)[1] == plan_placement(m, ["cpu", "cpu"], max_memory=budgets).placement == [1, 4]
    finally:
        remove_placement(m)
    with pytest.raises(ValueError, match=r"does not fit .* short by"):
        plan_placement(m, ["cpu", "cpu"], max_memory=["100KiB", "100KiB"], batch_size=2, max_seq_len=64)
    with pytest.raises(ValueError, match=r"stage 0 .* needs at least"):
        plan_placement(m, ["cpu", "cpu"], max_memory=[fixed0, "1GiB"], batch_size=2, max_seq_len=64)
    with pytest.raises(ValueError, match="max_memory"):
        plan_placement(m, ["cpu", "cpu"], max_memory=["lots", "1GiB"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (not fastxf's kernels)")
@pytest.mark.parametrize("mb", [1, 2, 3])
def test_cuda_streams_match_unplaced(mb):
    """Stages on cuda:0 with one stream each: the event/stream path of the pipeline."""
    m = tiny("llama").to("cuda")
    ids, mask = batch(b=7, t=9)
    ids, mask = ids.cuda(), mask.cuda()
    ref, ref_tokens = logits(m, ids, mask), greedy(m, ids, mask)
    place_model(m, ["cuda:0", "cuda", "cuda:0"], placement=[1, 2, 2], micro_batches=mb)
    try:
        for _ in range(3):  # repeated runs reuse freed blocks across streams
            torch.testing.assert_close(logits(m, ids, mask), ref, atol=1e-4, rtol=1e-4)  # TF32-free fp32 matmuls may reorder
            assert torch.equal(greedy(m, ids, mask), ref_tokens)
        cache = m(input_ids=ids, attention_mask=mask, use_cache=True)
        cache = getattr(cache, "past_key_values", None) or getattr(cache, "cache", None)
        assert all(layer.keys.is_cuda and layer.keys.shape[0] == 7 for layer in cache.layers)
    finally:
        remove_placement(m)
        m.to("cpu")


class _PerRow:
    """A per-call object of a future feature: one row of `values` per sequence."""

    def __init__(self, values, note="x"):
        self.values = values
        self.note = note


def _inject(model, obj):
    """Hands `obj` to every decoder layer as the keyword `per_row` (HF layers pass
    unknown keywords on to attention, which ignores them on the eager path), and
    records the batch size each attention call sees it with."""
    seen, hooks = [], []
    parts = discover(model)
    state = model._fastxf_placement

    def add(mod, args, kwargs):
        if not state.in_runner:  # the model's own call, not the pipeline running a chunk
            return args, dict(kwargs, per_row=obj)

    for layer in parts.layers:
        hooks.append(layer.register_forward_pre_hook(add, with_kwargs=True, prepend=True))
        hooks.append(layer.self_attn.register_forward_pre_hook(
            lambda mod, args, kwargs: seen.append((kwargs["hidden_states"].shape[0], kwargs["per_row"])),
            with_kwargs=True))
    return seen, hooks


def test_registered_per_call_objects_are_split_and_others_refused():
    """The runtime walks a layer's inputs as a pytree: an object registered as a
    pytree node reaches each micro-batch with its own rows; one that is not, but holds
    a tensor that would have to be split, raises instead of arriving whole."""
    import torch.utils._pytree as pytree

    m = tiny("llama")
    ids, mask = batch(b=5)
    place_model(m, ["cpu", "cpu"], placement=[2, 3], micro_batches=3)
    try:
        seen, hooks = _inject(m, _PerRow(torch.arange(5)[:, None].repeat(1, 3)))
        try:
            with pytest.raises(ValueError, match="_PerRow whose tensor 'values' .* register it as a pytree node"):
                logits(m, ids, mask)
            pytree.register_pytree_node(_PerRow, lambda o: ([o.values], o.note),
                                        lambda children, note: _PerRow(children[0], note))
            try:
                seen.clear()
                logits(m, ids, mask)
            finally:
                pytree._deregister_pytree_node(_PerRow)
        finally:
            for h in hooks:
                h.remove()
        assert len(seen) == 5 * 3  # 5 layers x 3 chunks
        for rows, obj in seen:
            assert obj.values.shape == (rows, 3) and obj.note == "x"
        assert sorted({tuple(obj.values[:, 0].tolist()) for _, obj in seen}) == [(0, 1), (2, 3), (4,)]
    finally:
        remove_placement(m)


def test_discover_encoder_decoder():
    """BART: the decoder's layers are the placed stack; its layernorm_embedding runs before
    the layers, so it is no final norm (it stays with the embeddings on the first device)."""
    from transformers import AutoModelForSeq2SeqLM

    cfg = AutoConfig.for_model("bart", d_model=16, encoder_layers=1, decoder_layers=3, encoder_attention_heads=2,
                               decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, vocab_size=VOCAB)
    m = AutoModelForSeq2SeqLM.from_config(cfg)
    parts = discover(m)
    assert parts.layers_name == "model.decoder.layers" and parts.final_norm is None and parts.tied


def test_dense_fallback_refuses_a_per_sequence_mask_function_on_a_micro_batch():
    """A mask pattern the compact mask cannot describe falls back to HF's dense mask,
    built by its mask function; if that function reads per-sequence tensors of the whole
    batch (packed sequences), a micro-batch would get other rows' masks: it raises."""
    from transformers import masking_utils as mu

    from fastxf.models.attention import fastxf_mask

    seq_ids = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1], [0, 0, 0, 1]])
    fn = mu.and_masks(mu.causal_mask_function, mu.packed_sequence_mask_function(seq_ids))
    mask = fastxf_mask(batch_size=3, q_length=4, kv_length=4, mask_function=fn)
    assert mask.reason is not None  # not expressible: the dense fallback is used
    q = torch.zeros(3, 2, 4, 8)
    assert mask.dense_bool(like=q).shape == (3, 1, 4, 4)
    with pytest.raises(ValueError, match="3-row batch reads per-sequence tensors .* 2-row micro-batch"):
        mask.dense_bool(like=q[:2])
    def every_other_key(batch_idx, head_idx, q_idx, kv_idx):
        return kv_idx % 2 == 0

    plain = fastxf_mask(batch_size=3, q_length=4, kv_length=4,
                        mask_function=mu.and_masks(mu.causal_mask_function, every_other_key))
    assert plain.reason is not None
    assert plain.dense_bool(like=q[:2]).shape == (2, 1, 4, 4)  # nothing per-sequence: any batch
