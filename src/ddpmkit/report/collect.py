"""Read what a run directory holds into plain data for the report; never writes anything.

Every reader tolerates a run in progress: a missing file gives an empty value, a log line cut by a
crash or a damaged image is skipped (and noted), so a report can be built at any checkpoint.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml
from PIL import Image, UnidentifiedImageError

from ddpmkit.errors import DdpmkitError
from ddpmkit.runfolder import RunFolder, step_of_name

# where a denoising GIF and the data preview may be written (newest GIF wins)
GIF_GLOBS = ("*.gif", "samples/*.gif")
PREVIEW_NAMES = ("data_preview.png", "samples/data_preview.png", "preview.png")
MIME = {"PNG": "image/png", "GIF": "image/gif", "JPEG": "image/jpeg"}


@dataclass
class Picture:
    """An image file to embed: its bytes, MIME type and pixel size."""

    path: Path
    data: bytes
    mime: str
    size: tuple[int, int]
    step: Optional[int] = None


@dataclass
class Checkpoint:
    step: int
    name: str
    bytes_on_disk: int
    files: list[str]
    latest: bool


@dataclass
class RunData:
    """Everything the report shows, read from one run directory."""

    path: Path
    config: dict[str, Any]
    info: dict[str, Any]
    train_log: list[dict[str, Any]]
    fid_log: list[dict[str, Any]]
    grids: list[Picture]
    gif: Optional[Picture]
    preview: Optional[Picture]
    checkpoints: list[Checkpoint]
    problems: list[str] = field(default_factory=list)


def read_run(path: Path) -> RunData:
    """Collect a run directory's settings, logs, images and checkpoints."""
    run = RunFolder(path)
    if not run.path.exists():
        raise DdpmkitError(f"run directory not found: {path}")
    if not run.is_run():
        raise DdpmkitError(f"{path} is not a ddpmkit run directory (no {run.config.name} or {run.checkpoints.name}/)")
    problems: list[str] = []
    records = run.read_log(problems)
    diverged = sum(1 for r in records if "loss" in r and not is_number(r["loss"]))
    if diverged:
        problems.append(f"{run.log.name}: {diverged} step(s) logged a non-finite loss (training diverged?)")
    return RunData(
        path=run.path,
        config=_read_mapping(run.config, yaml.safe_load, problems),
        info=_read_mapping(run.info, json.loads, problems),
        train_log=[r for r in records if is_number(r.get("step")) and is_number(r.get("loss"))],
        fid_log=[r for r in records if is_number(r.get("step")) and is_number(r.get("fid"))],
        grids=_read_grids(run.samples, problems),
        gif=_newest_picture(run.path, GIF_GLOBS, problems),
        preview=_first_picture(run.path, PREVIEW_NAMES, problems),
        checkpoints=read_checkpoints(run, problems),
        problems=problems,
    )


def is_number(v: Any) -> bool:
    """A finite int or float (not a bool): what a value in the run log must be to be plotted."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _read_mapping(path: Path, parse: Any, problems: list[str]) -> dict[str, Any]:
    if not path.is_file():
        problems.append(f"{path.name} is missing")
        return {}
    try:
        data = parse(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError) as e:
        problems.append(f"{path.name} is unreadable ({str(e).splitlines()[0]})")
        return {}
    if not isinstance(data, dict):
        problems.append(f"{path.name} does not hold a mapping")
        return {}
    return data


def read_picture(path: Path, problems: list[str], step: Optional[int] = None) -> Optional[Picture]:
    """The file's bytes if PIL recognises it as a PNG, GIF or JPEG image, else None (noted)."""
    try:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as im:
            fmt, size = im.format, im.size
            im.verify()
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        problems.append(f"{path.name}: not a readable image ({str(e).splitlines()[0] if str(e) else type(e).__name__})")
        return None
    if fmt not in MIME:
        problems.append(f"{path.name}: {fmt} images are not embedded")
        return None
    return Picture(path, data, MIME[fmt], size, step)


def _read_grids(samples: Path, problems: list[str]) -> list[Picture]:
    grids = []
    for p in samples.glob("step_*.png") if samples.is_dir() else []:
        step = step_of_name(p.stem)
        if step is not None and (pic := read_picture(p, problems, step)) is not None:
            grids.append(pic)
    return sorted(grids, key=lambda g: g.step or 0)


def _newest_picture(root: Path, globs: tuple[str, ...], problems: list[str]) -> Optional[Picture]:
    found = [p for g in globs for p in root.glob(g) if p.is_file()]
    for p in sorted(found, key=lambda p: p.stat().st_mtime, reverse=True):
        if (pic := read_picture(p, problems)) is not None:
            return pic
    return None


def _first_picture(root: Path, names: tuple[str, ...], problems: list[str]) -> Optional[Picture]:
    for name in names:
        if (root / name).is_file() and (pic := read_picture(root / name, problems)) is not None:
            return pic
    return None


def read_checkpoints(run: RunFolder, problems: list[str]) -> list[Checkpoint]:
    """The run's checkpoints (`runfolder.is_checkpoint`), oldest first, with their size on disk."""
    try:
        latest = run.latest_checkpoint()
    except DdpmkitError as e:  # a damaged `latest` pointer: list the folders all the same
        problems.append(str(e))
        latest = None
    out = []
    for d in run.checkpoint_folders():
        files = sorted(f for f in d.rglob("*") if f.is_file())
        out.append(Checkpoint(step_of_name(d.name) or 0, d.name, sum(_size(f) for f in files),
                              [f.name for f in files], d == latest))
    return out


def _size(f: Path) -> int:
    try:
        return f.stat().st_size
    except OSError:  # pruned while we looked
        return 0
