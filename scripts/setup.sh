#!/usr/bin/env bash
# Create .venv and install nonuniform with CPU torch. Idempotent; safe to re-run.
# torch==2.13.0 is installed *first* and explicitly: the machine's CPU wheel satisfies it, so pip
# never resolves a multi-GB CUDA build. On a machine without that wheel, pip falls back to PyPI's
# CPU index only if you set PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu yourself.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if [ -d /opt/wheels ]; then export PIP_FIND_LINKS="${PIP_FIND_LINKS:-/opt/wheels}"; fi
.venv/bin/python -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.13.0') else 1)" 2>/dev/null \
  || .venv/bin/pip install -q "torch==2.13.0"
.venv/bin/pip install -q -e ".[dev]"
