#!/usr/bin/env bash
# Prove ddpmkit on a GPU in one command (at most 560 s). Run it on the GPU machine from the
# repository root, with .gpu_bundle/main and the last weights piece carried, after device call 1
# (scripts/gpu_ferry.sh) left the first piece in /tmp: README, "Checking on a GPU".
# Everything measured goes to $OUT/gpu_check.md and $OUT/gpu_check.json (a temporary folder when
# OUT is unset); each stage prints PASS or FAIL; the exit code is 0 only when all of them passed.
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
exec "$PYTHON" benchmarks/gpu_check.py "$@"
