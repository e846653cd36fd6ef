#!/usr/bin/env bash
# Fill the ignored folder .gpu_bundle/ with what scripts/gpu_check.sh needs on a GPU machine that
# has no network: the missing wheels, a CelebA-64 training pack made by `ddpmkit prepare`, FID
# reference statistics computed here, and the FID Inception weights in pieces that fit the device
# tool's 64 MiB per call. Prints each device call's size against that limit; fails if one is over.
#
#   DDPMKIT_DATA_ROOT=../shared/celeba DDPMKIT_FID_WEIGHTS=../shared/fid/pt_inception-2015-12-05-fid-nofc.pth \
#     bash scripts/gpu_bundle.sh            # the GPU run's bundle: 7 wheels from PyPI; the reference
#                                           # statistics take ~20 min of 2 CPU cores once (then cached)
#   ... bash scripts/gpu_bundle.sh --tiny   # (or DDPMKIT_GPU_CHECK_TINY=1) the CPU dry run's: no downloads
#
# Options: --celeba DIR, --fid-weights FILE, --n-ref N, --dir DIR (see benchmarks/gpu_bundle.py).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONUNBUFFERED=1
exec "$PYTHON" benchmarks/gpu_bundle.py "$@"
