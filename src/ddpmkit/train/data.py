"""The training images of `settings.data`: generated demo faces, or the prepared cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from ddpmkit.data import cache
from ddpmkit.data.loader import ArrayLike
from ddpmkit.data.prepare import prepare_dataset
from ddpmkit.data.synthetic import FACE_ATTRIBUTES, face_attributes, make_faces
from ddpmkit.errors import DdpmkitError
from ddpmkit.progress import make_console
from ddpmkit.settings import DataConfig


def load_training_images(data_cfg: DataConfig, log: Callable[[str], None] = print) -> tuple[ArrayLike, dict[str, Any]]:
    """The uint8 images (N, 3, S, S) in [0, 255] and a description of them (for the run info).

    synthetic: generated faces (a tensor). celeba / folder: the prepared cache, memory-mapped;
    prepared on first use (its progress on stderr).
    """
    if data_cfg.dataset == "synthetic":
        seed = data_cfg.synthetic_seed
        images = make_faces(data_cfg.synthetic_count, data_cfg.size, seed=seed)
        return images, {"dataset": "synthetic", "count": int(images.shape[0]), "size": data_cfg.size, "seed": seed}

    console = make_console()
    result = prepare_dataset(data_cfg, console=console, show_progress=console.is_terminal)
    if result.reused:
        log(f"using prepared cache {result.path}")
    else:
        log(f"prepared {result.counts['ok']} images into {result.path} (first use)")
    images = cache.open_images(result.path, mode="c")
    info = {
        "dataset": data_cfg.dataset,
        "count": int(images.shape[0]),
        "size": int(images.shape[-1]),
        "cache": str(result.path),
        "layout": result.layout.kind,
        "settings": result.index["settings"],
        "counts": result.counts,
        "attribute_names": result.index.get("attribute_names", []),
    }
    return images, info


def describe_data(info: dict[str, Any], split: str) -> str:
    """One line for the plan: kind, split, size, count (from `load_training_images`' description)."""
    size, count = info.get("size"), info.get("count", 0)
    if info.get("dataset") == "synthetic":
        return f"generated faces, {size}x{size} px, {count:,} images"
    split = (info.get("settings") or {}).get("split", split)
    layout = f" ({info['layout']} layout)" if info.get("layout") else ""
    return f"{info.get('dataset')}{layout} split {split}, {size}x{size} px, {count:,} images"


def training_attributes(data_cfg: DataConfig, info: dict[str, Any]) -> tuple[np.ndarray, list[str]]:
    """The attributes of the images `load_training_images` returned (same order), for
    train.condition=attributes: ((N, K) int8 in {-1, 0, +1}, 0 = no row; the K names).

    synthetic: the generated faces' recorded attributes; celeba / folder: the cache's
    attributes.npy. Raises DdpmkitError when the data have none."""
    if info.get("dataset") == "synthetic":
        return face_attributes(int(info["count"]), data_cfg.synthetic_seed), list(FACE_ATTRIBUTES)
    names = list(info.get("attribute_names") or [])
    path = Path(info["cache"]) / cache.ATTRIBUTES
    if not names or not path.is_file():
        raise DdpmkitError(f"train.condition=attributes: the prepared data {info['cache']} have no attributes "
                           "(no list_attr_celeba.txt was found by prepare); train with --condition none")
    attrs = np.load(path, allow_pickle=False)
    if attrs.shape != (int(info["count"]), len(names)):
        raise DdpmkitError(f"{path}: shape {attrs.shape} does not match {info['count']} images x {len(names)} names")
    return attrs, names
