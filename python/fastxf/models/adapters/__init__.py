"""Attention adapters for model families whose attention module does not go
through transformers' AttentionInterface (so `set_attn_implementation("fastxf")`
cannot reach it): BLOOM, Falcon, MPT, GPT-Neo, XGLM, Bark, FSMT, and BERT-style encoders (RemBERT,
Megatron-BERT, TAPAS, ViLT, VisualBERT, RoFormer).

Each family module names the attention classes it adapts (exact classes, no
subclasses: e.g. FalconFlashAttention2 keeps its own forward) and provides
`check(module)` (None or why not), `prepare(module)` (constants such as ALiBi
slopes) and `forward(module, original_forward, *args, **kwargs)`, which
computes q/k/v with the module's own projections, applies the family's
rotary/ALiBi convention, updates the HF cache, and calls fastxf.ops.attention,
or hands the call to the original forward (output_attentions, unknown inputs,
masks the kernel cannot express, dropout in training), counted in
fastxf.models.attention.CALLS like the AttentionInterface path. The checks
every family shares are `_common.precheck`, the kernel call `_common.attend`;
a family module holds only what is its own.

The swap is one instance attribute (`module.forward`), so the module keeps its
parameters, other instances and the class are untouched, and `uninstall`
restores the class forward: outputs are then bit-identical.
"""

from __future__ import annotations

from torch import nn

from . import _common, bark, bert_style, bloom, falcon, fsmt, gpt_neo, mpt, roformer, xglm

FAMILIES = (bloom, falcon, mpt, gpt_neo, xglm, bark, fsmt, bert_style, roformer)

_BY_CLASS = {name: fam for fam in FAMILIES for name in fam.CLASSES}


def _qualname(module: nn.Module) -> str:
    return f"{type(module).__module__}.{type(module).__qualname__}"


def family_of(module: nn.Module):
    """The adapter module for this attention module's exact class, else None."""
    return _BY_CLASS.get(_qualname(module))


def _record_output_attentions(parent, args, kwargs):
    for child in parent.children():
        if "_fastxf_extra" in child.__dict__:
            child.__dict__["_fastxf_output_attentions"] = bool(kwargs.get("output_attentions"))


class Installed:
    """What install() changed, for uninstall()."""

    def __init__(self):
        self.modules: list = []  # adapted attention modules
        # Modules given the output_attentions pre-hook. Found again by function at
        # uninstall, not through handles: handles would point into the original
        # model's hook dicts after a deepcopy of the optimized model.
        self.hooked: list = []


def install(model: nn.Module) -> tuple[dict | None, Installed]:
    """Adapts every attention module of a known family in `model`.

    Returns (report, installed); report is None when the model has no module of
    a known family (the caller then reports the model as not adaptable)."""
    installed = Installed()
    adapted, kept = [], []
    families = set()
    for name, m in model.named_modules():
        fam = family_of(m)
        if fam is None:
            continue
        why = fam.check(m)
        if why is None and _common.has_instance_forward(m):
            why = "module already has an instance-level forward or an accelerate hook"
        if why is not None:
            kept.append({"name": name, "class": type(m).__name__, "reason": why})
            continue
        m.__dict__["_fastxf_extra"] = fam.prepare(m)
        _common.install_forward(m, fam.forward)
        installed.modules.append(m)
        adapted.append(name)
        families.add(fam.FAMILY)
    for parent in model.modules():
        for child in parent.children():
            if child in installed.modules and getattr(family_of(child), "PARENT_PASSES_OUTPUT_ATTENTIONS", True) is False:
                parent.register_forward_pre_hook(_record_output_attentions, with_kwargs=True)
                installed.hooked.append(parent)
                break
    if not adapted and not kept:
        return None, installed
    report = {
        "status": "rewritten" if adapted else "kept",
        "implementation": "fastxf adapter (" + ", ".join(sorted(families)) + ")" if adapted else None,
        "attention_modules": len(adapted),
        "adapted_modules": adapted,
        "fallback_rule": "per call, to the module's original forward: output_attentions, unknown inputs, masks the "
        "kernel cannot express (custom 4-D masks, holed padding with ALiBi), dropout in training",
    }
    if kept:
        report["kept_modules"] = kept
    if not adapted:
        report["reason"] = "; ".join(f"{k['name']}: {k['reason']}" for k in kept)
    return report, installed


def uninstall(installed: Installed) -> None:
    for parent in installed.hooked:
        for hook_id, hook in list(parent._forward_pre_hooks.items()):
            if hook is _record_output_attentions:
                del parent._forward_pre_hooks[hook_id]
                parent._forward_pre_hooks_with_kwargs.pop(hook_id, None)
    for m in installed.modules:
        _common.remove_forward(m)
        for k in ("_fastxf_extra", "_fastxf_output_attentions"):
            m.__dict__.pop(k, None)
    installed.hooked.clear()
    installed.modules.clear()


def rewrite(model: nn.Module, kernel_check) -> tuple[dict | None, Installed | None]:
    """optimize()'s entry for models that cannot switch to the "fastxf" attention
    implementation: (report, installed), or (None, None) when no family matches.
    `kernel_check(model)` is optimize()'s probe of the kernel on the model's
    device and dtype (None = usable, else why not)."""
    if not any(family_of(m) is not None for m in model.modules()):
        return None, None
    why = kernel_check(model)
    if why is not None:
        return {"status": "kept", "implementation": None, "reason": why}, None
    report, installed = install(model)
    return report, installed
