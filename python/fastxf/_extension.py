"""Loads fastxf's compiled ops (torch.ops.fastxf.*) and reports how they were built."""

from __future__ import annotations

import torch  # noqa: F401  (loads libtorch before the extension that links it)

from . import _C  # importing runs the TORCH_LIBRARY registrations

_BUILD = _C.build_info()


def build_info() -> dict:
    """How the extension was built: version, whether the CUDA kernels exist, their archs."""
    return dict(_BUILD)


def cuda_kernels_built() -> bool:
    return bool(_BUILD["cuda"])


def require_kernels_for(device: torch.device, op: str) -> None:
    """Raises a clear error when `op` is called on CUDA tensors but the CUDA kernels were not built."""
    if device.type == "cuda" and not cuda_kernels_built():
        raise RuntimeError(
            f"fastxf.{op}: this fastxf build has no CUDA kernels (it was built without nvcc or against a "
            "CPU-only torch). Reinstall on a machine with nvcc and a CUDA build of torch: "
            "`FASTXF_CUDA=ON pip install --no-build-isolation .`"
        )
