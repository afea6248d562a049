#!/usr/bin/env bash
# Incremental development build without pip: configures CMake in build/dev (or
# $FASTXF_BUILD_DIR), builds fastxf._C and copies it into python/fastxf/ so that
# `PYTHONPATH=python python -m pytest` uses it. Extra args go to cmake configure,
# e.g. scripts/dev_build.sh -DFASTXF_CUDA=OFF, -DFASTXF_PTXAS_VERBOSE=ON or -DFASTXF_EMULATOR=ON.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
BUILD=${FASTXF_BUILD_DIR:-build/dev}
cmake -S . -B "$BUILD" -G Ninja -DPython_EXECUTABLE="$(command -v "$PY")" -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
cmake --build "$BUILD" -j "${FASTXF_JOBS:-2}"
cp "$BUILD"/_C*.so python/fastxf/
# The CPU emulator module, when configured with -DFASTXF_EMULATOR=ON.
if ls "$BUILD"/_emu*.so >/dev/null 2>&1; then cp "$BUILD"/_emu*.so python/fastxf/; fi
echo "built $(ls "$BUILD"/_C*.so "$BUILD"/_emu*.so 2>/dev/null)"
