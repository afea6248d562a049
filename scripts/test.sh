#!/usr/bin/env bash
# Sets up .venv (scripts/setup.sh) and runs the test suite. Extra args go to pytest.
# The build includes the CPU emulator of the CUDA kernels (FASTXF_EMULATOR=ON,
# fastxf._emu), so tests/test_emulated_*.py run the CUDA kernels without a GPU;
# FASTXF_EMULATOR=OFF bash scripts/test.sh skips it (and those tests).
set -euo pipefail
cd "$(dirname "$0")/.."
export FASTXF_EMULATOR=${FASTXF_EMULATOR:-ON}
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
