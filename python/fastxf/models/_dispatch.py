"""Calling torch.ops.fastxf.* from the model hot path with as little host work as possible.

The op wrappers in fastxf.ops validate every argument in Python and then go
through the Python autograd kernel that `torch.library.register_autograd`
installs, which walks the arguments looking for tensors that require grad.
In a decode step that is most of a small layer's host time (tens of
microseconds per call against a few for the kernel's own dispatch). The model
code calls the ops directly instead:

- the arguments come from modules whose weights were checked (and probed) at
  optimize time, and the C++ ops repeat every check as a TORCH_CHECK, so a bad
  call still fails with a message naming the argument;
- with grad mode off (generate, or any torch.no_grad / inference_mode region)
  no autograd graph can be recorded anyway, so the autograd key is skipped
  with `_AutoDispatchBelowAutograd`; the other dispatch keys (fake tensors,
  Python modes, functionalization) still run. With grad mode on, or while
  torch.compile traces, the op is called normally and autograd works as before.
"""

from __future__ import annotations

import torch

_BELOW_AUTOGRAD = torch._C._AutoDispatchBelowAutograd
_is_grad_enabled = torch.is_grad_enabled
_is_compiling = torch.compiler.is_compiling
_OPS: dict = {}


def op(name: str):
    """torch.ops.fastxf.<name>.default, looked up once (the extension is loaded by then)."""
    overload = _OPS.get(name)
    if overload is None:
        from .. import _extension  # noqa: F401  (registers the ops)

        overload = _OPS[name] = getattr(torch.ops.fastxf, name).default
    return overload


def call(overload, *args):
    """overload(*args), skipping the autograd kernel when no graph can be recorded."""
    if _is_grad_enabled() or _is_compiling():
        return overload(*args)
    with _BELOW_AUTOGRAD():
        return overload(*args)
