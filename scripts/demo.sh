#!/usr/bin/env bash
# Sets up .venv (scripts/setup.sh) and runs the demo: a built-in model with random
# weights, optimized by fastxf, checked against Hugging Face and timed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m fastxf demo "$@"
