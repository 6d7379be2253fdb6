#!/usr/bin/env bash
# The device check (benchmarks/gpu_check.py): one JSON file and one Markdown table under
# studies/speed/results/gpu_check/ (or the folder given with --out). On the GPU machine, from the checkout:
#   bash benchmarks/gpu_check.sh
# On CPU, the same code path with tiny sizes (what the tests run):
#   bash benchmarks/gpu_check.sh --dry --out /tmp/gpu_check
set -euo pipefail
cd "$(dirname "$0")/.."
exec python benchmarks/gpu_check.py "$@"
