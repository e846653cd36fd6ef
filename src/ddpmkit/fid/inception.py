"""The FID Inception-v3 network, built offline from a local weights file.

We use pytorch-fid's `InceptionV3` (the TF inception-2015-12-05 graph that every published FID
uses): it is maintained, small, the PyTorch port most papers report with, and its own
`calculate_fid_given_paths` is the reference our numbers are checked against. It normally downloads its weights; here they come from a file
(`fid.weights`, or $DDPMKIT_FID_WEIGHTS, or ../shared/fid/, or ~/.cache/ddpmkit/).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterable, Iterator, Optional
from unittest import mock

import numpy as np
import torch
from torch import Tensor

from ddpmkit.errors import DdpmkitError
from ddpmkit.settings import FID_WEIGHTS_ENV

WEIGHTS_NAME = "pt_inception-2015-12-05-fid-nofc.pth"
DIMS = 2048  # pool3 features
# the fc-less export in ../shared/fid, and (by its torch.hub hash prefix) pytorch-fid's own download
KNOWN_SHA256 = ("c88ec2623a2e40f17a7d1fb9bf78257776b25f267b295deceb7d43d274478ebc",)
KNOWN_SHA256_PREFIXES = ("6726825d",)
# what the features are: part of every stats cache key
FEATURE_SPEC = "pytorch-fid InceptionV3 pool3 2048; uint8/255 -> bilinear 299 -> [-1,1]"

_sha_cache: dict[tuple[str, int, int], str] = {}


def default_weights_path() -> Path:
    """$DDPMKIT_FID_WEIGHTS, else ../shared/fid/<name> if it exists, else ~/.cache/ddpmkit/<name>."""
    env = os.environ.get(FID_WEIGHTS_ENV)
    if env:
        return Path(env).expanduser()
    shared = Path("..") / "shared" / "fid" / WEIGHTS_NAME
    if shared.is_file():
        return shared
    return Path.home() / ".cache" / "ddpmkit" / WEIGHTS_NAME


def resolve_weights(weights: Optional[Path]) -> Path:
    """The weights file to use; a missing one is a one-line error naming the setting."""
    path = Path(weights).expanduser() if weights is not None else default_weights_path()
    if not path.is_file():
        raise DdpmkitError(
            f"FID Inception weights not found at {path}: set fid.weights (--set fid.weights=PATH) "
            f"or ${FID_WEIGHTS_ENV} to the file {WEIGHTS_NAME}"
        )
    return path


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


def load_inception(weights: Path, device: torch.device | str = "cpu") -> torch.nn.Module:
    """pytorch-fid's InceptionV3 (pool3 block) with the weights from `weights`, eval mode.

    pytorch-fid fetches its state dict through `load_state_dict_from_url`; we hand it ours
    instead (loaded with weights_only=True), so nothing touches the network.
    """
    import pytorch_fid.inception as pfi

    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: say which
        raise DdpmkitError(f"cannot read FID Inception weights {weights}: {e}".splitlines()[0]) from e
    with mock.patch.object(pfi, "load_state_dict_from_url", lambda *a, **k: state):
        model = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[DIMS]])
    return model.to(device).eval()


def to_unit_float(images: Tensor) -> Tensor:
    """uint8 (B, 3, H, W) in [0, 255] -> float32 in [0, 1], exactly torchvision's ToTensor on a PIL image."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected uint8 images (B, 3, H, W), got {images.dtype} {tuple(images.shape)}")
    return images.float().div(255)


def from_model_range(x: Tensor) -> Tensor:
    """Generated images (B, 3, H, W) in [-1, 1] -> uint8, rounded as when saved to PNG."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


@torch.no_grad()
def inception_features(
    model: torch.nn.Module,
    batches: Iterable[Tensor],
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Pool3 features of uint8 image batches (B, 3, H, W): (N, 2048) float64.

    The network resizes to 299x299 (bilinear) and maps [0, 1] to [-1, 1] itself, as in pytorch-fid.
    """
    feats = [_features(model, b, device) for b in batches]
    if not feats:
        return np.empty((0, DIMS))
    return np.concatenate(feats).astype(np.float64)


def _features(model: torch.nn.Module, images: Tensor, device: torch.device | str) -> np.ndarray:
    out = model(to_unit_float(images).to(device))[0]  # (B, 2048, 1, 1)
    return out.reshape(out.shape[0], -1).cpu().numpy()


def rebatch(batches: Iterable[Tensor], batch_size: int, limit: Optional[int] = None) -> Iterator[Tensor]:
    """Regroup image batches into `batch_size` chunks, stopping after `limit` images."""
    buf: list[Tensor] = []
    have, seen = 0, 0
    for b in batches:
        if limit is not None:
            b = b[: max(0, limit - seen)]
        seen += len(b)
        if len(b):
            buf.append(b)
            have += len(b)
        while have >= batch_size:
            cat = torch.cat(buf)
            yield cat[:batch_size]
            rest = cat[batch_size:]
            buf, have = ([rest] if len(rest) else []), len(rest)
        if limit is not None and seen >= limit:
            break
    if have:
        yield torch.cat(buf)
