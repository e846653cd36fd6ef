#!/usr/bin/env bash
# Device call 1 of the GPU check: copy the FID weights piece carried in this call (.gpu_bundle/fid1)
# to /tmp/ddpmkit_fid ($DDPMKIT_FID_STAGING), where it survives while the machine stays warm (about
# 30 s between calls), for call 2 (scripts/gpu_check.sh), which joins the pieces and checks them.
set -euo pipefail
cd "$(dirname "$0")/.."
STAGING="${DDPMKIT_FID_STAGING:-/tmp/ddpmkit_fid}"
BUNDLE="${DDPMKIT_GPU_BUNDLE:-.gpu_bundle}"
shopt -s nullglob
parts=("$BUNDLE"/fid[0-9]*/inception.part*)
if [ ${#parts[@]} -eq 0 ]; then
  echo "gpu_ferry: FAIL: no $BUNDLE/fidN/inception.partN here: name .gpu_bundle/fid1 in the call's carry" >&2
  exit 1
fi
mkdir -p "$STAGING"
for p in "${parts[@]}"; do
  cp "$p" "$STAGING/"
  echo "gpu_ferry: $(basename "$p") ($(stat -c %s "$p") bytes) -> $STAGING"
done
if command -v nvidia-smi >/dev/null; then nvidia-smi -L || true; fi
