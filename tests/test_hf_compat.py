"""What transformers' own model test suites found when run against optimized
models (issue 14), each as a test of ours: gradient checkpointing through the
fused layer, norm attributes read live, replacements that look like the norms
they replace, training bookkeeping kwargs, copies of optimized models."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

from transformers.modeling_layers import GradientCheckpointingLayer

import fastxf
from fastxf.models import attention as fx_attention
from fastxf.models.norms import FastxfNorm
from fastxf.models.supported import ARCHS, build

LLAMA = next(a for a in ARCHS if a.model_type == "llama")
GPT2 = next(a for a in ARCHS if a.model_type == "gpt2")
GEMMA = next(a for a in ARCHS if a.model_type == "gemma")

# What HF's test utilities (and users) do: set eps on every module whose class
# name says it is a norm. Written here from the behaviour, not copied.
NORM_NAME_SUFFIXES = ("LayerNorm", "RMSNorm")
EPS_ATTRS = ("eps", "epsilon", "variance_epsilon")


def set_norm_eps_by_class_name(model, value):
    touched = 0
    for m in model.modules():
        if type(m).__name__.endswith(NORM_NAME_SUFFIXES):
            for attr in EPS_ATTRS:
                if hasattr(m, attr):
                    setattr(m, attr, value)
                    touched += 1
    return touched


def batch(vocab=128, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, vocab, (2, 9), generator=gen)
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[0, :2] = 0
    return ids, mask


def labels_for(ids, mask):
    # No loss read from padded positions: fully padded query rows differ by
    # design (fastxf gives zeros, eager an average) and nothing else depends on
    # them. The label at t is scored on the logits at t - 1, so drop labels whose
    # previous position is padding too.
    valid = mask.bool()
    previous = torch.nn.functional.pad(valid, (1, 0), value=True)[:, :-1]
    return ids.masked_fill(~(valid & previous), -100)


def fused_layers(model):
    return fastxf.explain(model)["fused_residual"]["fused"]


def enable_checkpointing(model):
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()


@pytest.mark.parametrize("arch", [LLAMA, GEMMA], ids=lambda a: a.model_type)
def test_gradient_checkpointing_checkpoints_every_layer_hf_would(arch):
    reference = build(arch)
    model = copy.deepcopy(reference)
    fastxf.optimize(model)
    assert fused_layers(model), "the test needs layers with the fused residual"
    grads = []
    for m in (reference, model):
        enable_checkpointing(m)
        m.train()
        layers = [x for x in m.modules() if isinstance(x, GradientCheckpointingLayer) and x.gradient_checkpointing]
        assert layers
        calls = []
        for layer in layers:  # count the calls HF's checkpoint function gets
            inner = layer._gradient_checkpointing_func
            layer._gradient_checkpointing_func = lambda *a, _f=inner, **k: calls.append(1) or _f(*a, **k)
        ids, mask = batch()
        out = m(input_ids=ids, attention_mask=mask, labels=labels_for(ids, mask))
        out.loss.backward()
        assert len(calls) == len(layers), f"{len(calls)} of {len(layers)} layers checkpointed"
        grads.append({n: p.grad for n, p in m.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, atol=1e-5, rtol=1e-4, msg=name)


def test_fused_layer_still_used_without_checkpointing_or_in_eval():
    model = build(LLAMA)
    fastxf.optimize(model)
    enable_checkpointing(model)
    model.eval()  # checkpointing only applies in training: the fused forward runs
    layer = next(m for m in model.modules() if "forward" in m.__dict__)
    seen = []
    norm = layer.post_attention_layernorm
    hook = norm.register_forward_hook(lambda mod, args, out: seen.append(len(args) + isinstance(out, tuple)))
    with torch.no_grad():
        model(*batch()[:1])
    hook.remove()
    assert seen and all(n == 3 for n in seen), "post-attention norm not called with the residual"


@pytest.mark.parametrize("arch", [LLAMA, GPT2, GEMMA], ids=lambda a: a.model_type)
def test_norm_eps_set_after_optimize_takes_effect(arch):
    reference = build(arch)
    model = copy.deepcopy(reference)
    fastxf.optimize(model)
    ids, mask = batch()
    valid = mask.bool()  # fully padded query rows differ by design (fastxf: zeros)
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask).logits
    # Found by class name on the optimized model exactly as on the original.
    assert set_norm_eps_by_class_name(model, 1.0) == set_norm_eps_by_class_name(reference, 1.0) > 0
    with torch.no_grad():
        want = reference(input_ids=ids, attention_mask=mask).logits
        got = model(input_ids=ids, attention_mask=mask).logits
    assert not torch.allclose(before[valid], want[valid], atol=1e-3), "eps 1.0 should change the outputs"
    torch.testing.assert_close(got[valid], want[valid], atol=1e-5, rtol=1e-4)
    fastxf.revert(model)  # the write lands on the user's module and survives revert
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, want)


def test_norm_attribute_writes_go_to_the_original_and_reads_are_live():
    model = build(LLAMA)
    original = model.model.norm
    fastxf.optimize(model)
    rep = model.model.norm
    assert isinstance(rep, FastxfNorm) and rep is not original
    x = torch.randn(3, 5, rep.weight.shape[0])
    for eps in (0.5, 2, 1e-6):  # an int too: HF configs sometimes carry one
        rep.variance_epsilon = eps
        assert original.variance_epsilon == eps and rep.variance_epsilon == eps
        torch.testing.assert_close(rep(x), original(x), atol=1e-6, rtol=1e-5)
    original.variance_epsilon = 0.25  # the other way round too
    assert rep.fastxf_eps == 0.25
    torch.testing.assert_close(rep(x), original(x), atol=1e-6, rtol=1e-5)
    assert "eps=0.25" in repr(rep)


@pytest.mark.parametrize("arch", [LLAMA, GPT2], ids=lambda a: a.model_type)
def test_replacement_looks_like_the_replaced_norm(arch):
    from transformers.pytorch_utils import ALL_LAYERNORM_LAYERS
    from transformers.trainer_pt_utils import get_parameter_names

    reference = build(arch)
    model = copy.deepcopy(reference)
    fastxf.optimize(model)
    replaced = fastxf.explain(model)["norms"]["replaced"]
    assert replaced
    for entry in replaced:
        rep = model.get_submodule(entry["name"])
        orig = reference.get_submodule(entry["name"])
        assert type(rep).__name__ == type(orig).__name__
        assert isinstance(rep, type(orig)) and isinstance(rep, FastxfNorm)
        assert "fastxf" in repr(rep)
    # The Trainer's no-weight-decay rule (isinstance over ALL_LAYERNORM_LAYERS,
    # then name patterns): GPT-2's ln_1 / ln_2 / ln_f are only caught by isinstance.
    assert get_parameter_names(model, ALL_LAYERNORM_LAYERS) == get_parameter_names(reference, ALL_LAYERNORM_LAYERS)
    # Same class object for every module of one class, and only norms changed class.
    kinds = {type(model.get_submodule(e["name"])) for e in replaced}
    assert len(kinds) == len({e["class"] for e in replaced})


def test_revert_keeps_train_mode_and_reassigned_parameters():
    model = build(LLAMA)
    fastxf.optimize(model)
    model.train()
    new_weight = nn.Parameter(torch.full_like(model.model.norm.weight, 0.5))
    model.model.norm.weight = new_weight
    fastxf.revert(model)
    assert not isinstance(model.model.norm, FastxfNorm)
    assert model.model.norm.training
    assert model.model.norm.weight is new_weight


def test_training_bookkeeping_kwargs_do_not_cost_the_kernel():
    reference = build(LLAMA)
    model = copy.deepcopy(reference)
    fastxf.optimize(model)
    ids, mask = batch()
    grads = []
    for m in (reference, model):
        m.train()
        before = dict(fx_attention.CALLS)
        labels = labels_for(ids, mask)
        out = m(input_ids=ids, attention_mask=mask, labels=labels, num_items_in_batch=torch.tensor(13))
        out.loss.backward()
        after = fx_attention.CALLS
        grads.append({n: p.grad for n, p in m.named_parameters() if p.grad is not None})
    fallbacks = {k: after[k] - before.get(k, 0) for k in after if k.startswith("fallback:") and after[k] != before.get(k, 0)}
    assert not fallbacks
    assert after["fastxf"] - before.get("fastxf", 0) == LLAMA.config["num_hidden_layers"]
    for name, g in grads[0].items():  # gradients through the kernels' autograd
        torch.testing.assert_close(grads[1][name], g, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("kwarg", ["num_items_in_batch", "shift_labels"])
def test_attention_function_ignores_loss_bookkeeping(kwarg):
    q, k, v = torch.randn(1, 4, 3, 8), torch.randn(1, 2, 3, 8), torch.randn(1, 2, 3, 8)
    module = nn.Module()
    module.is_causal = True
    before = dict(fx_attention.CALLS)
    out, _ = fx_attention.fastxf_attention(module, q, k, v, None, scaling=0.3, **{kwarg: torch.tensor([5])})
    assert fx_attention.CALLS["fastxf"] == before.get("fastxf", 0) + 1
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.3, enable_gqa=True)
    torch.testing.assert_close(out, want.transpose(1, 2), atol=1e-5, rtol=1e-5)


def test_copies_of_an_optimized_model():
    model = build(LLAMA)
    fastxf.optimize(model)
    ids, mask = batch()
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask).logits
    for other in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        norm = other.model.norm
        assert isinstance(norm, FastxfNorm) and type(norm) is type(model.model.norm)
        assert norm.weight is not model.model.norm.weight
        norm.variance_epsilon = 0.5  # the copy's norm reads its own copy's attributes
        assert model.model.norm.variance_epsilon != 0.5
        norm.variance_epsilon = model.model.norm.variance_epsilon
        with torch.no_grad():
            torch.testing.assert_close(other(input_ids=ids, attention_mask=mask).logits, want, atol=0, rtol=0)
