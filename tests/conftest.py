"""Test configuration: tests marked `cuda` run only where a GPU and fastxf's
CUDA kernels are both present; `DEVICES` parametrises tests over CPU and, when
possible, CUDA."""

import pytest
import torch

import fastxf

HAS_CUDA = torch.cuda.is_available() and fastxf.cuda_kernels_built()
DEVICES = ["cpu"] + (["cuda"] if HAS_CUDA else [])


def pytest_collection_modifyitems(config, items):
    # A test parametrised with device="cuda" is a CUDA test too, so that
    # `pytest -m cuda` (the GPU machine's run) selects it.
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and any(str(v) == "cuda" for v in callspec.params.values()):
            item.add_marker(pytest.mark.cuda)
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU and fastxf built with its CUDA kernels")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
