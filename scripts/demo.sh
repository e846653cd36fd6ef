#!/usr/bin/env bash
# The four commands as a new user runs them: prepare, train, sample, noise-demo.
# With CelebA in ./data/celeba (see docs/celeba.md) it is prepared at 32 px and `train` picks the preset for
# that size and machine (celeba32 on a CPU: one hour, its time budget); without it, the demo on
# generated faces (five minutes). Extra arguments go to `train` (e.g. scripts/demo.sh --time 10m,
# or --max-steps 500 for a fixed length). RUN_DIR=... picks the run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
DDPMKIT=.venv/bin/ddpmkit
PRESET=()
if [ -e data/celeba ]; then
  "$DDPMKIT" prepare --size 32
  RUN_DIR="${RUN_DIR:-runs/celeba32}"
else
  echo "no CelebA in data/celeba: training the demo model on generated faces"
  RUN_DIR="${RUN_DIR:-runs/demo}"
  case " $* " in
    *" --preset "*|*" --preset="*|*" --config "*|*" -c "*) ;;
    *) PRESET=(--preset demo) ;;  # not whatever CelebA cache train would find elsewhere
  esac
fi
RESUME=()
if [ -e "$RUN_DIR/config.yaml" ]; then
  echo "$RUN_DIR already holds a run: continuing it (delete it to start over)"
  RESUME=(--resume)
fi
"$DDPMKIT" train --run-dir "$RUN_DIR" "${PRESET[@]}" "${RESUME[@]}" "$@"
"$DDPMKIT" sample "$RUN_DIR" --n 64 --gif
IMAGE="$(find data/celeba -name '*.jpg' 2>/dev/null | sort | head -n 1 || true)"
if [ -n "$IMAGE" ]; then
  "$DDPMKIT" noise-demo "$IMAGE"
fi
echo "the run's report (rewritten at every checkpoint): $RUN_DIR/report.html"
