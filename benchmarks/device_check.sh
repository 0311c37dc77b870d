#!/usr/bin/env bash
# The device check (benchmarks/device_check.py): run it when a GPU is at hand,
#   benchmarks/device_check.sh            # about 5 minutes on one GPU; prints one table
#   benchmarks/device_check.sh --tiny     # seconds: checks the script (also on CPU)
# with the venv that has `pip install -e '.[test,cuda]'` active.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" -m benchmarks.device_check "$@"
