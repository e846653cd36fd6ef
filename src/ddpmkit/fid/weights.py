"""Finding and checking the FID Inception weights file; nothing is downloaded.

Search order: the setting `fid.weights`, then $DDPMKIT_FID_WEIGHTS, then the user cache folder
($XDG_CACHE_HOME/ddpmkit/, default ~/.cache/ddpmkit/). The first place that is set decides, so a
mistyped path is reported rather than quietly replaced by another file.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Optional

from ddpmkit.errors import DdpmkitError
from ddpmkit.io_utils import user_cache_dir
from ddpmkit.sections import FID_WEIGHTS_ENV

WEIGHTS_NAME = "pt_inception-2015-12-05-fid-nofc.pth"
# pytorch-fid's own download: the same network, accepted under its own name in the cache folder
PYTORCH_FID_NAME = "pt_inception-2015-12-05-6726825d.pth"
PYTORCH_FID_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{PYTORCH_FID_NAME}"
# the fc-less export, and (by its torch.hub hash prefix) pytorch-fid's own download
KNOWN_SHA256 = ("c88ec2623a2e40f17a7d1fb9bf78257776b25f267b295deceb7d43d274478ebc",)
KNOWN_SHA256_PREFIXES = ("6726825d",)

_sha_cache: dict[tuple[str, int, int], str] = {}


def resolve_weights(weights: Optional[Path] = None) -> Path:
    """The weights file: `weights` (fid.weights) if given, else $DDPMKIT_FID_WEIGHTS if set,
    else the user cache folder. A missing file is a one-line DdpmkitError naming every place."""
    env = os.environ.get(FID_WEIGHTS_ENV)
    cache = user_cache_dir()
    if weights is not None:
        path, origin = Path(weights).expanduser(), "fid.weights"
    elif env:
        path, origin = Path(env).expanduser(), f"${FID_WEIGHTS_ENV}"
    else:
        found = [cache / name for name in (WEIGHTS_NAME, PYTORCH_FID_NAME) if (cache / name).is_file()]
        path, origin = (found[0] if found else cache / WEIGHTS_NAME), "the user cache"
    if path.is_file():
        return path
    raise DdpmkitError(
        f"FID Inception weights not found: {path} (from {origin}) is not a file; searched fid.weights, "
        f"then ${FID_WEIGHTS_ENV}, then {cache}/; download {PYTORCH_FID_URL} into {cache}/ "
        f"or point fid.weights (--set fid.weights=PATH) at it"
    )


def weights_sha256(path: Path) -> str:
    """sha256 of the weights file, memoised per (path, size, mtime): it keys the stats cache."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _sha_cache:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _sha_cache[key] = h.hexdigest()
    return _sha_cache[key]


def check_weights(path: Path) -> str:
    """Return the sha256, or raise if it is none of the known FID Inception exports."""
    sha = weights_sha256(path)
    if sha not in KNOWN_SHA256 and not sha.startswith(KNOWN_SHA256_PREFIXES):
        raise DdpmkitError(
            f"{path} is not a known FID Inception weights file (sha256 {sha[:12]}…); "
            "use the right file or set fid.verify_weights=false"
        )
    return sha
