"""Explicit pipeline placement of Hugging Face decoder models over several
devices: validated placements, an explainable planner, micro-batched pipelined
execution for forward and generate, KV caches that live with their layers.
`python -m fastxf.distributed` runs the same stages one per process under torchrun."""

from ._discover import discover, find_decoder_layers
from .devices import parse_devices
from .planner import Plan, StagePlan, plan_placement
from .runtime import place_model, placement_of, remove_placement

__all__ = ["place_model", "remove_placement", "plan_placement", "placement_of", "Plan", "StagePlan",
           "find_decoder_layers", "discover", "parse_devices"]
