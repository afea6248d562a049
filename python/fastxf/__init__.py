"""fastxf: fused transformer inference kernels as torch custom ops, and one-call
rewriting of Hugging Face models onto them."""

from ._extension import build_info, cuda_kernels_built
from . import ops, testing
from .placement import plan_placement

testing._apply_env()  # FASTXF_EMULATE_CUDA=1


def optimize(model, **options):
    """Rewrites one Hugging Face model instance onto fastxf's kernels (see fastxf.models.optimize)."""
    from .models import optimize as _optimize

    return _optimize(model, **options)


def revert(model):
    """Undoes fastxf.optimize on that instance (see fastxf.models.revert)."""
    from .models import revert as _revert

    return _revert(model)


def explain(model):
    """What fastxf.optimize rewrote and what stayed on Hugging Face's path, and why."""
    from .models import explain as _explain

    return _explain(model)


__version__ = build_info()["version"]

__all__ = ["__version__", "build_info", "cuda_kernels_built", "explain", "ops", "optimize", "plan_placement", "revert"]
