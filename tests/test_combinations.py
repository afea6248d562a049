"""fastxf.optimize x placement x micro-batches, proven on combinations rather than parts.

Axes (every value of every axis appears, and every pair of values of two axes
appears in at least one case: a pairwise covering, checked by
test_matrix_covers_every_pair):

- family: Llama-like with GQA, GPT-2 (tied head, other layout), Qwen3 (q/k norms),
  Gemma 2 (alternating sliding-window / full layers with different masks, softcap)
- optimize: off (HF eager attention) / on (fastxf attention + norms + fused residual)
- stages: 1, 2, 3, 5 (placements [5], [2, 3], [1, 3, 1], [1] * 5)
- micro-batches: 1, 2 (2 + 2 rows), 3 (2 + 1 + 1: uneven), 6 (more chunks than rows)
- padding: none, left, right (different lengths per row)
- run: forward, greedy, beam search, sampling, static cache

plus, denser where the rewrites meet several stages and micro-batches: optimize on,
every family x stages (2, 3, 5) x micro-batches (2, 3, 6), 45 more cases.

The reference is always the same weights unplaced and unoptimized (eager). Tokens
must be identical; logits (at real, non-padding positions) equal bit for bit
when nothing changes the arithmetic (optimize off, one micro-batch), else within
1e-4 (fastxf's kernels sum in another order; a smaller micro-batch may change the
BLAS blocking). Sampling is compared token for token under the same seed: the
placement and fastxf consume no random numbers, so generate draws the same ones.

Devices: the CPU is the only device here, so every stage runs on it and a
misplaced tensor would go unnoticed. Each case therefore runs on fake devices
(see FakeDevices): the runtime's three device operations (is a tensor on a device,
copy it there, move a module there) are replaced so that each stage gets its own
"device", recorded as a tag on tensors, and a TorchFunctionMode propagates the
tags through every torch operation and fails on any operation that mixes two
stages' tensors (what a real second GPU would do). On top, every submodule of
every decoder layer checks that each tensor it receives (also inside objects such
as the compact attention mask) carries its layer's tag.
"""

from __future__ import annotations

import itertools
import re

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves
from transformers import AutoConfig, AutoModelForCausalLM

import fastxf
from fastxf.models import attention as fx_attention
from fastxf.placement import discover, placement_of
from fastxf.placement import runtime
from tests import _tiny_models
from tests._tiny_models import DECODER, GPT2, VOCAB, one_thread  # noqa: F401 (one_thread: autouse fixture)

SMALL = dict(DECODER, max_position_embeddings=64, bos_token_id=1, eos_token_id=2, pad_token_id=0)
CONFIGS = {
    "llama": dict(SMALL),
    "gpt2": dict(GPT2, n_positions=64, pad_token_id=0),
    "qwen3": dict(SMALL, head_dim=8),
    # Window 4 < prompt length: sliding-window layers see fewer keys than the full ones.
    "gemma2": dict(SMALL, head_dim=8, sliding_window=4),
    # Encoder-decoder: the decoder's layers are placed (the encoder runs on the first
    # device); self-attention and cross-attention caches, a padded encoder mask.
    "bart": dict(d_model=32, encoder_layers=2, decoder_layers=5, encoder_attention_heads=4,
                 decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, vocab_size=VOCAB,
                 max_position_embeddings=64, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                 decoder_start_token_id=1, forced_eos_token_id=None),
}
SEQ2SEQ = {"bart"}
FUSED = {"llama", "qwen3"}  # Llama-structured layers: optimize fuses the residual add
STAGES = {1: [5], 2: [2, 3], 3: [1, 3, 1], 5: [1] * 5}
AXES = {
    "family": list(CONFIGS),
    "run": ["forward", "greedy", "beam", "sample", "static"],
    "stages": list(STAGES),
    "micro_batches": [1, 2, 3, 6],
    "padding": ["none", "left", "right"],
    "optimize": [False, True],
}
BATCH, LENGTH, NEW_TOKENS = 4, 7, 4


def pairwise(axes: dict) -> list:
    """A deterministic set of cases covering every pair of values of two axes (greedy)."""
    names = list(axes)
    todo = {((a, x), (b, y)) for a, b in itertools.combinations(names, 2) for x in axes[a] for y in axes[b]}
    cases = []
    first, second = names[0], names[1]
    for x, y in itertools.product(axes[first], axes[second]):  # the two largest axes, crossed
        case = {first: x, second: y}
        for name in names[2:]:
            def gain(v, name=name):
                return sum(((o, case[o]), (name, v)) in todo or ((name, v), (o, case[o])) in todo for o in case)
            case[name] = max(axes[name], key=gain)  # first value with the most new pairs
        for a, b in itertools.combinations(names, 2):
            todo.discard(((a, case[a]), (b, case[b])))
        cases.append(case)
    while todo:  # pairs the crossing left out: one more case each
        (a, x), (b, y) = min(todo, key=str)
        case = {n: axes[n][0] for n in names}
        case[a], case[b] = x, y
        for p, q in itertools.combinations(names, 2):
            todo.discard(((p, case[p]), (q, case[q])))
        cases.append(case)
    return cases


CASES = pairwise(AXES)
# Where the bugs lived (the rewrites meeting several stages and micro-batches), denser:
# optimize on, every family x stages (2, 3, 5) x micro-batches (2, 3, 6), the run and
# the padding rotating through their values.
CASES += [
    dict(family=f, stages=st, micro_batches=mb, optimize=True, run=AXES["run"][i % 5], padding=AXES["padding"][i % 3])
    for i, (f, st, mb) in enumerate(itertools.product(AXES["family"], [2, 3, 5], [2, 3, 6]))
]


def case_id(c):
    return "-".join([c["family"], c["run"], f"s{c['stages']}", f"mb{c['micro_batches']}", f"pad_{c['padding']}",
                     "opt" if c["optimize"] else "hf"])


def test_matrix_covers_every_pair():
    for a, b in itertools.combinations(AXES, 2):
        seen = {(c[a], c[b]) for c in CASES}
        assert seen == set(itertools.product(AXES[a], AXES[b])), (a, b)


# ----------------------------------------------------------------------------------------------
# models, inputs, references


_MODELS: dict = {}
_REFS: dict = {}


def model_for(family):
    if family not in _MODELS:
        _MODELS[family] = _tiny_models.build(family, CONFIGS[family], seq2seq=family in SEQ2SEQ)
    return _MODELS[family]


def inputs(padding):
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(3, VOCAB, (BATCH, LENGTH), generator=g)
    mask = torch.ones_like(ids)
    for row, pad in enumerate([0, 2, 3, 1][:BATCH]):
        if padding == "left" and pad:
            mask[row, :pad] = 0
        elif padding == "right" and pad:
            mask[row, -pad:] = 0
    ids[mask == 0] = 0
    return ids, mask


def run(model, kind, ids, mask):
    with torch.no_grad():
        if kind == "forward":
            if model.config.is_encoder_decoder:
                return model(input_ids=ids, attention_mask=mask, decoder_input_ids=ids.flip(1).clamp_min(3)).logits
            return model(input_ids=ids, attention_mask=mask).logits
        kw = dict(max_new_tokens=NEW_TOKENS, pad_token_id=0, eos_token_id=None)
        if kind == "greedy":
            kw.update(do_sample=False)
        elif kind == "beam":
            kw.update(do_sample=False, num_beams=2)
        elif kind == "static":
            kw.update(do_sample=False, cache_implementation="static")
        elif kind == "sample":
            kw.update(do_sample=True, top_k=0, top_p=1.0, temperature=1.0)
            torch.manual_seed(1234)
        return model.generate(input_ids=ids, attention_mask=mask, **kw)


def reference(family, kind, padding):
    key = (family, kind, padding)
    if key not in _REFS:
        m = model_for(family)
        assert placement_of(m) is None
        _REFS[key] = run(m, kind, *inputs(padding))
    return _REFS[key]


# ----------------------------------------------------------------------------------------------
# fake devices


def fake_device(stage: int) -> torch.device:
    """Stage s's fake device: "cpu:<s + 1>". torch accepts CPU devices with an index
    (and ignores it), so HF code can pass them around, compare them and create
    tensors on them; the index says which stage a tensor belongs to."""
    return torch.device("cpu", stage + 1)


def tag_of(t):
    return t.__dict__.get("_fake_device") if hasattr(t, "__dict__") else None


def set_tag(t, device):
    t._fake_device = device


class Mismatch(AssertionError):
    pass


_DEVICE_PROPERTY = torch._C.TensorBase.device


def _explicit_device(func, args, kwargs):
    """The fake device an operation is told to put its result on (device=..., .to(...))."""
    cands = [kwargs.get("device")]
    if getattr(func, "__name__", "") == "to":
        cands += [a for a in args[1:] if isinstance(a, (str, torch.device))]
    for c in cands:
        if c is None:
            continue
        try:
            d = torch.device(c)
        except (RuntimeError, TypeError):
            continue
        if d.type == "cpu" and d.index:
            return d
    return None


class DeviceTags(TorchFunctionMode):
    """Emulates the fake devices: a tensor's tag is its device (also what `.device`
    returns), results inherit their inputs' device or the one they are told to go
    to, and an operation on tensors of two devices raises, as across two GPUs.
    Untagged tensors (made without naming a fake device) go with anything."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__self__", None) is _DEVICE_PROPERTY:
            d = tag_of(args[0])
            return d if d is not None else func(*args, **kwargs)
        target = _explicit_device(func, args, kwargs)
        tags = set()
        for t in tree_leaves((args, kwargs)):
            if isinstance(t, torch.Tensor) and (d := tag_of(t)) is not None:
                tags.add(d)
        if target is None and len(tags) > 1:
            raise Mismatch(f"{getattr(func, '__name__', func)} mixes tensors on {sorted(map(str, tags))}")
        out = func(*args, **kwargs)
        d = target if target is not None else next(iter(tags), None)
        if d is not None:
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor):
                    set_tag(t, d)
        return out


def tensors_in(obj, seen=None):
    """Every tensor inside obj: containers, and the attributes of plain objects such as
    the compact attention mask (walked by hand, not by pytree, so that this check does
    not rely on the mechanism it checks). Caches and modules are not opened."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for o in obj:
            yield from tensors_in(o, seen)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from tensors_in(o, seen)
    elif isinstance(obj, (torch.nn.Module, type)) or runtime._is_cache(obj) or callable(obj):
        return
    elif hasattr(obj, "__dict__"):
        yield from tensors_in(vars(obj), seen)


class FakeDevices:
    """Context: place_model sees one fake device per stage; every submodule of every
    decoder layer checks its inputs; DeviceTags checks every operation."""

    def __init__(self, monkeypatch):
        self.mp = monkeypatch
        self.checked = 0
        self.handles = []
        self.active = False
        self.model = None

    def __enter__(self):
        mp = self.mp
        mp.setattr(runtime, "parse_devices", lambda devices: [fake_device(i) for i in range(len(devices))])

        def module_to(module, device, recurse=True):
            ts = list(module.parameters(recurse=recurse)) + list(module.buffers(recurse=recurse))
            for t in ts:
                set_tag(t, device)

        def copy_to(t, device):  # a real copy, as between two GPUs
            out = t.clone()
            set_tag(out, device)
            return out

        mp.setattr(runtime, "_module_to", module_to)
        mp.setattr(runtime, "_is_on", lambda t, device: tag_of(t) == device)
        mp.setattr(runtime, "_copy_to", copy_to)
        self.mode = DeviceTags()
        return self

    def watch(self, model):
        """After placement: every submodule of every layer checks what it receives."""
        state = getattr(model, runtime._ATTR)
        self.model = model
        for i, layer in enumerate(state.parts.layers):
            want = state.layer_device[i]
            for name, sub in layer.named_modules():
                def hook(mod, args, kwargs, want=want, where=f"layer {i} {name or '(itself)'}", is_layer=not name):
                    if is_layer and state.recorded is not None:
                        return  # the model's loop calling a layer whose run is deferred (micro-batches)
                    for t in tensors_in((args, kwargs)):
                        got = tag_of(t)
                        assert got == want, f"{where} got a {tuple(t.shape)} tensor on {got}, expected {want}"
                        self.checked += 1
                self.handles.append(sub.register_forward_pre_hook(hook, with_kwargs=True))
        self.mode.__enter__()
        self.active = True

    def stop(self):
        if self.active:
            self.mode.__exit__(None, None, None)
            self.active = False
        for h in self.handles:
            h.remove()
        self.handles = []
        if self.model is not None:  # no tags left on the shared test models
            for t in list(self.model.parameters()) + list(self.model.buffers()):
                t.__dict__.pop("_fake_device", None)

    def __exit__(self, *exc):
        self.stop()
        return False


# ----------------------------------------------------------------------------------------------
# the matrix


def compare(kind, got, want, real, exact):
    """real: the positions whose logits mean something (None: all)."""
    if kind == "forward":
        if real is None:
            real = torch.ones(got.shape[:2], dtype=torch.bool)
        if exact:
            assert torch.equal(got[real], want[real])
        else:
            torch.testing.assert_close(got[real], want[real], atol=1e-4, rtol=0)
    else:
        assert torch.equal(got, want), f"tokens differ:\n{got}\n{want}"


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_combination(case, monkeypatch):
    family, kind, padding = case["family"], case["run"], case["padding"]
    want = reference(family, kind, padding)
    model = model_for(family)
    ids, mask = inputs(padding)
    counts = STAGES[case["stages"]]
    devices = ["cpu"] * len(counts)
    kernel_calls = fx_attention.CALLS["fastxf"]
    with FakeDevices(monkeypatch) as fake:
        opt = case["optimize"]
        fastxf.optimize(model, attention=opt, norms=opt, fused_residual=opt, devices=devices, placement=counts,
                        micro_batches=case["micro_batches"])
        try:
            assert placement_of(model)[1] == counts
            if opt and family in FUSED:  # the residual is fused into the norm in every layer
                assert len(fastxf.explain(model)["fused_residual"]["fused"]) == 5
            fake.watch(model)
            got = run(model, kind, ids, mask)
        finally:
            fake.stop()
            fastxf.revert(model)
    exact = not case["optimize"] and case["micro_batches"] == 1
    compare(kind, got, want, None if family in SEQ2SEQ else mask.bool(), exact)
    assert fake.checked > 0
    if case["optimize"]:
        assert fx_attention.CALLS["fastxf"] > kernel_calls  # the kernels really ran
    assert placement_of(model) is None


def test_fake_devices_see_a_stale_tensor(monkeypatch):
    """The device check is not vacuous: a layer handed a tensor of another stage fails."""
    model = model_for("llama")
    ids, mask = inputs("left")
    with FakeDevices(monkeypatch) as fake:
        fastxf.optimize(model, devices=["cpu"] * 3, placement=[1, 3, 1], micro_batches=1)
        leak = torch.ones(1)
        set_tag(leak, getattr(model, runtime._ATTR).devices[0])  # a tensor left on stage 0
        layer = discover(model).layers[2]  # on stage 1
        h = layer.register_forward_pre_hook(lambda mod, args, kwargs: (args, dict(kwargs, leaked=leak)),
                                            with_kwargs=True)
        try:
            fake.watch(model)
            with pytest.raises(AssertionError, match=r"layer 2 \(itself\) got a \(1,\) tensor on cpu:1, expected cpu:2"):
                run(model, "forward", ids, mask)
        finally:
            h.remove()
            fake.stop()
            fastxf.revert(model)


# ----------------------------------------------------------------------------------------------
# the README's placement example, as written (CUDA devices replaced by the CPU, 8 new
# tokens instead of 64 to keep CI short)


def readme_placement_example() -> str:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split("## Pipeline placement", 1)[1]
    return section.split("```python", 1)[1].split("```", 1)[0]


def test_readme_placement_example():
    code = readme_placement_example()
    assert "fastxf.optimize(model, devices=" in code and "micro_batches=" in code
    # The example's model has 24 layers (placement=[10, 14]): a tiny 24-layer Llama.
    cfg = AutoConfig.for_model("llama", **dict(SMALL, num_hidden_layers=24))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    input_ids, mask = inputs("left")
    with torch.no_grad():
        want = model.generate(input_ids, attention_mask=mask, max_new_tokens=8)
    ns = {"model": model, "input_ids": input_ids, "mask": mask}
    on_cpu = re.sub(r'"cuda:\d"', '"cpu"', code).replace("max_new_tokens=64", "max_new_tokens=8")
    assert '"cuda' not in on_cpu and "max_new_tokens=8" in on_cpu
    try:
        with torch.no_grad():
            exec(compile(on_cpu, "README.md (placement example)", "exec"), ns)
        assert placement_of(model) == (["cpu", "cpu"], [10, 14], 4)
        assert torch.equal(ns["out"], want)
        assert sum(ns["plan"].placement) == 24
    finally:
        fastxf.revert(model)


@pytest.mark.cuda
@pytest.mark.parametrize("family", ["llama", "gemma2", "bart"])
def test_cuda_optimize_placement_micro_batches(family):
    """On one GPU: optimize + 3 stages on cuda:0 (one stream each) + 3 micro-batches vs the
    unplaced eager model, greedy and static cache (run by the GPU checks)."""
    model = model_for(family).to("cuda")
    ids, mask = inputs("left")
    ids, mask = ids.cuda(), mask.cuda()
    try:
        want = [run(model, kind, ids, mask) for kind in ("greedy", "static")]
        fastxf.optimize(model, devices=["cuda:0"] * 3, placement=[1, 3, 1], micro_batches=3)
        try:
            for kind, w in zip(("greedy", "static"), want):
                assert torch.equal(run(model, kind, ids, mask), w), kind
        finally:
            fastxf.revert(model)
    finally:
        model.to("cpu")
