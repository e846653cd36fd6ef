"""Finding, fetching and checking the FID Inception weights file.

Where the file is looked for, in order:
1. the setting `fid.weights`, then $DDPMKIT_FID_WEIGHTS: the first that is set decides, so a
   mistyped path is reported rather than quietly replaced by another file;
2. pytorch-fid's own file in torch's hub cache, `torch.hub.get_dir()/checkpoints/<name>` (where
   pytorch-fid keeps it: a file it downloaded once is found);
3. online, pytorch-fid's own download (its URL, into that same place), with a progress bar.
Offline with none of them, one line names the three ways.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Callable, Optional

from pytorch_fid.inception import FID_WEIGHTS_URL
from torch.hub import download_url_to_file, get_dir

from ddpmkit.errors import DdpmkitError
from ddpmkit.settings import FID_WEIGHTS_ENV

PYTORCH_FID_NAME = FID_WEIGHTS_URL.rsplit("/", 1)[-1]  # pt_inception-2015-12-05-6726825d.pth
# the fc-less export of the same network, and (by its torch.hub hash prefix) pytorch-fid's download
KNOWN_SHA256 = ("c88ec2623a2e40f17a7d1fb9bf78257776b25f267b295deceb7d43d274478ebc",)
KNOWN_SHA256_PREFIXES = ("6726825d",)

_sha_cache: dict[tuple[str, int, int], str] = {}


def hub_weights_path() -> Path:
    """Where pytorch-fid keeps its weights: torch.hub.get_dir()/checkpoints/pt_inception-…pth."""
    return Path(get_dir()) / "checkpoints" / PYTORCH_FID_NAME


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def resolve_weights(weights: Optional[Path] = None, log: Callable[[str], None] = _stderr) -> Path:
    """The weights file: `weights` (fid.weights) if given, else $DDPMKIT_FID_WEIGHTS if set, else
    pytorch-fid's file in torch's hub cache, downloaded there first if absent (`log` says so; the
    bar goes to stderr). A file that is not there is a one-line DdpmkitError naming the ways."""
    env = os.environ.get(FID_WEIGHTS_ENV)
    hub = hub_weights_path()
    if weights is not None or env:
        path, origin = (Path(weights), "fid.weights") if weights is not None else (Path(env), f"${FID_WEIGHTS_ENV}")
        path = path.expanduser()
        if path.is_file():
            return path
        raise DdpmkitError(f"FID Inception weights not found: {path} (from {origin}) is not a file; {_ways(hub)}")
    if hub.is_file():
        return hub
    log(f"downloading pytorch-fid's FID Inception weights from {FID_WEIGHTS_URL} to {hub}")
    try:
        hub.parent.mkdir(parents=True, exist_ok=True)
        download_url_to_file(FID_WEIGHTS_URL, str(hub), hash_prefix=KNOWN_SHA256_PREFIXES[0], progress=True)
    except (OSError, RuntimeError) as e:  # no network (URLError is an OSError), or a bad download (hash)
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DdpmkitError(f"FID Inception weights not found, and downloading them failed ({reason}); {_ways(hub)}") from e
    return hub


def _ways(hub: Path) -> str:
    """The three ways to give ddpmkit the weights, for an error message."""
    return (
        f"set ${FID_WEIGHTS_ENV} (or --set fid.weights=PATH) to the file, put pytorch-fid's file at {hub}, "
        f"or run once with network access to download it from {FID_WEIGHTS_URL}"
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
