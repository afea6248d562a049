#!/usr/bin/env bash
# Register / spill / shared-memory report of every CUDA kernel, per arch, as a
# sorted table (one line per kernel and arch), without building the extension:
# each .cu under csrc/ is compiled to a cubin only. Used to check that a change
# to the kernel sources (e.g. routing accesses through csrc/cuda/primitives.cuh)
# leaves the generated code's resources unchanged: diff two reports.
#   scripts/ptxas_report.sh [SRC_ROOT] > report.txt     (archs: $ARCHS, default "80 90a")
set -euo pipefail
ROOT=${1:-$(cd "$(dirname "$0")/.." && pwd)}
NVCC=${NVCC:-/usr/local/cuda/bin/nvcc}
PY=${PYTHON:-python}
TI=$("$PY" -c "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), 'include'))")
for arch in ${ARCHS:-80 90a}; do
  for f in $(cd "$ROOT" && ls csrc/*/*.cu); do
    if ! log=$("$NVCC" -cubin -o /dev/null -std=c++20 -O3 --expt-relaxed-constexpr -arch "sm_$arch" -Xptxas -v \
      -I"$ROOT/csrc" -I"$TI" -I"$TI/torch/csrc/api/include" "$ROOT/$f" 2>&1); then
      echo "$log" >&2
      echo "ptxas_report.sh: $f failed to compile for sm_$arch" >&2
      exit 1
    fi
    echo "$log" |
      awk -v arch="$arch" '
        /Compiling entry function/ { match($0, /\x27[^\x27]+\x27/); name = substr($0, RSTART + 1, RLENGTH - 2) }
        /spill stores/ { spill = $5 "/" $9 }
        /Used [0-9]+ registers/ { match($0, /Used [0-9]+ registers/); regs = substr($0, RSTART + 5, RLENGTH - 15)
                                  smem = "0"; if (match($0, /[0-9]+ bytes smem/)) smem = substr($0, RSTART, RLENGTH - 11)
                                  printf "sm_%s %s regs=%s spill(st/ld)=%s smem=%s\n", arch, name, regs, spill, smem }'
  done
done | sort
