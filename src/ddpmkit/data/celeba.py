"""Finding CelebA (or a plain image folder) on disk and reading its partition and attribute files.

Three layouts are recognised from a root folder, in this order:

- ``kaggle``: ``img_align_celeba/img_align_celeba/*.jpg``, ``list_eval_partition.csv``,
  ``list_attr_celeba.csv`` (comma separated, header ``image_id,...``).
- ``official`` / ``official-zip``: ``img_align_celeba/`` or ``img_align_celeba.zip`` with
  ``list_eval_partition.txt`` and ``list_attr_celeba*.txt`` (a count line, the 40 names, then
  ``file v1 ... v40``). The Google Drive folders ``Img/``, ``Eval/`` and ``Anno/`` are searched too.
- ``folder``: any image files below the root (recursive); no split, no attributes.

Images are matched to partition and attribute rows by base name (``000001.jpg``).

Odd entries: every name with an image extension is a candidate, whatever it is on disk. One
that cannot be an image (a dangling symbolic link, a symbolic-link loop, a folder named
``x.jpg`` in a non-recursive layout, a FIFO) is skipped by `prepare` like a corrupt image and
listed in its report.txt with the reason from `file_problem`; a plain folder dataset descends
into every folder, whatever its name. File names need not be UTF-8: they are handled as the
bytes the file system gives (``surrogateescape``). Metadata files must be UTF-8 (a leading
byte-order mark is fine); other bytes, or two lines giving one image different splits, are
an error naming the line.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import os
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import numpy as np

from ddpmkit.errors import DdpmkitError
from ddpmkit.io_utils import read_text_lines

LayoutKind = Literal["official", "official-zip", "kaggle", "folder"]
IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"})
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
SPLIT_NAMES = {0: "train", 1: "val", 2: "test", -1: "none"}
N_ATTRIBUTES = 40

CELEBA_URL = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"
KAGGLE_ID = "jessicali9530/celeba-dataset"


@dataclass(frozen=True)
class Layout:
    """Where the images and the metadata files of a dataset are.

    `images` is a folder (official, kaggle, folder) or a zip file (official-zip).
    """

    kind: LayoutKind
    root: Path
    images: Path
    partition: Optional[Path] = None
    attributes: Optional[Path] = None

    def describe(self) -> str:
        what = {
            "official": "official CelebA layout (img_align_celeba/)",
            "official-zip": "official CelebA layout (img_align_celeba.zip)",
            "kaggle": f"Kaggle CelebA layout ({KAGGLE_ID})",
            "folder": "plain image folder (recursive; no split, no attributes)",
        }[self.kind]
        return f"{what} at {self.root}"


def missing_data_message(root: Path) -> str:
    """One line: where we looked and the two ways to get CelebA."""
    return (
        f"no CelebA images found at {root.resolve()} (looked for img_align_celeba/, img_align_celeba.zip, "
        f"img_align_celeba/img_align_celeba/ and image files below it); get CelebA from the official "
        f"Google Drive release linked on {CELEBA_URL} or from Kaggle "
        f"(kaggle datasets download -d {KAGGLE_ID}), unpack it there, or point --data-root / "
        f"DDPMKIT_DATA_ROOT / data.root at it"
    )


def _is_image_name(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    # "._x.jpg" are macOS resource forks that zips made on a Mac carry: not images
    return not base.startswith(".") and os.path.splitext(base)[1].lower() in IMAGE_EXTS


def _has_image_files(folder: Path, recursive: bool) -> bool:
    if recursive:
        for _, _, files in os.walk(folder):
            if any(_is_image_name(f) for f in files):
                return True
        return False
    with os.scandir(folder) as it:
        return any(_is_image_name(e.name) and _is_file(e) for e in it)


def _is_file(entry: os.DirEntry) -> bool:
    try:
        return entry.is_file()
    except OSError:  # a symbolic-link loop raises instead of answering False
        return False


def file_problem(path: str | Path) -> Optional[str]:
    """Why `path` cannot be an image file, in words, or None when it is a regular file.

    Dangling or looping symbolic links, folders, FIFOs, sockets and devices are named here
    (and never opened: reading a FIFO would block forever).
    """
    try:
        st = os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "symbolic link loop"
        if os.path.islink(path):
            try:
                target = os.readlink(path)
            except OSError:
                target = "?"
            return f"dangling symbolic link (its target {target} does not exist)"
        return e.strerror or str(e)
    if stat.S_ISDIR(st.st_mode):
        return "a folder named like an image, not an image file"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file (a FIFO, socket or device)"
    return None


def _first(candidates: list[Path]) -> Optional[Path]:
    return next((p for p in candidates if p.is_file()), None)


def _official_attr_file(dirs: list[Path]) -> Optional[Path]:
    exact = _first([d / "list_attr_celeba.txt" for d in dirs])
    if exact:
        return exact
    # also accept renamed or truncated copies such as list_attr_celeba_000001-020000.txt
    for d in dirs:
        found = sorted(d.glob("list_attr_celeba*.txt")) if d.is_dir() else []
        if found:
            return found[0]
    return None


def detect_layout(root: Path | str, dataset: str = "celeba") -> Layout:
    """Find the layout under `root`. `dataset="folder"` skips the CelebA layouts.

    Raises DdpmkitError (one line, with download hints) when no images are there.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise DdpmkitError(missing_data_message(root))
    if not root.is_dir():
        raise DdpmkitError(f"data root {root} is a file, not a folder")
    if dataset != "folder":
        nested = root / "img_align_celeba" / "img_align_celeba"
        if nested.is_dir() and _has_image_files(nested, recursive=False):
            return Layout(
                "kaggle", root, nested,
                partition=_first([root / "list_eval_partition.csv", root / "list_eval_partition.txt"]),
                attributes=_first([root / "list_attr_celeba.csv"]) or _official_attr_file([root]),
            )
        dirs = [root, root / "Img", root / "Eval", root / "Anno"]
        partition = _first([d / "list_eval_partition.txt" for d in dirs])
        attributes = _official_attr_file(dirs)
        for d in dirs[:2]:
            folder = d / "img_align_celeba"
            if folder.is_dir() and _has_image_files(folder, recursive=False):
                return Layout("official", root, folder, partition, attributes)
        archive = _first([d / "img_align_celeba.zip" for d in dirs[:2]])
        if archive is not None:
            return Layout("official-zip", root, archive, partition, attributes)
    if _has_image_files(root, recursive=True):
        return Layout("folder", root, root)
    raise DdpmkitError(missing_data_message(root))


def list_images(layout: Layout) -> list[str]:
    """Image names, sorted: paths relative to the image folder, or zip member names."""
    if layout.kind == "official-zip":
        try:
            with zipfile.ZipFile(layout.images) as zf:
                names = [n for n in zf.namelist() if not n.endswith("/") and "__MACOSX" not in n]
        except (zipfile.BadZipFile, OSError) as e:
            raise DdpmkitError(f"cannot read zip file {layout.images}: {e}") from e
        return sorted(n for n in names if _is_image_name(n))
    if layout.kind == "folder":
        out = []
        for dirpath, dirnames, files in os.walk(layout.images):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]  # skip .cache-like dirs
            rel = os.path.relpath(dirpath, layout.images)
            for f in files:
                if _is_image_name(f):
                    out.append(f if rel == "." else f"{Path(rel).as_posix()}/{f}")
        return sorted(out)
    with os.scandir(layout.images) as it:
        # odd entries too (dangling links, folders named x.jpg): prepare reports them, see above
        return sorted(e.name for e in it if _is_image_name(e.name))


def base_name(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def read_partition(path: Path) -> dict[str, int]:
    """`file -> 0 (train) / 1 (val) / 2 (test)` from list_eval_partition.txt or .csv.

    A repeated line is fine; two lines giving one file different splits are an error.
    """
    out: dict[str, int] = {}
    first: dict[str, int] = {}  # file -> the line that gave its split
    lines = read_text_lines(path, "partition file")
    if path.suffix.lower() == ".csv":
        rows = csv.reader(lines)
        next(rows, None)  # header: image_id,partition
        items = ((i + 2, r) for i, r in enumerate(rows))
    else:
        items = ((i + 1, ln.split()) for i, ln in enumerate(lines))
    for lineno, parts in items:
        if not parts:
            continue
        try:
            name, code = parts[0].strip(), int(parts[1])
        except (IndexError, ValueError):
            raise DdpmkitError(f"partition file {path} line {lineno} is not 'file split': {parts!r}") from None
        if code not in SPLIT_NAMES or code < 0:
            raise DdpmkitError(f"partition file {path} line {lineno}: split {code} is not 0, 1 or 2")
        if out.setdefault(name, code) != code:
            raise DdpmkitError(
                f"partition file {path} line {lineno} puts {name} in split {code}, but line "
                f"{first[name]} put it in split {out[name]}; keep one line per image"
            )
        first.setdefault(name, lineno)
    return out


@dataclass
class AttributeTable:
    """The 40 CelebA attributes. Rows are parsed lazily: the full file has 202,599 lines.

    `declared` is the count on the first line of the .txt file (None for .csv).
    """

    path: Path
    names: list[str]
    declared: Optional[int]
    _raw: dict[str, list[str]] = field(repr=False, default_factory=dict)

    @property
    def rows(self) -> int:
        return len(self._raw)

    def get(self, name: str) -> Optional[np.ndarray]:
        """(40,) int8 with values +1/-1, or None when the file has no (complete) row for `name`."""
        raw = self._raw.get(name)
        if raw is None or len(raw) != len(self.names):
            return None  # a truncated last line counts as missing, not as an error
        try:
            v = np.array([int(x) for x in raw], dtype=np.int8)
        except ValueError:
            return None
        return np.where(v > 0, 1, -1).astype(np.int8)  # some copies write 0 for "no"


def read_attributes(path: Path) -> AttributeTable:
    lines = read_text_lines(path, "attribute file")
    while lines and not lines[-1].strip():
        lines.pop()  # the file's final newline
    if path.suffix.lower() == ".csv":
        if not lines:
            raise DdpmkitError(f"attribute file {path} is empty")
        header = lines[0].split(",")
        names, declared = [h.strip() for h in header[1:]], None
        sep: Optional[str] = ","
        body = lines[1:]
    else:
        if len(lines) < 2:
            raise DdpmkitError(f"attribute file {path} has no header (count line, then 40 names)")
        try:
            declared = int(lines[0].strip())
        except ValueError:
            raise DdpmkitError(f"attribute file {path} line 1 should be the image count, got {lines[0][:40]!r}") from None
        names, sep, body = lines[1].split(), None, lines[2:]
    if len(names) != N_ATTRIBUTES:
        raise DdpmkitError(f"attribute file {path} names {len(names)} attributes, expected {N_ATTRIBUTES}")
    raw: dict[str, list[str]] = {}
    for ln in body:
        parts = ln.split(sep) if sep else ln.split()
        if parts and parts[0].strip():
            raw[parts[0].strip()] = [p.strip() for p in parts[1:]]
    return AttributeTable(path, names, declared, raw)


def _stat_key(path: Path) -> list:
    st = path.stat()
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]


def source_fingerprint(layout: Layout, names: list[str]) -> str:
    """sha256 over the layout, the metadata files and every image's (name, size, mtime).

    Any added, removed, replaced or touched image gives a new fingerprint, hence a new cache.
    """
    h = hashlib.sha256()

    def add(text: str) -> None:  # file names need not be UTF-8: keep their bytes
        h.update(text.encode("utf-8", "surrogateescape"))

    add(layout.kind)
    for p in (layout.partition, layout.attributes):
        add(repr(_stat_key(p) if p else None))
    if layout.kind == "official-zip":
        add(repr(_stat_key(layout.images)))
        add("\n".join(names))
    else:
        add(str(layout.images.resolve()))
        for n in names:
            try:
                st = os.stat(layout.images / n)
                add(f"{n}\0{st.st_size}\0{st.st_mtime_ns}\n")
            except OSError:
                add(f"{n}\0missing\n")
    return h.hexdigest()
