"""The prepared-image cache: one folder per (settings, source) under `data.cache_dir`.

A cache folder holds

- ``images.npy``: (N, 3, S, S) uint8, a raw .npy that `numpy.load(mmap_mode=...)` memory-maps;
- ``attributes.npy``: (N, 40) int8, +1 / -1, 0 where the attribute file has no row (optional);
- ``index.json``: file names, split codes (0 train, 1 val, 2 test, -1 not in the partition),
  attribute names, the settings and source that made it, and the counts;
- ``report.txt``: the skipped (corrupt, truncated, non-image) files with the reason;
- ``COMPLETE``: written last, holding the cache key.

It is built in a temporary folder and renamed into place (`io_utils.atomic_path`), so a
prepare that dies half-way leaves only a dot-named temporary, never a folder taken as complete.
No pickle anywhere.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from ddpmkit.data.celeba import SPLIT_NAMES
from ddpmkit.errors import DdpmkitError

FORMAT_VERSION = 1
MARKER = "COMPLETE"
IMAGES = "images.npy"
ATTRIBUTES = "attributes.npy"
INDEX = "index.json"
REPORT = "report.txt"


def cache_key(settings: dict[str, Any], fingerprint: str) -> str:
    """sha256 of the settings that shape the pixels and of the source identity."""
    blob = json.dumps({"format": FORMAT_VERSION, "settings": settings, "source": fingerprint}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def cache_name(dataset: str, layout: str, settings: dict[str, Any], key: str) -> str:
    """Readable and unique: e.g. ``celeba-official-64-ddim-train-3f2a9c1b04de``."""
    return f"{dataset}-{layout}-{settings['size']}-{settings['crop']}-{settings['split']}-{key[:12]}"


def is_complete(path: Path, key: str | None = None) -> bool:
    """True when `path` is a finished cache (marker present, matching `key` when given)."""
    marker = Path(path) / MARKER
    try:
        text = marker.read_text().strip()
    except OSError:
        return False
    return (key is None or text == key) and (Path(path) / IMAGES).is_file() and (Path(path) / INDEX).is_file()


def read_index(path: Path) -> dict[str, Any]:
    try:
        return json.loads((Path(path) / INDEX).read_text())
    except (OSError, ValueError) as e:
        raise DdpmkitError(f"cache {path} has no readable {INDEX}: {e}") from e


def open_images(path: Path, mode: str = "r") -> np.ndarray:
    """Memory-map ``images.npy``: (N, 3, S, S) uint8. `mode="c"` gives a writable copy-on-write view."""
    path = Path(path)
    if not is_complete(path):
        raise DdpmkitError(f"{path} is not a complete ddpmkit cache (no {MARKER} marker); run `ddpmkit prepare`")
    return np.load(path / IMAGES, mmap_mode=mode, allow_pickle=False)


def shrink_npy(path: Path, n: int) -> None:
    """Cut a C-order .npy file down to its first `n` rows, in place.

    The header is rewritten at its old length (the shorter shape is padded with spaces, which the
    .npy format allows) and the file truncated: no copy of the pixel data.
    """
    with open(path, "r+b") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(f)
        data_start = f.tell()
        if fortran or n > shape[0]:
            raise ValueError(f"cannot shrink {path} from {shape[0]} to {n} rows")
        new_shape = (n, *shape[1:])
        header = repr({"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": new_shape})
        prefix = 10 if version == (1, 0) else 12  # magic (6) + version (2) + length (2 or 4)
        room = data_start - prefix
        if len(header) + 1 > room:
            raise ValueError(f"new header does not fit in {path}")
        f.seek(prefix)
        f.write((header + " " * (room - len(header) - 1) + "\n").encode("latin1"))
        f.truncate(data_start + n * int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize)


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).iterdir() if p.is_file())


def describe_cache(path: Path) -> dict[str, Any]:
    """What a complete cache holds, as plain data: counts per split, settings, source, size on disk."""
    path = Path(path)
    if not is_complete(path):
        raise DdpmkitError(f"{path} is not a complete ddpmkit cache (no {MARKER} marker)")
    index = read_index(path)
    splits = index.get("split", [])
    per_split = {name: 0 for name in SPLIT_NAMES.values()}
    for code in splits:
        per_split[SPLIT_NAMES.get(code, SPLIT_NAMES[-1])] += 1
    counts = index.get("counts", {})
    source = index.get("source", {})
    return {
        "path": str(path),
        "images": len(splits),
        "shape": index.get("shape"),
        "per_split": per_split,
        "settings": index.get("settings", {}),
        "layout": source.get("layout"),
        "root": source.get("root"),
        "skipped": counts.get("skipped", 0),
        "attributes_missing": counts.get("attributes_missing"),
        "has_attributes": bool(index.get("attribute_names")),
        "bytes": dir_size(path),
        "created": index.get("created"),
    }


def stale_temporaries(cache_dir: Path) -> list[Path]:
    """Leftovers of prepares that were killed (dot-named ``*.tmp`` folders)."""
    cache_dir = Path(cache_dir)
    if not cache_dir.is_dir():
        return []
    return sorted(p for p in cache_dir.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp"))


def find_caches(cache_dir: Path) -> list[Path]:
    cache_dir = Path(cache_dir)
    if not cache_dir.is_dir():
        return []
    return sorted(p for p in cache_dir.iterdir() if p.is_dir() and is_complete(p))


__all__ = [
    "cache_key", "cache_name", "is_complete", "read_index", "open_images", "shrink_npy",
    "describe_cache", "find_caches", "stale_temporaries",
]
