#!/usr/bin/env bash
# One-command setup: a virtual environment in .venv with the CPU build of torch
# and scopegym installed editable with its test, lint and reference extras.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# The CPU build first: a plain 'torch' requirement would otherwise pull a
# multi-GB CUDA build.
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[dev]"
echo "scopegym is installed in .venv; run the tests with: .venv/bin/python -m pytest"
