"""The automatic placement planner: splits the decoder layers into contiguous
stages, one per device, balancing stage time under per-device memory budgets.

Memory per stage = weights of its layers (+ embeddings on the first stage, final
norm and head on the last; a head tied to the embeddings stays with them on the
first) + the KV cache of its layers at (batch_size, max_seq_len) + a transient
activation working set. Time per stage is taken as proportional to the weight
bytes it runs (decode reads every weight once per token; prefill's matmul work
scales the same way), so identical layers balance by count and the head's
matmul counts where it runs. A dynamic program over (stage, layers used) gives
the split that minimises the slowest stage among those that fit."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import torch
from torch import nn

from ._discover import discover, module_bytes, text_config
from .devices import parse_devices


def _fmt(n: float) -> str:
    for unit, div in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= div:
            return f"{n / div:.2f} {unit}"
    return f"{int(n)} B"


_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30, "TIB": 1 << 40}


def parse_bytes(v) -> int:
    if isinstance(v, bool):
        raise ValueError(f"max_memory: {v!r} is not a size")
    if isinstance(v, (int, float)):
        if v < 0:
            raise ValueError(f"max_memory: negative size {v}")
        return int(v)
    m = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT]?I?B?)\s*", str(v).upper())
    if not m:
        raise ValueError(f"max_memory: cannot read {v!r} as a size (use bytes or e.g. '10GiB', '500MB')")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


@dataclass
class StagePlan:
    index: int
    device: str
    start: int  # first layer (inclusive)
    end: int  # last layer (exclusive)
    weight_bytes: int
    kv_bytes: int
    activation_bytes: int
    budget_bytes: int | None
    extras: list = field(default_factory=list)  # non-layer modules on this stage
    cost: float = 0.0  # relative time (weight bytes run per token)

    @property
    def num_layers(self) -> int:
        return self.end - self.start

    @property
    def total_bytes(self) -> int:
        return self.weight_bytes + self.kv_bytes + self.activation_bytes


@dataclass
class Plan:
    stages: list
    batch_size: int
    max_seq_len: int
    dtype: torch.dtype
    notes: list = field(default_factory=list)

    @property
    def placement(self) -> list:
        return [s.num_layers for s in self.stages]

    @property
    def devices(self) -> list:
        return [s.device for s in self.stages]

    def __str__(self) -> str:
        head = ["stage", "device", "layers", "weights", "kv cache", "activations", "total", "budget", "extras"]
        rows = []
        for s in self.stages:
            rows.append([
                str(s.index), s.device, f"{s.start}-{s.end - 1} ({s.num_layers})", _fmt(s.weight_bytes),
                _fmt(s.kv_bytes), _fmt(s.activation_bytes), _fmt(s.total_bytes),
                "-" if s.budget_bytes is None else _fmt(s.budget_bytes), ", ".join(s.extras) or "-",
            ])
        widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
        line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
        out = [f"placement plan: {self.placement} at batch {self.batch_size} x {self.max_seq_len} tokens, "
               f"{str(self.dtype).replace('torch.', '')}", line(head)]
        out += [line(r) for r in rows]
        cost = [s.cost for s in self.stages]
        if cost and max(cost) > 0:
            out.append(f"balance: slowest stage {max(cost) / (sum(cost) / len(cost)):.2f}x the mean stage time")
        out += self.notes
        return "\n".join(out)

    __repr__ = __str__


def _device_total(dev: torch.device) -> int:
    if dev.type == "cuda":
        return torch.cuda.mem_get_info(dev.index)[0]  # free memory now
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


def _budgets(devs: list, max_memory) -> list:
    """Per-stage budgets. A dict is per device: stages sharing a device share its
    budget equally; a list is per stage."""
    n = len(devs)
    counts = {}
    for d in devs:
        counts[d] = counts.get(d, 0) + 1
    if max_memory is None:
        return [_device_total(d) // counts[d] for d in devs]
    if isinstance(max_memory, (list, tuple)):
        if len(max_memory) != n:
            raise ValueError(f"max_memory: got {len(max_memory)} budgets for {n} devices")
        return [parse_bytes(v) for v in max_memory]
    if isinstance(max_memory, dict):
        norm = {}
        for k, v in max_memory.items():
            key = parse_devices([k if not isinstance(k, int) else f"cuda:{k}"], check_exists=False)[0]
            norm[key] = parse_bytes(v)
        out = []
        for d in devs:
            if d not in norm:
                raise ValueError(f"max_memory: no budget for device {d} (keys: {list(max_memory)})")
            out.append(norm[d] // counts[d])
        return out
    raise ValueError(f"max_memory: expected a dict device->size or a list of sizes, got {type(max_memory).__name__}")


def _model_dtype(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def layer_kv_bytes(cfg, batch_size: int, seq_len: int, dtype: torch.dtype, layer_idx: int) -> int:
    if cfg is None:
        return 0
    heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head", None)
    hidden = getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", None)
    if not heads or not hidden:
        return 0
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or hidden // heads
    length = seq_len
    types = getattr(cfg, "layer_types", None)
    window = getattr(cfg, "sliding_window", None)
    if types and layer_idx < len(types) and types[layer_idx] == "sliding_attention" and window:
        length = min(seq_len, window)
    esize = torch.empty((), dtype=dtype).element_size()
    return 2 * batch_size * kv_heads * head_dim * length * esize


def activation_bytes(cfg, batch_size: int, seq_len: int, dtype: torch.dtype) -> int:
    """Transient working set of one decoder layer at prefill: residual, normed
    input, q/k/v/attention output (~6 x hidden) and the gated MLP's three
    intermediate tensors. Layers run one after another, so a stage needs this once."""
    if cfg is None:
        return 0
    hidden = getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", None) or 0
    inter = getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) or 4 * hidden
    esize = torch.empty((), dtype=dtype).element_size()
    return batch_size * seq_len * (6 * hidden + 3 * inter) * esize


def plan_placement(model: nn.Module, devices, max_memory=None, batch_size: int = 1, max_seq_len: int = 2048,
                   dtype: torch.dtype | None = None) -> Plan:
    """Plans a contiguous split of the decoder layers over `devices` (one stage
    each, repeats allowed). `max_memory`: dict device -> size (shared by the
    stages on that device) or a list of per-stage sizes; sizes are bytes or
    strings like "10GiB". Raises ValueError when the model cannot fit."""
    devs = parse_devices(devices)
    if batch_size < 1 or max_seq_len < 1:
        raise ValueError(f"plan_placement: batch_size ({batch_size}) and max_seq_len ({max_seq_len}) must be >= 1")
    parts = discover(model)
    L, S = len(parts.layers), len(devs)
    if S > L:
        raise ValueError(f"plan_placement: {S} devices but the model has only {L} decoder layers; "
                         "each stage needs at least one layer")
    dtype = dtype or _model_dtype(model)
    cfg = text_config(model)
    budgets = _budgets(devs, max_memory)

    seen: set = set()
    layer_w = [module_bytes(layer, dtype, seen) for layer in parts.layers]
    layer_kv = [layer_kv_bytes(cfg, batch_size, max_seq_len, dtype, i) for i in range(L)]
    act = activation_bytes(cfg, batch_size, max_seq_len, dtype)
    vocab = getattr(cfg, "vocab_size", 0) or 0
    logits = batch_size * vocab * 4  # fp32 logits of the last position (what generate keeps)

    norm_w = module_bytes(parts.final_norm, dtype, seen) if parts.final_norm is not None else 0
    head_w = module_bytes(parts.head, dtype, seen) if parts.head is not None else 0
    rest_w = module_bytes(model, dtype, seen)  # everything not counted yet: embeddings, rotary, ...
    # A tied head's weight was counted with the embeddings... unless the head came
    # first in `seen`; either way its compute runs on the first stage.
    head_stage = 0 if parts.tied else S - 1
    head_cost = float(parts.head.weight.numel() * torch.empty((), dtype=dtype).element_size()) \
        if parts.head is not None and getattr(parts.head, "weight", None) is not None else 0.0

    fixed = [0] * S
    extra_cost = [0.0] * S
    names = [[] for _ in range(S)]
    fixed[0] += rest_w
    names[0].append("embeddings")
    fixed[S - 1] += norm_w
    if parts.final_norm is not None:
        names[S - 1].append("final norm")
    if parts.head is not None:
        fixed[head_stage] += head_w + logits
        extra_cost[head_stage] += head_cost
        names[head_stage].append("head (tied)" if parts.tied else "head")

    prefix_w = [0]
    prefix_kv = [0]
    for i in range(L):
        prefix_w.append(prefix_w[-1] + layer_w[i])
        prefix_kv.append(prefix_kv[-1] + layer_kv[i])

    def mem(s, a, b):
        return fixed[s] + prefix_w[b] - prefix_w[a] + prefix_kv[b] - prefix_kv[a] + act

    def cost(s, a, b):
        return prefix_w[b] - prefix_w[a] + extra_cost[s]

    INF = float("inf")
    # best[s][i]: minimal max-stage-cost placing layers [0, i) on stages [0, s]
    best = [[INF] * (L + 1) for _ in range(S)]
    arg = [[-1] * (L + 1) for _ in range(S)]
    for i in range(1, L - S + 2):
        if mem(0, 0, i) <= budgets[0]:
            best[0][i] = cost(0, 0, i)
    for s in range(1, S):
        for i in range(s + 1, L - (S - 1 - s) + 1):
            for k in range(s, i):  # stage s takes layers [k, i)
                if best[s - 1][k] == INF or mem(s, k, i) > budgets[s]:
                    continue
                c = max(best[s - 1][k], cost(s, k, i))
                if c < best[s][i]:
                    best[s][i], arg[s][i] = c, k
    if best[S - 1][L] == INF:
        raise ValueError(_explain_no_fit(devs, budgets, fixed, layer_w, layer_kv, act, batch_size, max_seq_len))

    bounds = []
    i = L
    for s in range(S - 1, 0, -1):
        k = arg[s][i]
        bounds.append((k, i))
        i = k
    bounds.append((0, i))
    bounds.reverse()
    stages = []
    for s, (a, b) in enumerate(bounds):
        stages.append(StagePlan(
            index=s, device=str(devs[s]), start=a, end=b,
            weight_bytes=fixed[s] + prefix_w[b] - prefix_w[a] - (logits if s == head_stage and parts.head is not None else 0),
            kv_bytes=prefix_kv[b] - prefix_kv[a],
            activation_bytes=act + (logits if s == head_stage and parts.head is not None else 0),
            budget_bytes=budgets[s], extras=names[s], cost=cost(s, a, b)))
    notes = ["activations: one layer's prefill working set (+ last-position fp32 logits on the head's stage); "
             "a full-sequence forward needs batch x seq x vocab logits more there"]
    if parts.tied:
        notes.append("head is tied to the input embeddings: it stays (and runs) with them on stage 0")
    return Plan(stages, batch_size, max_seq_len, dtype, notes)


def _explain_no_fit(devs, budgets, fixed, layer_w, layer_kv, act, batch, seq) -> str:
    S = len(devs)
    need = sum(fixed) + sum(layer_w) + sum(layer_kv) + S * act
    have = sum(budgets)
    head = (f"plan_placement: the model does not fit on {[str(d) for d in devs]} at batch {batch} x {seq} tokens: "
            f"it needs {_fmt(need)} (weights {_fmt(sum(fixed) + sum(layer_w))}, KV cache {_fmt(sum(layer_kv))}, "
            f"activations {_fmt(S * act)}) but the budgets total {_fmt(have)}")
    if need > have:
        return head + f"; short by {_fmt(need - have)}. Add devices, raise max_memory, or lower batch_size/max_seq_len."
    for s in range(S):
        one = fixed[s] + min(w + k for w, k in zip(layer_w, layer_kv)) + act
        if one > budgets[s]:
            return (head + f"; stage {s} on {devs[s]} needs at least {_fmt(one)} (its fixed modules + one layer + "
                    f"activations) but its budget is {_fmt(budgets[s])}, short by {_fmt(one - budgets[s])}")
    return head + "; no contiguous split of whole layers fits the per-device budgets (layers cannot be divided)"
