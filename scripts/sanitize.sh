#!/usr/bin/env bash
# Builds the CPU kernels with AddressSanitizer + UndefinedBehaviorSanitizer into
# build/sanitize and runs the op tests against that build (CI runs this after
# the test suite). Needs the venv of scripts/setup.sh. Extra args go to pytest.
#   FASTXF_SANITIZE  checks to enable (default address,undefined)
set -euo pipefail
cd "$(dirname "$0")/.."
VPY=$PWD/.venv/bin/python
BUILD=build/sanitize
export PATH="$PWD/.venv/bin:$PATH"  # the venv's cmake (>= 3.26)
cmake -S . -B "$BUILD" -G Ninja -DPython_EXECUTABLE="$VPY" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DFASTXF_CUDA=OFF -DFASTXF_EMULATOR=OFF -DFASTXF_SANITIZE="${FASTXF_SANITIZE:-address,undefined}" >/dev/null
cmake --build "$BUILD" -j "${CMAKE_BUILD_PARALLEL_LEVEL:-2}"
# A private copy of the package with the instrumented module, ahead of the
# installed fastxf on sys.path.
rm -rf "$BUILD/pkg" && mkdir -p "$BUILD/pkg"
cp -r python/fastxf "$BUILD/pkg/"
rm -f "$BUILD"/pkg/fastxf/_C*.so
cp "$BUILD"/_C*.so "$BUILD/pkg/fastxf/"
# The sanitizer runtimes must be loaded before anything else: python and torch
# are not instrumented, so ASan is preloaded (leak checking off: the interpreter
# keeps memory alive on purpose at exit).
ASAN_LIB=$(g++ -print-file-name=libasan.so)
UBSAN_LIB=$(g++ -print-file-name=libubsan.so)
export LD_PRELOAD="$ASAN_LIB $UBSAN_LIB"
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=0:halt_on_error=1:detect_odr_violation=0
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export PYTHONPATH="$PWD/$BUILD/pkg:$PWD"
"$VPY" - <<'PY'
import fastxf, os
assert os.path.dirname(fastxf._C.__file__).endswith("build/sanitize/pkg/fastxf"), fastxf._C.__file__
print("fastxf under sanitizers:", fastxf._C.__file__)
PY
exec "$VPY" -m pytest -q -p no:cacheprovider tests/test_attention.py tests/test_norm.py "$@"
