#!/usr/bin/env bash
# Create .venv and install feddymem with the exact pinned packages (requirements.lock).
# Safe to re-run: an existing .venv is reused and brought up to date.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), "feddymem needs Python 3.11"'
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -r requirements.lock
.venv/bin/python -m pip install --quiet --no-deps -e .
.venv/bin/python -c 'import feddymem, torch, flwr, faiss; print("feddymem ready: torch", torch.__version__, "flwr", flwr.__version__)'
