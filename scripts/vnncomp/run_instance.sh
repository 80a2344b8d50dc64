#!/usr/bin/env bash
# VNN-COMP interface: run_instance.sh v1 CATEGORY ONNX VNNLIB RESULTS_FILE TIMEOUT
# Writes sat (with the checked counterexample), unsat, timeout or unknown to RESULTS_FILE. The
# decider gets the time-out minus 3 s for starting Python and loading the network.
set -euo pipefail
if [ "$#" -ne 6 ] || [ "$1" != "v1" ]; then
    echo "usage: run_instance.sh v1 CATEGORY ONNX VNNLIB RESULTS_FILE TIMEOUT" >&2
    exit 1
fi
HERE="$(cd "$(dirname "$0")/../.." && pwd)"
BUDGET="$(python3 -c "t = float('$6'); print(max(t - 3.0, t / 2))")"
"$HERE/.venv/bin/nonuniform" vnnlib "$3" "$4" --timeout "$BUDGET" --out "$5"
