#!/usr/bin/env bash
# Prove ddpmkit on a GPU machine without internet in one command (at most 9 minutes): run it there
# from the repository root, with the bundle's kit folder (scripts/gpu_bundle.sh) copied into
# .gpu_bundle/ beside it (docs/offline-gpu-kit.md). The kit's code is in gpukit/.
# Everything measured goes to $OUT/gpu_check.md and $OUT/gpu_check.json (a temporary folder when
# OUT is unset); each stage prints PASS or FAIL as it ends; the exit code is 0 only when all passed.
#
#   bash scripts/gpu_check.sh                                # the GPU run
#   DDPMKIT_GPU_CHECK_TINY=1 bash scripts/gpu_check.sh       # (or --dry-run) the same stages, tiny, on the CPU
#   bash scripts/gpu_check.sh --stages sample,fid            # some stages again
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONUNBUFFERED=1
exec "$PYTHON" gpukit/check.py "$@"
