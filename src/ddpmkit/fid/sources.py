"""Where FID images come from: an image folder, a prepared dataset cache, the generated demo
faces, or a stats .npz.

Each image source yields uint8 batches (B, 3, H, W) and carries an `identity`, the facts that
decide its statistics (used as the stats cache key): for a folder, its file names, sizes and
mtimes; for a prepared cache, a digest of the pixels of the rows read, with the split and the count.

A model is compared with the prepared cache of the data it was trained on: the same dataset kind
and root (index.json "data", written by `prepare`), size, crop and split.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ddpmkit.data.cache import find_caches, is_complete, open_images, read_index
from ddpmkit.data.celeba import SPLIT_CODES
from ddpmkit.data.prepare import expected_identity
from ddpmkit.data.synthetic import make_faces
from ddpmkit.errors import DdpmkitError

if TYPE_CHECKING:
    from ddpmkit.settings import DataConfig

# pytorch-fid's IMAGE_EXTENSIONS, so a folder means the same images to both
IMAGE_EXTENSIONS = frozenset({"bmp", "jpg", "jpeg", "pgm", "png", "ppm", "tif", "tiff", "webp"})


@dataclass
class ImageSource:
    """A finite set of images. `read(batch_size)` yields uint8 (B, 3, H, W) tensors."""

    label: str
    identity: dict[str, Any]
    count: int
    read: Callable[[int], Iterator[Tensor]]
    origin: str = ""  # the folder or cache it reads, for people; empty for generated images


def list_image_files(folder: Path) -> list[Path]:
    """Top-level image files, sorted by name (pytorch-fid's choice, so N means the same files)."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS)


def is_image_folder(path: Path) -> bool:
    return Path(path).is_dir() and any(True for _ in list_image_files(path))


def load_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) uint8, via PIL `.convert('RGB')` as pytorch-fid does."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError) as e:
        raise DdpmkitError(f"cannot read image {path}: {e}") from e


def folder_source(folder: Path, n: Optional[int] = None) -> ImageSource:
    """The first `n` (all if None) images of a folder, in sorted name order."""
    folder = Path(folder)
    files = list_image_files(folder) if folder.is_dir() else []
    if not files:
        raise DdpmkitError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in folder {folder}")
    if n is not None:
        if n > len(files):
            raise DdpmkitError(f"asked for {n} images but folder {folder} holds only {len(files)}")
        files = files[:n]
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    identity = {"kind": "folder", "path": str(folder.resolve()), "files": h.hexdigest(), "n": len(files)}

    def read(batch_size: int) -> Iterator[Tensor]:
        for i in range(0, len(files), batch_size):
            arrays = [load_rgb(f) for f in files[i : i + batch_size]]
            shapes = {a.shape for a in arrays}
            if len(shapes) > 1:
                raise DdpmkitError(f"images in {folder} differ in size ({sorted(shapes)[:2]}): resize them first")
            yield torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()

    return ImageSource(f"folder-{folder.name}", identity, len(files), read, str(folder))


def is_prepared_cache(path: Path) -> bool:
    return Path(path).is_dir() and is_complete(Path(path))


def cache_source(path: Path, split: str = "all", n: Optional[int] = None) -> ImageSource:
    """Images of one split ('all' = every image) of a prepared cache (`ddpmkit prepare`)."""
    path = Path(path)
    images = open_images(path)  # (N, 3, S, S) uint8, memory-mapped
    index = read_index(path)
    if split == "all":
        rows = np.arange(len(images))
    else:
        codes = np.asarray(index.get("split", []))
        if len(codes) != len(images):
            raise DdpmkitError(f"cache {path} has no split codes for its {len(images)} images")
        rows = np.flatnonzero(codes == SPLIT_CODES[split])
    if len(rows) == 0:
        raise DdpmkitError(f"cache {path} holds no '{split}' images")
    if n is not None:
        if n > len(rows):
            raise DdpmkitError(f"asked for {n} '{split}' images but cache {path} holds only {len(rows)}")
        rows = rows[:n]
    settings = index.get("settings", {})
    identity = {
        "kind": "cache",
        "pixels_sha256": rows_digest(images, rows),
        "split": split,
        "crop": settings.get("crop"),
        "size": int(images.shape[-1]),
        "n": len(rows),
    }

    def read(batch_size: int) -> Iterator[Tensor]:
        for i in range(0, len(rows), batch_size):
            yield torch.from_numpy(np.ascontiguousarray(images[rows[i : i + batch_size]]))

    return ImageSource(f"{path.name}-{split}", identity, len(rows), read, str(path))


def rows_digest(images: np.ndarray, rows: np.ndarray, chunk: int = 2048) -> str:
    """sha256 of images[rows] (uint8 (N, 3, S, S)), in order.

    Statistics are keyed by pixels, not by the cache key: a cache prepared again from the same files
    (copied, touched: new file times, so a new key) reuses its statistics, and changed pixels never
    do. About 1 GB/s: a second or two for CelebA-64's train split, against minutes of Inception.
    """
    h = hashlib.sha256(repr(tuple(images.shape[1:])).encode())
    for i in range(0, len(rows), chunk):
        h.update(np.ascontiguousarray(images[rows[i : i + chunk]]).tobytes())
    return h.hexdigest()


def synthetic_source(n: int, size: int, seed: int = 0) -> ImageSource:
    """`n` of the generated demo faces (`data.dataset: synthetic`), the demo model's training data."""
    identity = {"kind": "synthetic", "size": int(size), "seed": int(seed), "n": int(n)}

    def read(batch_size: int) -> Iterator[Tensor]:
        yield from make_faces(n, size, seed=seed).split(batch_size)

    return ImageSource(f"synthetic-{size}px-seed{seed}", identity, n, read)


def default_reference(data: "DataConfig", split: str, n: Optional[int] = None) -> ImageSource:
    """What a model trained on `data` is compared with: the first `n` (all if None) images of its
    prepared split (all of a plain folder, which has none), or, for the generated demo faces,
    `n` (default 2,048) of them. Uses data.dataset, root, cache_dir, size, crop, synthetic_seed."""
    if data.dataset == "synthetic":
        return synthetic_source(n or 2048, data.size, int(data.synthetic_seed))
    path = find_prepared_cache(data, split)
    if read_index(path)["data"]["dataset"] == "folder":
        split = "all"  # as for training: `prepare` ignores the split of a plain folder
    return cache_source(path, split, n)


def find_prepared_cache(data: "DataConfig", split: str) -> Path:
    """The prepared cache under data.cache_dir made from this data (dataset kind and resolved
    root, see `data.prepare.data_identity`) with these pixels (size, crop) and split.

    A cache prepared for split 'all' serves every split. A cache that does not record its data
    (made before it was recorded) matches nothing: it could hold any dataset.
    """
    want = expected_identity(data)
    for path in find_caches(Path(data.cache_dir)):
        index = read_index(path)
        made_from, s = index.get("data") or {}, index.get("settings", {})
        if any(made_from.get(k) != v for k, v in want.items()):
            continue
        if s.get("size") == data.size and s.get("crop") == data.crop and s.get("split") in (split, "all"):
            return path
    raise DdpmkitError(
        f"no prepared {want['dataset']} cache of {want['root']} (size {data.size}, crop {data.crop}, "
        f"split {split}) under data.cache_dir={data.cache_dir}: run `ddpmkit prepare` or give REFERENCE"
    )
