"""Calling torch.ops.fastxf.* from the model hot path with as little host work as possible.

The op wrappers in fastxf.ops validate every argument in Python before calling
the op; in a decode step that is a large part of a small layer's host time. The
model code calls the ops' overloads directly instead (`op(name)(*args)`):

- the arguments come from modules whose weights were checked (and probed) at
  optimize time, and the C++ ops repeat every check as a TORCH_CHECK, so a bad
  call still fails with a message naming the argument;
- the ops' autograd kernels are C++ (csrc/autograd.cpp): when no graph can be
  recorded (grad mode off, or no input requires grad) they only redispatch, so
  there is nothing left to skip. (This module used to enter
  `_AutoDispatchBelowAutograd` under no_grad to avoid a Python autograd kernel;
  with the C++ one, that context manager cost more than it saved.)
"""

from __future__ import annotations

_OPS: dict = {}


def op(name: str):
    """torch.ops.fastxf.<name>.default, looked up once (the extension is loaded by then)."""
    overload = _OPS.get(name)
    if overload is None:
        import torch

        from .. import _extension  # noqa: F401  (registers the ops)

        overload = _OPS[name] = getattr(torch.ops.fastxf, name).default
    return overload
