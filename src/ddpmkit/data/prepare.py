"""`prepare`: decode, crop and resize a dataset once into a memory-mappable uint8 cache.

Flow: detect the layout -> list images -> pick the split -> cache key from (size, crop, split),
the data identity (dataset kind, resolved root) and the source fingerprint -> reuse a complete
cache with that key, or build one in a temporary folder with a process pool over chunks of images
and rename it into place. index.json records the identity under "data", so FID can pick the cache
made from the training data (fid/sources.py).

Files that are not images (corrupt, truncated, empty, dangling or looping symbolic links,
folders named x.jpg, FIFOs) are skipped and listed with the reason in the cache's report.txt.
A temporary names its builder; at start, prepare deletes the temporaries of builders that are
gone (killed) and says so in one line (`data.leftovers`).

Torch is never imported here: the workers need only PIL and numpy.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import multiprocessing as mp
import os
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional

import numpy as np
from numpy.lib.format import open_memmap
from rich.console import Console

from ddpmkit.data import cache as C
from ddpmkit.data.celeba import (
    SPLIT_CODES,
    AttributeTable,
    Layout,
    base_name,
    detect_layout,
    file_problem,
    list_images,
    read_attributes,
    read_partition,
    source_fingerprint,
)
from ddpmkit.data.crops import load_square
from ddpmkit.data.leftovers import OWNER, mark_owner, remove_leftovers
from ddpmkit.data.prepare_records import make_counts, save_attributes, source_record, write_report
from ddpmkit.errors import DdpmkitError
from ddpmkit.io_utils import atomic_path, write_text_atomic
from ddpmkit.progress import Progress

if TYPE_CHECKING:
    from ddpmkit.settings import DataConfig

CHUNK = 64  # images per task: ~30 ms of work, small enough for a smooth progress bar


@dataclass
class PrepareResult:
    """What `prepare_dataset` found or built. `index` is the cache's index.json."""

    path: Path
    layout: Layout
    reused: bool
    index: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def counts(self) -> dict[str, Any]:
        return self.index["counts"]


# ---------------------------------------------------------------- worker side


_ZIPS: dict[str, zipfile.ZipFile] = {}  # one open archive per worker process


def _open_source(kind: str, images: str, name: str):
    if kind == "official-zip":
        zf = _ZIPS.get(images)
        if zf is None:
            zf = _ZIPS[images] = zipfile.ZipFile(images)
        return io.BytesIO(zf.read(name))  # PIL needs a seekable file
    path = os.path.join(images, name)
    problem = file_problem(path)  # before opening: a FIFO would block forever
    if problem:
        raise _NotAnImage(problem)
    return path


class _NotAnImage(Exception):
    """A directory entry that cannot be an image; the message is the reason for the report."""


def _process_chunk(task: tuple[str, str, list[str], str, int]) -> tuple[np.ndarray, list[bool], list[tuple[str, str]]]:
    """Decode one chunk. Returns (k, 3, S, S) uint8 of the readable images, an ok flag per
    name, and (name, reason) for each skipped one. Never raises for a bad image."""
    kind, images, names, crop, size = task
    out = np.empty((len(names), 3, size, size), dtype=np.uint8)
    ok: list[bool] = []
    skipped: list[tuple[str, str]] = []
    k = 0
    for name in names:
        try:
            out[k] = load_square(_open_source(kind, images, name), crop, size)
        except Exception as e:  # corrupt, truncated, empty, not an image, unreadable
            ok.append(False)
            reason = str(e) if isinstance(e, _NotAnImage) else f"{type(e).__name__}: {e}"
            reason = reason.replace("\n", " ").replace("\t", " ")
            skipped.append((name, reason[:200]))
            continue
        ok.append(True)
        k += 1
    return out[:k], ok, skipped


# ---------------------------------------------------------------- main side


def _chunks(names: list[str], n: int) -> Iterator[list[str]]:
    for i in range(0, len(names), n):
        yield names[i : i + n]


def _make_pool(workers: int):
    """A process pool; fork where the platform has it (Linux), the platform default elsewhere.

    Fork, because spawn/forkserver re-import the parent's __main__ (breaks scripts fed on stdin
    and notebooks) and cost an interpreter start per worker. The workers only run PIL and numpy,
    never torch, so inheriting the parent's torch state is harmless. The pool is made before the
    progress bar starts its refresh thread, so no thread is running at fork time.
    """
    methods = mp.get_all_start_methods()
    ctx = mp.get_context("fork" if "fork" in methods and os.name == "posix" else None)
    return ctx.Pool(workers)


def resolve_workers(workers: int) -> int:
    """0 = all cores (the ones this process may use)."""
    if workers > 0:
        return workers
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def find_layout(cfg: "DataConfig") -> Layout:
    """The layout under `cfg.root`: a plain folder for dataset "folder", else auto-detected."""
    return detect_layout(cfg.root, "folder" if cfg.dataset == "folder" else "celeba")


def data_identity(layout: Layout) -> dict[str, str]:
    """Which data a cache holds, beyond its pixel settings: the dataset kind found ("folder" for a
    plain image folder, else "celeba") and the resolved root. Written to index.json as "data"."""
    return {"dataset": "folder" if layout.kind == "folder" else "celeba", "root": str(layout.root.resolve())}


def expected_identity(cfg: "DataConfig") -> dict[str, str]:
    """The `data_identity` of the cache `prepare_dataset(cfg)` makes or reuses.

    Without the raw data (moved away after prepare) the kind is the one `cfg.dataset` names.
    """
    try:
        return data_identity(find_layout(cfg))
    except DdpmkitError:
        kind = "folder" if cfg.dataset == "folder" else "celeba"
        return {"dataset": kind, "root": str(Path(cfg.root).expanduser().resolve())}


def _select(layout: Layout, names: list[str], split: str) -> tuple[list[str], list[int], str, list[str]]:
    """Filter by split. Returns (names, split codes, effective split, notes)."""
    notes: list[str] = []
    if layout.kind == "folder":
        if split != "all":
            notes.append(f"a plain folder has no partition: using all images (split '{split}' ignored)")
        return names, [-1] * len(names), "all", notes
    if layout.partition is None:
        if split != "all":
            raise DdpmkitError(
                f"split '{split}' needs list_eval_partition.txt (or .csv) in {layout.root}, which is missing; "
                f"add it or use --split all"
            )
        notes.append("no partition file: split codes unknown")
        return names, [-1] * len(names), "all", notes
    partition = read_partition(layout.partition)
    codes = [partition.get(base_name(n), -1) for n in names]
    outside = sum(c < 0 for c in codes)
    if outside:
        notes.append(f"{outside} images are not in {layout.partition.name} (kept only for split 'all')")
    if split == "all":
        return names, codes, split, notes
    want = SPLIT_CODES[split]
    keep = [i for i, c in enumerate(codes) if c == want]
    return [names[i] for i in keep], [want] * len(keep), split, notes


def prepare_dataset(
    cfg: "DataConfig",
    *,
    force: bool = False,
    console: Optional[Console] = None,
    show_progress: bool = True,
) -> PrepareResult:
    """Find or build the cache for `cfg` (root, dataset, size, crop, split, cache_dir, workers).

    `cfg.dataset == "folder"` treats the root as a plain folder; anything else auto-detects.
    Raises DdpmkitError (one line) for a missing root, a missing partition file or no images.
    """
    console = console or Console(stderr=True, highlight=False)
    t0 = time.perf_counter()
    remove_leftovers(Path(cfg.cache_dir), console)
    layout = find_layout(cfg)
    console.print(f"found {layout.describe()}")
    all_names = list_images(layout)
    names, codes, split, notes = _select(layout, all_names, cfg.split)
    if not names:
        raise DdpmkitError(f"no images of split '{split}' in {layout.images}")
    settings = {"size": cfg.size, "crop": cfg.crop, "split": split}
    data = data_identity(layout)
    # the identity is in the key, so a cache made before it was recorded is rebuilt, not reused
    key = C.cache_key({**settings, "data": data}, source_fingerprint(layout, names))
    final = Path(cfg.cache_dir) / C.cache_name(data["dataset"], layout.kind, settings, key)
    if not force and C.is_complete(final, key):
        return PrepareResult(final, layout, True, C.read_index(final), notes, time.perf_counter() - t0)
    attrs = read_attributes(layout.attributes) if layout.attributes else None
    workers = resolve_workers(cfg.workers)
    with atomic_path(final) as tmp:
        tmp.mkdir()
        mark_owner(tmp)
        index = _build(tmp, layout, names, codes, attrs, settings, key, workers, console, show_progress)
        index["notes"] = notes
        index["data"] = data
        write_text_atomic(tmp / C.INDEX, json.dumps(index))
        (tmp / OWNER).unlink()
        (tmp / C.MARKER).write_text(key + "\n")  # last: its presence means "complete"
    return PrepareResult(final, layout, False, index, notes, time.perf_counter() - t0)


@dataclass
class _Decoded:
    """What `_decode_all` wrote: `ok` images, from the positions `kept` of the name list, in order."""

    ok: int
    kept: list[int]
    skipped: list[tuple[str, str]]  # (name, reason)
    seconds: float
    workers: int


def _build(
    tmp: Path,
    layout: Layout,
    names: list[str],
    codes: list[int],
    attrs: Optional[AttributeTable],
    settings: dict[str, Any],
    key: str,
    workers: int,
    console: Console,
    show_progress: bool,
) -> dict[str, Any]:
    """Fill the temporary cache folder `tmp` (images, attributes, report); returns its index."""
    decoded = _decode_all(tmp, layout, names, settings, workers, console, show_progress)
    kept_names = [names[i] for i in decoded.kept]
    counts = make_counts(codes, decoded.kept, len(decoded.skipped), decoded.seconds, decoded.workers)
    attr_names = save_attributes(tmp, attrs, kept_names, counts) if attrs is not None else []
    write_report(tmp / C.REPORT, layout, counts, decoded.skipped)
    return {
        "format": C.FORMAT_VERSION,
        "key": key,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "settings": settings,
        "source": source_record(layout),
        "shape": [decoded.ok, 3, settings["size"], settings["size"]],
        "dtype": "uint8",
        "counts": counts,
        "attribute_names": attr_names,
        "files": kept_names,
        "split": [codes[i] for i in decoded.kept],
    }


def _decode_all(
    tmp: Path,
    layout: Layout,
    names: list[str],
    settings: dict[str, Any],
    workers: int,
    console: Console,
    show_progress: bool,
) -> _Decoded:
    """Decode, crop and resize `names` into tmp/images.npy, (ok, 3, S, S) uint8, with a process
    pool and a progress bar. Raises DdpmkitError when not one image could be read."""
    size, n = settings["size"], len(names)
    images = open_memmap(tmp / C.IMAGES, mode="w+", dtype=np.uint8, shape=(n, 3, size, size))
    tasks = [(layout.kind, str(layout.images), chunk, settings["crop"], size) for chunk in _chunks(names, CHUNK)]
    out = _Decoded(0, [], [], 0.0, min(workers, len(tasks)))
    start = time.perf_counter()
    pool = _make_pool(out.workers) if out.workers > 1 else None
    try:
        # imap keeps task order, so the cache order is the sorted file order for any worker count
        results = pool.imap(_process_chunk, tasks) if pool else map(_process_chunk, tasks)
        label = f"prepare {size}px {settings['crop']} ({out.workers} proc)"
        # a bar in a terminal, plain lines when piped (the pool exists before the bar's thread starts)
        with Progress(label, total=n, unit="images", mode="auto" if show_progress else "off",
                      console=console, show_rate=True) as bar:
            for ci, (arr, ok, bad) in enumerate(results):
                images[out.ok : out.ok + len(arr)] = arr
                out.ok += len(arr)
                out.kept.extend(ci * CHUNK + j for j, flag in enumerate(ok) if flag)
                out.skipped.extend(bad)
                bar.advance(len(ok))
        if pool:
            pool.close()
    finally:
        if pool:
            pool.terminate()  # on error or Ctrl-C: no orphan workers
            pool.join()
    out.seconds = time.perf_counter() - start
    images.flush()
    del images
    if out.ok == 0:
        first = f" (first: {out.skipped[0][0]}: {out.skipped[0][1]})" if out.skipped else ""
        raise DdpmkitError(f"none of the {n} images in {layout.images} could be read{first}")
    if out.ok < n:
        C.shrink_npy(tmp / C.IMAGES, out.ok)
    return out


__all__ = [
    "CHUNK", "PrepareResult", "data_identity", "expected_identity", "find_layout", "prepare_dataset",
    "resolve_workers", "OWNER", "remove_leftovers",  # the last two are data.leftovers'
]
