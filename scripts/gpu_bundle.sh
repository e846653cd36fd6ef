#!/usr/bin/env bash
# Fill the ignored folder .gpu_bundle/ with what scripts/gpu_check.sh needs on a GPU machine that has
# no internet: the missing wheels, a CelebA-64 training pack made by `ddpmkit prepare`, FID reference
# statistics computed here, and the FID Inception weights (docs/offline-gpu-kit.md; code in gpukit/).
#
#   DDPMKIT_DATA_ROOT=../shared/celeba DDPMKIT_FID_WEIGHTS=../shared/fid/pt_inception-2015-12-05-fid-nofc.pth \
#     bash scripts/gpu_bundle.sh            # the GPU run's bundle: 7 wheels from PyPI; the reference
#                                           # statistics take ~20 min of 2 CPU cores once (then cached)
#   ... bash scripts/gpu_bundle.sh --max-bytes 100MB   # each copy to the GPU machine at most 100 MB
#   ... bash scripts/gpu_bundle.sh --tiny   # (or DDPMKIT_GPU_CHECK_TINY=1) the CPU dry run's: no downloads
#
# Options: --celeba DIR, --fid-weights FILE, --n-ref N, --max-bytes N, --dir DIR (gpukit/bundle.py --help).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONUNBUFFERED=1
exec "$PYTHON" gpukit/bundle.py "$@"
