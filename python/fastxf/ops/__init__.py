"""Typed wrappers around torch.ops.fastxf.*: argument checks, fake kernels for
torch.compile / meta tensors, and the gradient formulas (the fastxf::*_backward
ops that the C++ autograd kernels call)."""

from .attention import attention
from .attention_varlen import attention_varlen
from .norm import layer_norm, rms_norm

__all__ = ["attention", "attention_varlen", "layer_norm", "rms_norm"]
