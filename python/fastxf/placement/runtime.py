"""Placing a Hugging Face decoder model's layers on several devices and running
micro-batches through them as a pipeline.

How it hooks in (all on the one model instance, all undone by remove_placement):
- every decoder layer gets a forward pre-hook that moves its tensor args/kwargs
  (hidden states, mask, rotary cos/sin, position ids, ...) to the layer's
  device; tensors that cross to another device are copied once per forward and
  reused by the following layers of that stage;
- the final norm and the head get the same pre-hook; the outermost model gets
  one that moves its inputs to the first device;
- with micro_batches > 1, the layers' forwards are replaced: while the HF
  model's loop calls them, layers 0..L-2 only record their arguments (each
  layer its own: masks may differ per layer type) and pass the hidden states
  on; the last layer's call splits the batch into chunks and runs all layers on
  all chunks in wavefront order (stage s on chunk c while stage s+1 on chunk
  c-1). The HF model's own code still builds the embeddings, masks and rotary
  tables before the layers and runs the final norm and head after them.
- per-call objects (the compact attention mask, rotary cos/sin, ...) are split
  and moved by one pytree walk (see _map_tensors).

KV caches: HF caches create a layer's tensors lazily from the keys that layer
computes, so they are born on the layer's device. With micro-batches each chunk
sees a shallow copy of the cache whose per-layer tensors are batch slices of the
real ones; after the last chunk has passed a layer the chunks' new tensors are
concatenated back (static caches are updated in place through the slices and
need no concatenation). The user-visible cache is therefore always the ordinary
full-batch cache that generate() expects."""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field

import torch
import torch.utils._pytree as pytree
from torch import nn

from ._discover import ModelParts, discover
from .devices import parse_devices

_ATTR = "_fastxf_placement"


@dataclass
class _State:
    parts: ModelParts
    devices: list  # torch.device per stage
    bounds: list  # (start, end) per stage
    micro_batches: int
    layer_device: list  # torch.device per layer
    handles: list = field(default_factory=list)
    saved_forwards: list = field(default_factory=list)  # (module, had_instance_forward, old)
    memo: dict = field(default_factory=dict)
    recorded: list | None = None  # (args, kwargs) of each layer's call while a batch is being deferred
    in_runner: bool = False
    tuple_out: bool = False
    streams: list = field(default_factory=list)

    @property
    def first(self):
        return self.devices[0]


# How per-call objects travel. Everything a layer receives (hidden states, the
# attention mask, rotary cos/sin, position ids, cache positions, ...) is walked as
# a torch pytree: containers (tuple, list, dict, namedtuple, ...) and objects that
# register themselves as pytree nodes (fastxf's compact attention mask, whatever a
# future feature adds) are taken apart, their tensors mapped (moved to a stage's
# device, or sliced to a micro-batch) and the objects rebuilt around the results.
# One walk for moving and for splitting, so an object is never moved but not
# split or the other way round. Caches and modules are handed over as they are
# (caches live with their layers; _ChunkedCache splits them). An object that is
# not a registered node but holds tensors that would need moving or slicing
# raises, instead of silently reaching a layer on the wrong device or batch.


@functools.cache
def _cache_class():
    try:
        from transformers.cache_utils import Cache
    except ImportError:  # placement without transformers: no HF caches to recognise
        return None
    return Cache


def _is_cache(x) -> bool:
    cache_cls = _cache_class()
    return cache_cls is not None and isinstance(x, cache_cls)


def _opaque(x) -> bool:
    """Leaves the walk must not open even if someone registered them as pytree nodes."""
    return isinstance(x, nn.Module) or _is_cache(x)


_SCALARS = (type(None), bool, int, float, str, torch.dtype, torch.device)


def _map_tensors(obj, fn):
    """obj with every tensor t inside it replaced by fn(t) (see above).

    Plain tuples, lists and dicts are walked here directly (this runs for every
    layer call: a full pytree flatten costs several times more); every other
    pytree node (registered classes, namedtuples) is opened one level with
    torch's pytree and rebuilt with its own unflatten."""
    t = type(obj)
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if t in _SCALARS:
        return obj
    if t is tuple:
        return tuple(_map_tensors(o, fn) for o in obj)
    if t is list:
        return [_map_tensors(o, fn) for o in obj]
    if t is dict:
        return {k: _map_tensors(v, fn) for k, v in obj.items()}
    if _opaque(obj):
        return obj
    if t in pytree.SUPPORTED_NODES or pytree.is_namedtuple_instance(obj):
        children, spec = pytree.tree_flatten(obj, is_leaf=lambda x: x is not obj)
        return pytree.tree_unflatten([_map_tensors(c, fn) for c in children], spec)
    if getattr(obj, "__dict__", None) and not callable(obj):
        _refuse_hidden_tensors(obj, fn)
    return obj


def _refuse_hidden_tensors(x, fn):
    for name, v in vars(x).items():
        if isinstance(v, torch.Tensor) and fn(v) is not v:
            raise ValueError(
                f"placement: a layer's argument is a {type(x).__name__} whose tensor {name!r} would have to be "
                "moved to the layer's device or split per micro-batch, but fastxf cannot see inside that type; "
                "register it as a pytree node (torch.utils._pytree.register_pytree_node) so its tensors "
                "travel like the others")


# Device operations, in one place (tests substitute fake devices here to check,
# without several GPUs, that every tensor reaches the device of the layer using it).


def _is_on(t: torch.Tensor, device) -> bool:
    return t.device == device


def _copy_to(t: torch.Tensor, device) -> torch.Tensor:
    # Asynchronous only towards a GPU: a non-blocking GPU->CPU copy could be read
    # by the CPU before it lands.
    return t.to(device, non_blocking=device.type == "cuda")


def _module_to(module: nn.Module, device, recurse: bool = True) -> None:
    if recurse:
        module.to(device)
    else:
        module._apply(lambda t: t.to(device), recurse=False)


def _mover(state: _State, device: torch.device):
    def move(t):
        if _is_on(t, device):
            return t
        key = (id(t), device)
        hit = state.memo.get(key)
        if hit is not None and hit[0] is t:
            return hit[1]
        moved = _copy_to(t, device)
        state.memo[key] = (t, moved)  # keeps `t` alive so its id is not reused within this forward
        return moved
    return move


def _validate_placement(placement, n_layers: int, n_devices: int) -> list:
    try:
        counts = [int(c) for c in placement]
    except (TypeError, ValueError):
        raise ValueError(f"placement: expected a list of layer counts per device, got {placement!r}") from None
    if any(int(c) != c for c in placement):
        raise ValueError(f"placement: layer counts must be integers, got {placement!r}")
    if len(counts) != n_devices:
        raise ValueError(f"placement: {len(counts)} layer counts {counts} for {n_devices} devices; "
                         "give one count per device")
    if n_devices > n_layers:
        raise ValueError(f"placement: {n_devices} stages but the model has only {n_layers} decoder layers")
    bad = [c for c in counts if c <= 0]
    if bad:
        raise ValueError(f"placement: every stage needs at least one layer, got counts {counts}")
    if sum(counts) != n_layers:
        raise ValueError(f"placement: counts {counts} sum to {sum(counts)} but the model has {n_layers} decoder layers")
    return counts


def place_model(model: nn.Module, devices, placement=None, micro_batches: int = 1, max_memory=None) -> nn.Module:
    """Places `model` (in place) as a pipeline over `devices`, one stage per
    entry (repeats allowed). `placement`: layer counts per device, or None to
    let plan_placement choose under `max_memory`. `micro_batches`: chunks a
    batch is split into so that stages overlap. Returns the model."""
    if getattr(model, _ATTR, None) is not None:
        remove_placement(model)
    if isinstance(micro_batches, bool) or not isinstance(micro_batches, int) or micro_batches < 1:
        raise ValueError(f"micro_batches: must be an integer >= 1, got {micro_batches!r}")
    devs = parse_devices(devices)
    parts = discover(model)
    L = len(parts.layers)
    if placement is None:
        from .planner import plan_placement

        counts = plan_placement(model, devices, max_memory=max_memory).placement
    else:
        counts = _validate_placement(placement, L, len(devs))
    bounds, start = [], 0
    for c in counts:
        bounds.append((start, start + c))
        start += c
    layer_device = [devs[s] for s, (a, b) in enumerate(bounds) for _ in range(a, b)]
    state = _State(parts, devs, bounds, micro_batches, layer_device)

    # Move modules: decoder layers to their stage, final norm to the last stage,
    # the head to the last stage unless tied (a parameter lives on one device, so
    # a tied head stays with the embeddings), everything else to the first.
    units = {id(m) for m in parts.layers}
    for s, (a, b) in enumerate(bounds):
        for i in range(a, b):
            _module_to(parts.layers[i], devs[s])
    if parts.final_norm is not None:
        units.add(id(parts.final_norm))
        _module_to(parts.final_norm, devs[-1])
    if parts.head is not None:
        units.add(id(parts.head))
        _module_to(parts.head, devs[0] if parts.tied else devs[-1])
    units.add(id(parts.layers))

    def rest(mod):
        if id(mod) in units:
            return
        _module_to(mod, devs[0], recurse=False)
        for child in mod.children():
            rest(child)

    rest(model)

    def layer_hook(device):
        mv = _mover(state, device)

        def hook(module, args, kwargs):
            if state.recorded is not None or state.in_runner:
                return None  # a call being recorded, or the pipeline placed the chunk's inputs already
            return _map_tensors(args, mv), _map_tensors(kwargs, mv)
        return hook

    for i, layer in enumerate(parts.layers):
        state.handles.append(layer.register_forward_pre_hook(layer_hook(layer_device[i]), with_kwargs=True))
    if parts.final_norm is not None:
        state.handles.append(parts.final_norm.register_forward_pre_hook(layer_hook(devs[-1]), with_kwargs=True))
    if parts.head is not None:
        head_dev = devs[0] if parts.tied else devs[-1]
        state.handles.append(parts.head.register_forward_pre_hook(layer_hook(head_dev), with_kwargs=True))

    first_mv = _mover(state, devs[0])

    cfg = getattr(model, "config", None)

    def top_hook(module, args, kwargs):
        if state.micro_batches > 1:
            for flag in ("output_attentions", "output_hidden_states"):
                if kwargs.get(flag) or (kwargs.get(flag) is None and getattr(cfg, flag, False)):
                    raise ValueError(f"{flag}=True is not supported with micro_batches={state.micro_batches} "
                                     "(per-layer outputs would be captured per chunk); place with micro_batches=1")
        state.memo.clear()
        state.recorded = None
        return _map_tensors(args, first_mv), _map_tensors(kwargs, first_mv)

    def owner_pre(module, args, kwargs):
        state.memo.clear()
        state.recorded = None

    def owner_post(module, args, kwargs, output):
        state.memo.clear()  # drop the copies made for this forward
        state.recorded = None

    state.handles.append(model.register_forward_pre_hook(top_hook, with_kwargs=True))
    if parts.owner is not model:
        state.handles.append(parts.owner.register_forward_pre_hook(owner_pre, with_kwargs=True))
    state.handles.append(parts.owner.register_forward_hook(owner_post, with_kwargs=True))

    if micro_batches > 1:
        if any(d.type == "cuda" for d in devs):
            # One stream per stage, so two stages on the same GPU can also overlap.
            state.streams = [torch.cuda.Stream(device=d) if d.type == "cuda" else None for d in devs]
        for i, layer in enumerate(parts.layers):
            had = "forward" in layer.__dict__
            state.saved_forwards.append((layer, had, layer.__dict__.get("forward")))
            layer.forward = _make_layer_forward(state, i, layer.forward)
    setattr(model, _ATTR, state)
    return model


def remove_placement(model: nn.Module) -> nn.Module:
    """Undoes place_model: removes the hooks, restores the layers' forwards and
    moves the whole model to the first stage's device."""
    state = getattr(model, _ATTR, None)
    if state is None:
        return model
    for h in state.handles:
        h.remove()
    for layer, had, old in state.saved_forwards:
        if had:
            layer.forward = old
        else:
            del layer.forward
    _module_to(model, state.first)
    delattr(model, _ATTR)
    return model


def placement_of(model: nn.Module):
    """(devices, layer counts, micro_batches) of a placed model, or None."""
    st = getattr(model, _ATTR, None)
    if st is None:
        return None
    return [str(d) for d in st.devices], [b - a for a, b in st.bounds], st.micro_batches


# ----------------------------------------------------------------------------------------------
# micro-batch pipeline


def _hidden_of(args, kwargs):
    return args[0] if args else kwargs.get("hidden_states")


def _make_layer_forward(state: _State, index: int, orig):
    """Layer `index`'s forward while micro-batching.

    The HF model's loop calls the layers one after the other, each with its own
    arguments (Gemma 2 gives sliding-window layers another mask than full-attention
    layers; other models may differ per layer too). So the calls are recorded, not
    run: layers 0..L-2 return their input hidden states unchanged (the loop only
    passes them on), and the last layer's call runs the whole pipeline with every
    layer's own recorded arguments and returns the real result."""
    n_layers = len(state.parts.layers)

    def forward(*args, **kwargs):
        if state.in_runner:
            return orig(*args, **kwargs)
        if index == 0:
            state.recorded = None
            h = _hidden_of(args, kwargs)
            if not (isinstance(h, torch.Tensor) and h.dim() >= 2 and h.shape[0] > 1):
                return orig(*args, **kwargs)  # nothing to split: the layers run one by one as usual
            state.recorded = []
        if state.recorded is None:
            return orig(*args, **kwargs)
        if len(state.recorded) != index:
            state.recorded = None
            raise RuntimeError(f"placement: decoder layer {index} was called out of order (micro-batching needs the "
                               f"model to call its {n_layers} layers once each, in order)")
        state.recorded.append((args, kwargs))
        if index == n_layers - 1:
            calls, state.recorded = state.recorded, None
            return _run_pipeline(state, calls)
        h = _hidden_of(args, kwargs)
        return (h,) if state.tuple_out else h
    return forward


def _find_cache(args, kwargs):
    from transformers.cache_utils import Cache

    for k, v in kwargs.items():
        if isinstance(v, Cache):
            return ("kw", k), v
    for i, v in enumerate(args):
        if isinstance(v, Cache):
            return ("arg", i), v
    return None, None


def _chunk_cache(cache, bounds, n_layers):
    """Per-chunk views of a full-batch cache: _ChunkedCache, or for an encoder-decoder
    cache (self-attention + cross-attention caches) one for each part."""
    if hasattr(cache, "self_attention_cache") and hasattr(cache, "cross_attention_cache"):
        return _ChunkedEncoderDecoderCache(cache, bounds, n_layers)
    return _ChunkedCache(cache, bounds, n_layers)


class _ChunkedEncoderDecoderCache:
    """EncoderDecoderCache: its two caches chunked separately; each chunk also gets its
    own copy of `is_updated` (layer j's cross-attention keys are computed on the first
    step, then reused), merged back like the tensors."""

    def __init__(self, cache, bounds, n_layers):
        self.cache = cache
        self.parts = [_chunk_cache(cache.self_attention_cache, bounds, n_layers),
                      _chunk_cache(cache.cross_attention_cache, bounds, n_layers)]
        self.chunks = []
        for c in range(len(bounds)):
            sub = copy.copy(cache)
            sub.self_attention_cache = self.parts[0].chunks[c]
            sub.cross_attention_cache = self.parts[1].chunks[c]
            if isinstance(getattr(cache, "is_updated", None), dict):
                sub.is_updated = dict(cache.is_updated)
            self.chunks.append(sub)

    def record_stream(self, j, stream):
        for part in self.parts:
            part.record_stream(j, stream)

    def merge(self, j):
        for part in self.parts:
            part.merge(j)
        if isinstance(getattr(self.cache, "is_updated", None), dict) and j in self.chunks[-1].is_updated:
            self.cache.is_updated[j] = self.chunks[-1].is_updated[j]  # the same for every chunk


class _ChunkedCache:
    """Per-chunk views of one full-batch HF cache (see the module docstring)."""

    def __init__(self, cache, bounds, n_layers):
        if not isinstance(getattr(cache, "layers", None), list):
            raise ValueError(f"micro_batches > 1: cache type {type(cache).__name__} is not supported "
                             "(needs an HF Cache with a `layers` list, e.g. DynamicCache or StaticCache)")
        rep = getattr(cache, "layer_class_to_replicate", None)
        while len(cache.layers) < n_layers:
            if rep is None:
                raise ValueError(f"micro_batches > 1: cache {type(cache).__name__} has {len(cache.layers)} layers "
                                 f"for a model with {n_layers}")
            cache.layers.append(rep())
        self.cache = cache
        self.bounds = bounds
        self.batch = bounds[-1][1]
        self.chunks = []
        self.views = []  # views[c][j]: {attr: the slice tensor we handed out}
        for b0, b1 in bounds:
            sub = copy.copy(cache)
            layers, views = [], []
            for layer in cache.layers:
                new = copy.copy(layer)
                v = {}
                for k, t in vars(layer).items():
                    if isinstance(t, torch.Tensor):
                        if t.dim() >= 2 and t.shape[0] == self.batch:
                            setattr(new, k, t[b0:b1])
                            v[k] = getattr(new, k)
                        else:
                            setattr(new, k, t.clone())  # e.g. a static layer's length counter
                layers.append(new)
                views.append(v)
            sub.layers = layers
            self.chunks.append(sub)
            self.views.append(views)

    def record_stream(self, j, stream):
        """Layer j's tensors (the full-batch ones and the chunks' slices/clones, made on
        the current stream) are used on `stream`: tell the caching allocator."""
        for layer in [self.cache.layers[j]] + [c.layers[j] for c in self.chunks]:
            for t in vars(layer).values():
                if isinstance(t, torch.Tensor) and t.is_cuda:
                    t.record_stream(stream)

    def merge(self, j):
        """Called once every chunk has run layer j: rebuilds the full-batch layer."""
        master = self.cache.layers[j]
        subs = [c.layers[j] for c in self.chunks]
        for k, v0 in vars(subs[0]).items():
            if k in self.views[0][j] or (isinstance(v0, torch.Tensor) and v0.dim() >= 2
                                         and vars(master).get(k) is None):
                # batch-sliced tensors (or ones created lazily by this step): concatenate
                # the chunks' results unless they were updated in place through the slices.
                parts = [vars(s)[k] for s in subs]
                if all(p is self.views[c][j].get(k) for c, p in enumerate(parts)):
                    continue
                setattr(master, k, torch.cat(parts, 0))
            elif k in ("batch_size", "max_batch_size") and isinstance(v0, int):
                setattr(master, k, self.batch)
            else:
                setattr(master, k, v0)  # lengths, flags, dtype/device: the same for every chunk


def _chunk_bounds(B, n):
    n = min(n, B)
    q, r = divmod(B, n)
    out, start = [], 0
    for i in range(n):
        size = q + (1 if i < r else 0)
        out.append((start, start + size))
        start += size
    return out


def _run_pipeline(state: _State, calls):
    """Runs every layer on every chunk; calls[j] = (args, kwargs) of layer j's call."""
    layers = state.parts.layers
    L = len(layers)
    hidden = _hidden_of(*calls[0])
    B = hidden.shape[0]
    bounds = _chunk_bounds(B, state.micro_batches)
    n = len(bounds)
    S = len(state.devices)
    cache = next((c for c in (_find_cache(*call)[1] for call in calls) if c is not None), None)
    chunked = _chunk_cache(cache, bounds, L) if cache is not None else None

    # Batch-major tensors (rank >= 2 with the batch as leading dim) are sliced; 1-D
    # tensors such as cache positions and broadcast (leading dim 1) tensors are
    # shared. One slice per tensor and chunk, shared by the layers that get the same
    # tensor (so it crosses to each device once).
    slices = {}

    def splitter(c):
        b0, b1 = bounds[c]

        def split(t):
            if t.dim() < 2 or t.shape[0] != B:
                return t
            key = (id(t), c)
            if key not in slices:
                slices[key] = t[b0:b1]
            return slices[key]
        return split

    # chunk_in[c][j]: layer j's arguments for chunk c (without the hidden states),
    # split and on layer j's device.
    movers = {dev: _mover(state, dev) for dev in state.devices}
    chunk_in = []
    for c in range(n):
        split = splitter(c)
        per_layer = []
        for j, (args, kwargs) in enumerate(calls):
            where, _ = _find_cache(args, kwargs)
            a = _map_tensors(args[1:] if args else (), split)
            kw = _map_tensors({k: v for k, v in kwargs.items() if k != "hidden_states"}, split)
            if where is not None and chunked is not None:
                if where[0] == "kw":
                    kw[where[1]] = chunked.chunks[c]
                else:
                    a = list(a)
                    a[where[1] - 1] = chunked.chunks[c]
                    a = tuple(a)
            mv = movers[state.layer_device[j]]
            per_layer.append((_map_tensors(a, mv), _map_tensors(kw, mv)))
        chunk_in.append(per_layer)
    hs = [hidden[b0:b1] for b0, b1 in bounds]

    streams = state.streams
    cuda = bool(streams)
    if cuda:
        # Every chunk's inputs were copied to every stage device up front on the
        # current streams (they are small: masks, cos/sin, position ids); the stage
        # streams wait for those copies once, here.
        for s, dev in enumerate(state.devices):
            st = streams[s]
            if st is None:
                continue
            st.wait_stream(torch.cuda.current_stream(dev))
            if state.devices[0].type == "cuda" and state.devices[0] != dev:
                st.wait_stream(torch.cuda.current_stream(state.devices[0]))

            def rec(t, st=st):
                if t.is_cuda:
                    t.record_stream(st)
                return t
            for c in range(n):
                for j in range(*state.bounds[s]):
                    _map_tensors(chunk_in[c][j], rec)
            if s == 0:
                hidden.record_stream(st)
            if chunked is not None:
                for j in range(*state.bounds[s]):
                    chunked.record_stream(j, st)

    events = [[None] * n for _ in range(S)]
    outs = [None] * n
    state.in_runner = True
    try:
        # Wavefront: at step t stage s runs chunk t - s. Issued from one host thread;
        # on CUDA each stage has its own stream and waits on the previous stage's
        # event for that chunk, so the host never blocks and the GPUs overlap.
        for t in range(n + S - 1):
            for s in range(S):
                c = t - s
                if not 0 <= c < n:
                    continue
                dev = state.devices[s]
                st = streams[s] if cuda else None
                ctx = torch.cuda.stream(st) if st is not None else _null()
                with ctx:
                    if st is not None and s > 0 and events[s - 1][c] is not None:
                        st.wait_event(events[s - 1][c])
                    h = hs[c]
                    for j in range(*state.bounds[s]):
                        a, kw = chunk_in[c][j]
                        out = layers[j](h, *a, **kw)
                        if isinstance(out, tuple):
                            state.tuple_out = True
                            h = out[0]
                        else:
                            state.tuple_out = False
                            h = out
                        if chunked is not None and c == n - 1:
                            chunked.merge(j)
                    if s + 1 < S:
                        nxt = state.devices[s + 1]
                        h = _copy_to(h, nxt)
                        if cuda and streams[s + 1] is not None and h.is_cuda:
                            h.record_stream(streams[s + 1])
                    hs[c] = h
                    if st is not None:
                        ev = torch.cuda.Event()
                        ev.record(st)
                        events[s][c] = ev
                if s == S - 1:
                    outs[c] = h
    finally:
        state.in_runner = False
    last = state.devices[-1]
    if cuda:
        for s, dev in enumerate(state.devices):
            if streams[s] is not None:
                torch.cuda.current_stream(dev).wait_stream(streams[s])
        cur = torch.cuda.current_stream(last) if last.type == "cuda" else None
        if cur is not None:
            for o in outs:
                o.record_stream(cur)
    h = torch.cat(outs, 0)
    return (h,) if state.tuple_out else h


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False
