#!/usr/bin/env bash
# Create .venv and install ddpmkit with its test tools. Safe to run again: it only adds what is missing.
# torch and torchvision are installed as one matching pair from PyPI: a torchvision built against
# another torch fails at import ("operator torchvision::nms does not exist").
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
TORCH_PAIR=("torch==2.14.1" "torchvision==0.29.2")

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import torch, torchvision, torchvision.ops; torchvision.ops.nms" >/dev/null 2>&1; then
  echo "installing ${TORCH_PAIR[*]} (about 5 GB, a few minutes on first run)"
  .venv/bin/python -m pip install -q "${TORCH_PAIR[@]}" 2>&1 | grep -v "^WARNING: Location" || true
fi
.venv/bin/python -m pip install -q -e ".[test]" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import ddpmkit, torch, torchvision; print(f'ddpmkit ready: torch {torch.__version__}, torchvision {torchvision.__version__}')"
