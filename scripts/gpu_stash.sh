#!/usr/bin/env bash
# On the GPU machine, after copying in a piece of the FID weights on its own (a bundle made with
# --max-bytes: docs/offline-gpu-kit.md): put every .gpu_bundle/pieceN/inception.partN present into
# $DDPMKIT_FID_STAGING (default /tmp/ddpmkit_fid), where scripts/gpu_check.sh finds and joins them.
set -euo pipefail
cd "$(dirname "$0")/.."
STAGING="${DDPMKIT_FID_STAGING:-/tmp/ddpmkit_fid}"
BUNDLE="${DDPMKIT_GPU_BUNDLE:-.gpu_bundle}"
shopt -s nullglob
parts=("$BUNDLE"/piece[0-9]*/inception.part*)
if [ ${#parts[@]} -eq 0 ]; then
  echo "gpu_stash: FAIL: no $BUNDLE/pieceN/inception.partN here: copy a piece folder of the bundle in first" >&2
  exit 1
fi
mkdir -p "$STAGING"
for p in "${parts[@]}"; do
  cp "$p" "$STAGING/"
  echo "gpu_stash: $(basename "$p") ($(stat -c %s "$p") bytes) -> $STAGING"
done
if command -v nvidia-smi >/dev/null; then nvidia-smi -L || true; fi
