#!/usr/bin/env bash
# The project's one prepared GPU check (issue 11): prints one JSON object with every GPU figure.
# Run once on a GPU machine from the repository root:  bash benchmarks/gpu_check.sh
# `--smoke` runs tiny sizes on any machine in seconds (tests/test_gpu_check.py does).
# Installs the project first when `longtail` is not importable (torch must already be there).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if ! "$PY" -c "import longtail" 2>/dev/null; then
  "$PY" -m pip install --quiet -e . >&2  # keeps an installed torch (CUDA build) when it satisfies the pin
fi
exec timeout "${GPU_CHECK_TIMEOUT:-480}" "$PY" benchmarks/gpu_check.py "$@"
