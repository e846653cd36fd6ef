#!/usr/bin/env bash
# Set up, train the small `demo` model, and sample a grid and a denoising GIF from it.
# Faces come from ./data/celeba when CelebA is there (see README), else from the built-in generator.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
RUN_DIR="${RUN_DIR:-runs/demo}"
DATA=()
if [ -e data/celeba/list_eval_partition.txt ] || [ -e data/celeba/list_eval_partition.csv ]; then
  DATA=(--set data.dataset=celeba)
  echo "CelebA found in data/celeba: training the demo model on real faces at 32x32"
fi
if [ -e "$RUN_DIR/config.yaml" ]; then
  echo "$RUN_DIR already holds a run: continuing it (delete it to start over)"
  .venv/bin/ddpmkit train --run-dir "$RUN_DIR" --resume "${DATA[@]}"
else
  .venv/bin/ddpmkit train --preset demo --run-dir "$RUN_DIR" "${DATA[@]}"
fi
.venv/bin/ddpmkit sample "$RUN_DIR" --n 64 --gif
