"""The extension is built, registers its ops under torch.ops.fastxf, and reports how it was built."""

import subprocess
import sys

import pytest
import torch

import fastxf
from fastxf import _extension


def test_build_info():
    info = fastxf.build_info()
    assert info["version"] == fastxf.__version__ != ""
    assert isinstance(info["cuda"], bool)
    if info["cuda"]:
        assert info["cuda_archs"]


@pytest.mark.parametrize("op", ["layer_norm", "rms_norm", "attention", "attention_varlen"])
def test_ops_registered(op):
    schema = str(getattr(torch.ops.fastxf, op).default._schema)
    assert schema.startswith(f"fastxf::{op}(")


def test_info_command():
    out = subprocess.run([sys.executable, "-m", "fastxf", "info"], capture_output=True, text=True, check=True).stdout
    assert f"fastxf        {fastxf.__version__}" in out
    assert "torch" in out and "transformers" in out and "CUDA kernels" in out


def test_cuda_call_without_cuda_kernels_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(_extension._BUILD, "cuda", False)
    with pytest.raises(RuntimeError, match="no CUDA kernels"):
        _extension.require_kernels_for(torch.device("cuda"), "rms_norm")
    _extension.require_kernels_for(torch.device("cpu"), "rms_norm")  # CPU is always there
