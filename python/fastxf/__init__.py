"""fastxf: fused transformer inference kernels as torch custom ops, and one-call
rewriting of Hugging Face models onto them."""

from ._extension import build_info, cuda_kernels_built
from . import ops
from .placement import plan_placement

__version__ = build_info()["version"]

__all__ = ["__version__", "build_info", "cuda_kernels_built", "ops", "plan_placement"]
