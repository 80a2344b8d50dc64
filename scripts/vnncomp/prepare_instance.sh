#!/usr/bin/env bash
# VNN-COMP interface: prepare_instance.sh v1 CATEGORY ONNX VNNLIB
# Nothing to convert: checks that the network and the property load (one line and exit 1 if not).
set -euo pipefail
if [ "$#" -ne 4 ] || [ "$1" != "v1" ]; then
    echo "usage: prepare_instance.sh v1 CATEGORY ONNX VNNLIB" >&2
    exit 1
fi
HERE="$(cd "$(dirname "$0")/../.." && pwd)"
"$HERE/.venv/bin/python" - "$3" "$4" <<'PY'
import sys
from nonuniform import load_model
from nonuniform.verify.vnnlib import parse_vnnlib

try:
    model, card = load_model(sys.argv[1])
    prop = parse_vnnlib(sys.argv[2])
except Exception as e:  # the competition only reads the exit code
    print(f"prepare_instance: {str(e).splitlines()[0]}", file=sys.stderr)
    sys.exit(1)
PY
