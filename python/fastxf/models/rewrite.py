"""fastxf.optimize / fastxf.revert / fastxf.explain for Hugging Face models.

Everything is scoped to one model instance and reversible:

- attention: "fastxf" is registered in transformers' AttentionInterface and
  AttentionMaskInterface (adding a name changes no class), and the instance is
  switched with `set_attn_implementation("fastxf")`; revert restores each
  config's previous implementation. (Note: two models built from the very same
  config object share that setting; that is HF's design, not ours.)
- norms: replaced module by module with `FastxfNorm`s that borrow the original
  parameters; revert puts the original modules back (they still own the same
  Parameter objects, so outputs are bit-identical to a never-optimized model).
- fused residual: a forward bound on the decoder-layer instance; revert deletes
  it, uncovering the class's forward again.
- placement (`devices=`): delegated to fastxf.placement.

The state needed to undo all this lives in one plain attribute
(`model._fastxf_state`, not a module, so not in the state dict).
"""

from __future__ import annotations

import json
import logging

from torch import nn

from . import adapters as fx_adapters
from . import attention as fx_attention
from . import fused as fx_fused
from . import norms as fx_norms
from . import unpad as fx_unpad

logger = logging.getLogger("fastxf")

_STATE = "_fastxf_state"


class _State:
    def __init__(self, options: dict):
        self.options = options
        self.attn_configs: list = []  # [(config, previous _attn_implementation)]
        self.norms: list = []  # [(parent, attr name, original, replacement)]
        self.fused: list = []  # layers with an instance-bound forward
        self.adapters = None  # fastxf.models.adapters.Installed (attention modules outside the interface)
        self.unpadders: list = []  # fx_unpad.Unpadder, hooks on encoder layer stacks
        self.placed = False
        self.report: dict = {}


def _attn_impl(config):
    return getattr(config, "_attn_implementation", None)


def _configs_of(model: nn.Module) -> list:
    seen, out = set(), []
    for m in model.modules():
        cfg = getattr(m, "config", None)
        if cfg is not None and hasattr(cfg, "_attn_implementation") and id(cfg) not in seen:
            seen.add(id(cfg))
            out.append(cfg)
    return out


def _set_internal(config, value) -> None:
    # The plain attribute behind config._attn_implementation (5.17 and 5.24 alike);
    # set directly on revert so nested sub-configs get exactly their old values.
    if hasattr(config, "_attn_implementation_internal"):
        config._attn_implementation_internal = value
    else:
        config._attn_implementation = value


def _attention_kernel_check(model: nn.Module) -> str | None:
    """None when fastxf's attention runs and agrees with the float64 reference on
    the model's device and dtype (a tiny GQA + padding probe), else why not."""
    import torch

    from ..ops import attention as fx_attn
    from ..ops import reference

    p = next(model.parameters(), None)
    if p is None:
        return "model has no parameters"
    device, dtype = p.device, p.dtype
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return f"model dtype {dtype} (fastxf attention takes float32, float16, bfloat16)"
    if device.type == "meta":
        return "model on the meta device"
    gen = torch.Generator(device="cpu").manual_seed(7)
    q, k, v = (torch.randn(2, h, 5, 16, generator=gen) for h in (4, 2, 2))
    pad = torch.tensor([[True] * 5, [False, True, True, True, True]])
    try:
        got = fx_attn(*(t.to(device, dtype) for t in (q, k, v)), causal=True, key_padding_mask=pad.to(device))
    except Exception as e:  # e.g. a build without this device's kernels
        return f"fastxf attention unavailable on {device} {dtype}: {type(e).__name__}: {e}"
    want = reference.attention(q.double(), k.double(), v.double(), pad, causal=True)
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    if not torch.allclose(got.double().cpu(), want, atol=tol, rtol=tol):
        return f"fastxf attention probe mismatch on {device} {dtype}"
    return None


def _inner_models(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The transformers models inside a wrapper that is not one itself (a
    SentenceTransformer, a user's module around an AutoModel): the outermost
    modules with set_attn_implementation, by name. Empty for a transformers model
    (optimize works on it directly) and for a module with none inside."""
    if hasattr(model, "set_attn_implementation"):
        return []
    found: list[tuple[str, nn.Module]] = []
    for name, m in model.named_modules():
        if hasattr(m, "set_attn_implementation") and not any(name.startswith(f"{outer}.") for outer, _ in found):
            found.append((name, m))
    return found


def _rewrite_attention_and_unpad(
    model: nn.Module, inner: list, state: _State, attention: bool, unpad: bool
) -> tuple[dict, dict]:
    """Attention and unpad rewrites of the model, or of each transformers model
    inside a wrapper (`inner`, from _inner_models; norms and fused residuals go
    to the whole module); one report each, the single model's own when there is one."""
    reports = {}
    for name, sub in inner or [("", model)]:
        att = (
            _rewrite_attention(sub, state, adapters=len(inner) <= 1)
            if attention
            else {"status": "kept", "reason": "attention=False"}
        )
        unp = _rewrite_unpad(sub, state, att) if unpad else {"status": "off", "reason": "unpad=False"}
        reports[name] = (dict(att, submodule=name) if name else att, unp)
    if len(reports) == 1:
        return next(iter(reports.values()))
    rewritten = [n for n, (att, _) in reports.items() if att["status"] == "rewritten"]
    att = {
        "status": "rewritten" if rewritten else "kept",
        "submodules": {n: a for n, (a, _) in reports.items()},
        "attention_modules": sum(a.get("attention_modules", 0) for a, _ in reports.values()),
    }
    unp_on = {n: u for n, (_, u) in reports.items() if u["status"] == "on"}
    unp = (
        {"status": "on", "encoders": [f"{n}.{e}" for n, u in unp_on.items() for e in u["encoders"]]}
        if unp_on
        else {"status": "off", "reason": "; ".join(f"{n}: {u['reason']}" for n, (_, u) in reports.items())}
    )
    return att, unp


def _rewrite_attention(model: nn.Module, state: _State, adapters: bool = True) -> dict:
    configs = _configs_of(model)
    previous = {id(c): _attn_impl(c) for c in configs}
    can_set = getattr(type(model), "_can_set_attn_implementation", None)
    if not hasattr(model, "set_attn_implementation") or (callable(can_set) and not can_set()):
        # (One set of adapters per optimize() call: with several models inside a
        # wrapper, those outside the interface keep their attention.)
        if adapters and state.adapters is None:
            adapted, state.adapters = fx_adapters.rewrite(model, _attention_kernel_check)
            if adapted is not None:
                return adapted
        return {
            "status": "kept",
            "implementation": _attn_impl(getattr(model, "config", None)),
            "reason": "the model's attention does not go through transformers' AttentionInterface",
        }
    why = _attention_kernel_check(model)
    if why is not None:
        return {"status": "kept", "implementation": _attn_impl(getattr(model, "config", None)), "reason": why}
    fx_attention.register()
    try:
        model.set_attn_implementation(fx_attention.NAME)
    except Exception as e:  # a model refusing custom implementations: stay on HF
        for c in configs:
            _set_internal(c, previous[id(c)])
        return {"status": "kept", "implementation": _attn_impl(model.config), "reason": f"set_attn_implementation failed: {e}"}
    state.attn_configs += [(c, previous[id(c)]) for c in configs]
    # Older transformers (5.17) do not carry the switch into sub-models that own
    # a copy of the config (T5's encoder / decoder stacks): do it for them, on
    # this instance's configs only, where the sub-model uses the interface.
    for m in model.modules():
        cfg = getattr(m, "config", None)
        sub_can_set = getattr(type(m), "_can_set_attn_implementation", None)
        if (
            m is not model
            and hasattr(m, "set_attn_implementation")
            and cfg is not None
            and id(cfg) in previous
            and _attn_impl(cfg) != fx_attention.NAME
            and callable(sub_can_set)
            and sub_can_set()
        ):
            _set_internal(cfg, fx_attention.NAME)
    switched = [c for c in configs if _attn_impl(c) == fx_attention.NAME]
    modules = [
        name
        for name, m in model.named_modules()
        if "Attention" in type(m).__name__
        and getattr(getattr(m, "config", None), "_attn_implementation", None) == fx_attention.NAME
        and not any("Attention" in type(c).__name__ for c in m.children())
    ]
    kept_configs = [type(c).__name__ for c in configs if c not in switched]
    info = {
        "status": "rewritten" if switched and modules else "kept",
        "implementation": fx_attention.NAME if switched else _attn_impl(model.config),
        "previous": previous[id(model.config)] if hasattr(model, "config") else None,
        "attention_modules": len(modules),
        "fallback_rule": "per call, to HF eager/sdpa: output_attentions, position bias / sinks, custom dense masks, "
        "chunked/custom mask patterns, dropout in training (packed sequences run on the varlen op)",
    }
    if kept_configs:
        info["kept_configs"] = kept_configs
    if not switched or not modules:
        info["reason"] = "set_attn_implementation did not switch any attention module"
    return info


def _rewrite_norms(model: nn.Module, state: _State) -> dict:
    replaced, kept = [], []
    targets = []
    for parent_name, parent in model.named_modules():
        for name, child in parent.named_children():
            if isinstance(child, fx_norms.FastxfNorm) or not fx_norms.looks_like_norm(child):
                continue
            targets.append((parent_name, parent, name, child))
    done: dict = {}
    for parent_name, parent, name, child in targets:
        full = f"{parent_name}.{name}" if parent_name else name
        if id(child) in done:  # one module registered twice: reuse its replacement
            rep = done[id(child)]
        else:
            rep, what = fx_norms.replacement_for(child)
            if rep is None:
                kept.append({"name": full, "class": type(child).__name__, "reason": what})
                continue
            done[id(child)] = rep
        setattr(parent, name, rep)
        state.norms.append((parent, name, child, rep))
        replaced.append({"name": full, "class": type(child).__name__, "kind": rep.fastxf_kind})
        if getattr(rep, "fastxf_eps_probed", False):  # eps not stored on the module: found by probing
            replaced[-1]["eps_probed"] = rep.fastxf_eps
    return {"replaced": replaced, "kept": kept}


def _fuse_residuals(model: nn.Module, state: _State) -> dict:
    fused, not_fused = [], []
    for name, m in model.named_modules():
        if not (hasattr(m, "self_attn") and hasattr(m, "mlp") and hasattr(m, "post_attention_layernorm")):
            continue
        why = fx_fused.fuse_layer(model, m)
        if why is None:
            state.fused.append(m)
            fused.append(name)
        else:
            not_fused.append({"name": name, "class": type(m).__name__, "reason": why})
    return {"fused": fused, "not_fused": not_fused}


def _rewrite_unpad(model: nn.Module, state: _State, attention_report: dict) -> dict:
    if attention_report.get("status") != "rewritten":
        return {"status": "off", "reason": "the padding-free path needs fastxf attention (attention was not rewritten)"}
    stacks, why = fx_unpad.find_encoder_stacks(model)
    if not stacks:
        return {"status": "off", "reason": why}
    for name, layers in stacks:
        u = fx_unpad.Unpadder(name, layers)
        u.attach()
        state.unpadders.append(u)
    return {
        "status": "on",
        "encoders": [name for name, _ in stacks],
        "rule": "padded batches run the encoder layers on real tokens only (varlen attention), padded positions "
        "of the output are zeros; batches without padding, training, output_hidden_states/attentions, "
        "torch.compile and CUDA float32 (the CUDA varlen kernel takes float16 / bfloat16) take the padded path",
    }


def _check_options(attention, norms, fused_residual, devices, placement, micro_batches, max_memory, unpad=True):
    for name, v in (("attention", attention), ("norms", norms), ("fused_residual", fused_residual), ("unpad", unpad)):
        if not isinstance(v, bool):
            raise ValueError(f"fastxf.optimize: {name} must be True or False, got {v!r}")
    if devices is not None and (isinstance(devices, str) or not hasattr(devices, "__len__") or len(devices) == 0):
        raise ValueError(f"fastxf.optimize: devices must be a non-empty list of device strings, got {devices!r}")
    if devices is None and (placement is not None or max_memory is not None or micro_batches != 1):
        raise ValueError("fastxf.optimize: placement, micro_batches and max_memory need devices=[...]")
    if fused_residual and not norms:
        raise ValueError("fastxf.optimize: fused_residual=True needs norms=True (it fuses into the fastxf norm)")


def optimize(
    model: nn.Module,
    *,
    attention: bool = True,
    norms: bool = True,
    fused_residual: bool = True,
    devices=None,
    placement=None,
    micro_batches: int = 1,
    max_memory=None,
    unpad: bool = True,
) -> nn.Module:
    """Rewrites this model instance onto fastxf's kernels, in place; returns it.

    attention / norms / fused_residual choose the rewrites; devices, placement,
    micro_batches and max_memory place the layers across devices (see
    fastxf.placement). unpad runs BERT-family / BART encoders on the real tokens
    of padded batches only (fastxf.models.unpad). Calling it again first undoes
    the previous call.
    """
    _check_options(attention, norms, fused_residual, devices, placement, micro_batches, max_memory, unpad)
    if not isinstance(model, nn.Module):
        raise ValueError(f"fastxf.optimize: model must be a torch.nn.Module, got {type(model).__name__}")
    if getattr(model, _STATE, None) is not None:
        revert(model)
    options = dict(
        attention=attention,
        norms=norms,
        fused_residual=fused_residual,
        devices=list(devices) if devices is not None else None,
        placement=placement,
        micro_batches=micro_batches,
        max_memory=max_memory,
        unpad=unpad,
    )
    state = _State(options)
    model.__dict__[_STATE] = state
    try:
        inner = _inner_models(model)  # a wrapper (SentenceTransformer, a user's module) around transformers models
        config = getattr(model, "config", None) or (getattr(inner[0][1], "config", None) if inner else None)
        report = {"model": type(model).__name__, "model_type": getattr(config, "model_type", None)}
        report["attention"], report["unpad"] = _rewrite_attention_and_unpad(model, inner, state, attention, unpad)
        report["norms"] = _rewrite_norms(model, state) if norms else {"replaced": [], "kept": [], "reason": "norms=False"}
        if fused_residual:
            report["fused_residual"] = _fuse_residuals(model, state)
        else:
            report["fused_residual"] = {"fused": [], "not_fused": [], "reason": "fused_residual=False"}
        if devices is not None:
            try:
                from fastxf.placement import place_model
            except ImportError as e:
                raise NotImplementedError(
                    f"fastxf.optimize(devices=...) needs the fastxf.placement module, which is missing ({e})"
                ) from e
            place_model(model, devices=list(devices), placement=placement, micro_batches=micro_batches, max_memory=max_memory)
            state.placed = True
            report["placement"] = {"devices": [str(d) for d in devices], "placement": placement, "micro_batches": micro_batches}
        state.report = report
    except BaseException:
        revert(model)
        raise
    logger.info("fastxf.optimize: %s", summary(report))
    return model


def revert(model: nn.Module) -> nn.Module:
    """Undoes optimize(): original modules, forwards and attention settings; returns the model."""
    state = model.__dict__.get(_STATE)
    if state is None:
        return model
    if state.placed:
        try:
            from fastxf.placement import remove_placement
        except ImportError as e:
            raise NotImplementedError(f"fastxf.revert: the model was placed but fastxf.placement is missing ({e})") from e
        remove_placement(model)
        state.placed = False
    for u in state.unpadders:
        u.detach()
    for layer in state.fused:
        fx_fused.unfuse_layer(layer)
    for parent, name, original, replacement in reversed(state.norms):
        if getattr(parent, name, None) is replacement:
            # What the user changed on the replacement while optimized stays:
            # train()/eval(), and parameters re-assigned on it (plain attributes
            # such as eps were written to the original directly).
            original.training = replacement.training
            for pname, p in replacement._parameters.items():
                if original._parameters.get(pname) is not p:
                    original._parameters[pname] = p
            setattr(parent, name, original)
    if state.adapters is not None:
        fx_adapters.uninstall(state.adapters)
    for config, previous in state.attn_configs:
        _set_internal(config, previous)
    del model.__dict__[_STATE]
    logger.info("fastxf.revert: %s restored", type(model).__name__)
    return model


def explain(model: nn.Module) -> dict:
    """What optimize() rewrote on this model and what stayed on the HF path, and why.

    Also logged at INFO. Includes the attention calls that fell back to HF at
    run time in this process (fastxf.models.attention.CALLS)."""
    state = model.__dict__.get(_STATE)
    if state is None:
        report = {"model": type(model).__name__, "optimized": False}
    else:
        report = dict(state.report, optimized=True, options={k: v for k, v in state.options.items() if k != "max_memory"})
        runtime = {k[len("fallback:") :]: v for k, v in fx_attention.CALLS.items() if k.startswith("fallback:")}
        report["attention_calls"] = {
            "fastxf": fx_attention.CALLS.get("fastxf", 0),
            "fastxf_varlen": fx_attention.CALLS.get("fastxf_varlen", 0),
            "fallbacks": runtime,
        }
        if state.unpadders:  # which path the encoder forwards took, and how many tokens they skipped
            report["unpad"] = dict(report["unpad"], calls={u.name: dict(u.calls) for u in state.unpadders})
    logger.info("fastxf.explain: %s", json.dumps(report, default=str))
    return report


def summary(report: dict) -> str:
    """One line: what was rewritten."""
    att = report.get("attention", {})
    nr = report.get("norms", {})
    fr = report.get("fused_residual", {})
    return (
        f"{report.get('model')}: attention {att.get('status')} ({att.get('attention_modules', 0)} modules"
        f"{', ' + att['reason'] if att.get('reason') else ''}), norms {len(nr.get('replaced', []))} replaced / "
        f"{len(nr.get('kept', []))} kept, residual fused in {len(fr.get('fused', []))} layers"
    )


def format_report(report: dict) -> str:
    """Human-readable multi-line form of explain()'s report."""
    lines = [summary(report) if report.get("optimized") else f"{report.get('model')}: not optimized"]
    for k in report.get("norms", {}).get("kept", []):
        lines.append(f"  norm kept on HF: {k['name']} ({k['class']}): {k['reason']}")
    for k in report.get("fused_residual", {}).get("not_fused", []):
        lines.append(f"  residual not fused: {k['name']} ({k['class']}): {k['reason']}")
    fb = report.get("attention_calls", {}).get("fallbacks", {})
    for reason, n in fb.items():
        lines.append(f"  attention calls on HF: {n} x {reason}")
    return "\n".join(lines)
